"""Model files: one clear line for a missing, empty, truncated or foreign file, before torch
(or a framework) reads it and fails deep inside with an unrelated message."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional


def error_summary(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, at most ``limit`` characters (torch's
    loaders put paragraphs into their messages; one line is what the user sees)."""
    return next((line for line in str(err).splitlines() if line.strip()), "")[:limit]


def missing_file(err: BaseException) -> Optional[str]:
    """The path of the first ``FileNotFoundError`` in ``err``'s chain of causes (``err`` itself
    included), or ``None``: loaders that instantiate a saved configuration (Hydra) wrap the
    error and drop its path from their own message."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, FileNotFoundError) and err.filename is not None:
            return str(err.filename)
        err = err.__cause__ or err.__context__
    return None


def check_model_archive(path, what: str) -> Path:
    """Raise FileNotFoundError / ValueError naming ``path`` unless it is an existing zip archive
    (``torch.save`` files, TorchScript, nequip-package and AOTInductor files all are).

    Args:
        path: the model file.
        what: what the file should be, for the message (e.g. ``"a MACE model file"``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not {what}: the file is empty")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not {what}: not a torch/zip archive (truncated, or another kind of file)"
        )
    return path
