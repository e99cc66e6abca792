"""Import e3nn's ``o3`` and ``io`` under every supported e3nn version.

e3nn 0.4.4 (the version MACE pins) loads its constants with a bare ``torch.load``, which torch >= 2.6
refuses under the ``weights_only`` default because the file pickles ``slice`` objects. MACE works
around that by setting ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process; we only allow
``slice`` for the duration of e3nn's own import.
"""

import torch

_safe_globals = getattr(torch.serialization, "safe_globals", None)
if _safe_globals is not None:
    with _safe_globals([slice]):
        from e3nn import io, o3  # noqa: F401
else:  # pragma: no cover - torch < 2.5
    from e3nn import io, o3  # noqa: F401

__all__ = ["io", "o3"]
