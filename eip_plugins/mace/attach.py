"""``eip-attach mace``: give an already trained MACE model an evidential head.

The backbone is frozen: its node features and forces are computed once with MACE's own data
pipeline (``config_from_atoms`` -> ``AtomicData`` -> batches), cached (streamed to disk past a
memory budget), and only the head is trained on them with the SPEC force loss (the energy term is
dropped: the backbone's energy is fixed), early-stopped on the validation predictive NLL. The
result is an :class:`~eip_plugins.mace.model.EvidentialMACE` whose backbone is the input model
object itself, so its energies and forces are bit-identical; every tool of this package accepts
it (``MACEUQCalculator``, ``mace_eval_configs``, TorchScript compilation).

Works for models trained with plain ``mace_run_train``, multi-head / foundation-style models
given as a local file (pick the head with ``mace_head``), and models whose last layer carries
scalars only (MACE's default): the head reads the vector (1o) features of the earlier layers in
MACE's concatenated ``node_feats`` (see :mod:`eip_plugins.mace.model`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import ase.data
import ase.io
import numpy as np
import torch
from torch import nn

from ..attach import FeatureCache, FeatureChunk, fit_head, initial_psi0
from ..attach.head_training import evaluate_head
from ..core.config import HeadConfig

log = logging.getLogger(__name__)


class AttachError(ValueError):
    """Bad input to ``eip-attach`` (the message names the file, key or element)."""


def load_backbone(path, replace: bool = False) -> nn.Module:
    """Load an eager MACE model file; refuse non-MACE files and models that already have a head.

    With ``replace``, a model that already has an evidential head gives back its backbone.
    """
    path = Path(path)
    if not path.is_file():
        raise AttachError(f"model file {path} does not exist")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a MACE model"
        raise AttachError(
            f"{path} is not a MACE model file (torch.load failed: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Give the eager '*.model' file "
            "written by mace_run_train, not the '*_compiled.model' or a checkpoint."
        ) from err
    if isinstance(model, torch.jit.ScriptModule):
        raise AttachError(
            f"{path} is a TorchScript-compiled model; give the eager '*.model' file instead"
        )
    if hasattr(model, "head") and hasattr(model, "eip_head_kind"):
        if not replace:
            raise AttachError(
                f"{path} already has an evidential '{model.eip_head_kind}' head; pass --replace "
                "to train a new head on its backbone"
            )
        model = model.model
    if not isinstance(model, nn.Module) or not all(
        hasattr(model, a) for a in ("products", "atomic_numbers", "r_max")
    ):
        raise AttachError(f"{path} does not contain a MACE model (got {type(model).__name__})")
    return model


def read_labelled(path, forces_key: str, known_numbers: set[int]) -> list:
    """Read extxyz frames; every frame must have forces and only elements the model knows."""
    path = Path(path)
    if not path.is_file():
        raise AttachError(f"data file {path} does not exist")
    frames = ase.io.read(path, ":")
    if not frames:
        raise AttachError(f"data file {path} holds no structures")
    for i, atoms in enumerate(frames):
        if forces_key not in atoms.arrays:
            raise AttachError(
                f"{path}: structure {i} has no forces under arrays[{forces_key!r}] "
                "(set --forces_key)"
            )
        unknown = sorted(set(atoms.numbers.tolist()) - known_numbers)
        if unknown:
            names = [ase.data.chemical_symbols[z] for z in unknown]
            raise AttachError(
                f"{path}: structure {i} contains element(s) {names} the model does not know "
                f"(it knows {[ase.data.chemical_symbols[z] for z in sorted(known_numbers)]})"
            )
    return frames


def _batches(model: nn.Module, frames, forces_key: str, mace_head: str | None, batch_size: int):
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools, utils

    heads = list(getattr(model, "heads", ["Default"]))
    head_name = mace_head or heads[0]
    if head_name not in heads:
        raise AttachError(f"unknown --mace_head={head_name!r}: the model has heads {heads}")
    dtype = next(model.parameters()).dtype
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={"forces": forces_key})
    with torch_tools.default_dtype(dtype):
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, key_specification=keyspec, head_name=head_name),
                z_table=z_table,
                cutoff=float(model.r_max),
                heads=heads,
            )
            for a in frames
        ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
    yield from loader


def extract_features(
    model: nn.Module,
    frames,
    forces_key: str = "REF_forces",
    mace_head: str | None = None,
    batch_size: int = 16,
    max_atoms_in_memory: int = 2_000_000,
) -> FeatureCache:
    """Run the frozen backbone once over ``frames``: node features, forces, reference forces."""
    cache = FeatureCache(max_atoms_in_memory=max_atoms_in_memory)
    model.eval()
    for batch in _batches(model, frames, forces_key, mace_head, batch_size):
        out = model(batch.to_dict(), training=False, compute_force=True)
        g = int(batch.ptr.numel() - 1)
        cache.append(
            FeatureChunk(
                out["node_feats"].detach(),
                out["forces"].detach(),
                batch.forces.detach().to(out["forces"].dtype),
                batch.batch.detach(),
                g,
            )
        )
    return cache


def attach_head(
    model_path,
    train_file,
    output,
    head: str = "e2ip",
    valid_file=None,
    replace: bool = False,
    forces_key: str = "REF_forces",
    mace_head: str | None = None,
    head_options: dict | None = None,
    max_epochs: int = 200,
    patience: int = 20,
    lr: float = 5e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Attach, train and save. Returns a before/after report on the validation data.

    The input model file is only read. The output is written to a temporary file in the same
    folder and renamed into place, and may not be the input file.
    """
    from .model import EvidentialMACE

    if Path(output).resolve() == Path(model_path).resolve():
        raise AttachError("--output must differ from --model: the input model is never modified")
    config = HeadConfig(kind=head, **(head_options or {}))
    backbone = load_backbone(model_path, replace=replace)
    known = {int(z) for z in backbone.atomic_numbers}
    train_frames = read_labelled(train_file, forces_key, known)
    valid_frames = read_labelled(valid_file, forces_key, known) if valid_file else None
    for p in backbone.parameters():
        p.requires_grad_(False)

    torch.manual_seed(seed)
    train = extract_features(backbone, train_frames, forces_key, mace_head, batch_size)
    valid = (
        extract_features(backbone, valid_frames, forces_key, mace_head, batch_size)
        if valid_frames
        else None
    )
    model = EvidentialMACE(backbone, config)
    dtype = next(backbone.parameters()).dtype
    model.head.to(dtype)
    if hasattr(model.head, "covariance"):
        model.head.covariance.set_psi0(initial_psi0(train))
    fit = fit_head(model.head, train, valid, max_epochs, lr, patience, seed, progress)
    model.eval()
    report_cache = valid if valid is not None else train
    after = evaluate_head(model.head, report_cache)
    before_mae = float(
        (report_cache.concatenated().forces - report_cache.concatenated().forces_ref).abs().mean()
    )
    _atomic_save(model, Path(output))
    train.close()
    if valid is not None:
        valid.close()
    return {
        "head": head,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "evaluated_on": "valid" if valid is not None else "train",
        "before": {"force_mae": before_mae},
        "after": after,
        "output": str(output),
    }


def _atomic_save(model: nn.Module, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(model, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def known_elements(model: nn.Module) -> list[str]:
    return [ase.data.chemical_symbols[int(z)] for z in np.asarray(model.atomic_numbers)]
