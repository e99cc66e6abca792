"""A MACE backbone's per-atom features, forces and species as :class:`FeatureChunk` s.

Shared by ``eip-attach mace`` (head training), ``eip-calibrate mace`` and the calibration at the
end of ``mace_run_train --head`` (feature statistics and recalibration).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..attach import AttachError, FeatureCache, FeatureChunk
from .heads import select_mace_head
from .model import head_edges


def frames_to_batches(
    backbone: nn.Module, frames, forces_key: str, mace_head: str | None, batch_size: int
):
    """MACE batches of ASE ``frames`` (reference forces under ``arrays[forces_key]``), built with
    MACE's own pipeline in the backbone's dtype, for the MACE head ``mace_head``."""
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools, utils

    heads = list(getattr(backbone, "heads", ["Default"]))
    try:
        head_name = select_mace_head(heads, mace_head)
    except ValueError as err:
        raise AttachError(f"--mace_head: {err}") from None
    dtype = next(backbone.parameters()).dtype
    z_table = utils.AtomicNumberTable([int(z) for z in backbone.atomic_numbers])
    keyspec = mace_data.KeySpecification(info_keys={}, arrays_keys={"forces": forces_key})
    with torch_tools.default_dtype(dtype):
        graphs = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, key_specification=keyspec, head_name=head_name),
                z_table=z_table,
                cutoff=float(backbone.r_max),
                heads=heads,
            )
            for a in frames
        ]
    loader = torch_geometric.dataloader.DataLoader(graphs, batch_size=batch_size, shuffle=False)
    yield from loader


def feature_chunks(
    backbone: nn.Module,
    batches: Iterable,
    device=None,
    labelled_only: bool = False,
    with_edges: bool = False,
) -> Iterator[FeatureChunk]:
    """Run the frozen ``backbone`` on each MACE batch: node features (N, F), forces (N, 3),
    reference forces (N, 3), structure index, species (index in the z-table, from the one-hot
    ``node_attrs``), and with ``with_edges`` the neighbour list in the head's convention
    (:func:`~eip_plugins.mace.model.head_edges`), for heads that build geometric features.

    ``labelled_only`` keeps only atoms of structures with a non-zero forces weight (MACE's
    ``weight * forces_weight``), e.g. for recalibration. Gradients are enabled for the forces even
    when the caller runs under ``torch.no_grad``.
    """
    backbone.eval()
    for batch in batches:
        if device is not None:
            batch = batch.to(device)
        with torch.enable_grad():
            out = backbone(batch.to_dict(), training=False, compute_force=True)
        forces = out["forces"].detach()
        edge_index = edge_vectors = None
        if with_edges:
            edge_index, edge_vectors = head_edges(
                batch.positions.detach(), batch.edge_index, batch.shifts
            )
        chunk = FeatureChunk(
            out["node_feats"].detach(),
            forces,
            batch.forces.detach().to(forces.dtype),
            batch.batch.detach(),
            int(batch.ptr.numel() - 1),
            torch.argmax(batch.node_attrs, dim=-1).detach(),
            edge_index,
            edge_vectors,
        )
        if labelled_only:
            weight = (batch.weight * batch.forces_weight)[batch.batch]
            keep = weight > 0
            if not bool(keep.any()):
                continue
            if not bool(keep.all()):
                chunk = chunk.atoms(keep)
        yield chunk


def extract_features(
    backbone: nn.Module,
    frames,
    forces_key: str = "REF_forces",
    mace_head: str | None = None,
    batch_size: int = 16,
    max_atoms_in_memory: int = 2_000_000,
    with_edges: bool = False,
) -> FeatureCache:
    """:func:`feature_chunks` of ``frames``, cached (streamed to disk past the memory budget)."""
    cache = FeatureCache(max_atoms_in_memory=max_atoms_in_memory)
    batches = frames_to_batches(backbone, frames, forces_key, mace_head, batch_size)
    for chunk in feature_chunks(backbone, batches, with_edges=with_edges):
        cache.append(chunk)
    return cache
