"""The tapped node features, forces and atom types of a NequIP model with a head, as
:class:`FeatureChunk` s.

Shared by ``eip-attach nequip`` (head training), ``eip-calibrate nequip`` and the
:class:`~eip_plugins.nequip.calibration.UncertaintyCalibration` callback of ``nequip-train``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..attach import FeatureCache, FeatureChunk
from . import _fields


def frames_to_batches(graph_model: nn.Module, frames, forces_key: str, batch_size: int):
    """(batch, reference forces (N, 3)) of ASE ``frames`` through NequIP's own transforms: each
    element maps to the model type of the same name, then the model's neighbor list."""
    from nequip.data import AtomicDataDict, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    type_names = list(graph_model.type_names)
    mapper = ChemicalSpeciesToAtomTypeMapper(
        model_type_names=type_names,
        chemical_species_to_atom_type_map={t: t for t in type_names},
    )
    neighbors = NeighborListTransform(r_max=float(graph_model.metadata["r_max"]))
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        data = [neighbors(mapper(from_ase(atoms))) for atoms in chunk]
        reference = torch.cat([torch.as_tensor(a.arrays[forces_key]) for a in chunk])
        yield AtomicDataDict.batched_from_list(data), reference


def loader_batches(loader: Iterable, device=None):
    """(batch, reference forces) of a NequIP data loader (the data's ``forces`` field)."""
    from nequip.data import AtomicDataDict

    for batch in loader:
        if device is not None:
            batch = AtomicDataDict.to_(batch, device)
        yield batch, batch[AtomicDataDict.FORCE_KEY].detach().clone()


def feature_chunks(
    model: nn.Module, batches: Iterable, with_edges: bool = False
) -> Iterator[FeatureChunk]:
    """Run ``model`` (a NequIP model with a head, eval mode) on each (batch, reference) pair and
    yield the node features the head reads (a forward hook on the feature tap), the model's
    forces, the reference forces, the structure index, the atom types and, ``with_edges``, the
    neighbour list (``edge_index`` [centre, neighbour], ``edge_vectors``) for heads that build
    geometric features. Gradients are enabled for the forces even when the caller runs under
    ``torch.no_grad``."""
    from nequip.data import AtomicDataDict

    from .head_module import EdgeFeatureTap, NodeFeatureTap

    # the last tap writes the features the head reads (earlier ones, of `feature_layer: all`,
    # hold the first layers' part)
    taps = [m for m in model.modules() if isinstance(m, (NodeFeatureTap, EdgeFeatureTap))]
    if not taps:
        raise ValueError("the model has no evidential head (no feature tap)")
    captured = {}
    handle = taps[-1].register_forward_hook(
        lambda _m, _i, out: captured.update(f=out[_fields.HEAD_FEATURES].detach())
    )
    try:
        for batch, reference in batches:
            with torch.enable_grad():
                out = model(batch)
            forces = out[AtomicDataDict.FORCE_KEY].detach()
            feats = captured.pop("f")
            edge_index = edge_vectors = None
            if with_edges:
                edge_index = out[AtomicDataDict.EDGE_INDEX_KEY].detach()
                edge_vectors = out[AtomicDataDict.EDGE_VECTORS_KEY].detach()
            yield FeatureChunk(
                feats,
                forces.to(feats.dtype),
                reference.to(device=feats.device, dtype=feats.dtype),
                batch[AtomicDataDict.BATCH_KEY].detach(),
                AtomicDataDict.num_frames(batch),
                batch[AtomicDataDict.ATOM_TYPE_KEY].detach().reshape(-1),
                edge_index,
                edge_vectors,
            )
    finally:
        handle.remove()


def extract_features(
    model: nn.Module,
    frames,
    forces_key: str = "REF_forces",
    batch_size: int = 16,
    max_atoms_in_memory: int = 2_000_000,
    with_edges: bool = False,
) -> FeatureCache:
    """:func:`feature_chunks` of ``frames``, cached (streamed to disk past the memory budget)."""
    cache = FeatureCache(max_atoms_in_memory=max_atoms_in_memory)
    batches = frames_to_batches(model, frames, forces_key, batch_size)
    for chunk in feature_chunks(model, batches, with_edges):
        cache.append(chunk)
    return cache
