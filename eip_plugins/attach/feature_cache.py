"""Backbone node features and forces computed once, kept in memory or streamed from disk."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class FeatureChunk:
    """Per-atom backbone outputs of a group of whole structures.

    Shapes: node_feats (N, F); forces (N, 3) backbone forces, eV/A; forces_ref (N, 3) reference
    forces, eV/A; batch (N,) structure index local to the chunk; num_graphs G; species (N,)
    int64 species index of each atom (element of the z-table / model type; ``None``: all 0);
    edge_index (2, E) int64 [centre, neighbour] atom indices local to the chunk and
    edge_vectors (E, 3) r_neighbour - r_centre, A: the backbone's neighbour list, kept for heads
    that build geometric features (``None`` otherwise).
    """

    node_feats: Tensor
    forces: Tensor
    forces_ref: Tensor
    batch: Tensor
    num_graphs: int
    species: Tensor | None = None
    edge_index: Tensor | None = None
    edge_vectors: Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.node_feats.shape[0])

    def head_inputs(self) -> tuple:
        """The arguments of ``head(...)`` / ``head.forward_with_distance(...)``."""
        return self.node_feats, self.forces, self.species, self.edge_index, self.edge_vectors

    def atoms(self, keep: Tensor) -> FeatureChunk:
        """The chunk restricted to the atoms where ``keep`` (N,) bool is set, with the edges
        between kept atoms re-indexed (``batch`` keeps its structure numbering)."""
        edge_index, edge_vectors = self.edge_index, self.edge_vectors
        if edge_index is not None and edge_vectors is not None:
            new_index = torch.cumsum(keep.long(), 0) - 1
            kept = keep[edge_index[0]] & keep[edge_index[1]]
            edge_index, edge_vectors = new_index[edge_index[:, kept]], edge_vectors[kept]
        return FeatureChunk(
            self.node_feats[keep],
            self.forces[keep],
            self.forces_ref[keep],
            self.batch[keep],
            self.num_graphs,
            None if self.species is None else self.species[keep],
            edge_index,
            edge_vectors,
        )


class FeatureCache:
    """A sequence of :class:`FeatureChunk` that holds at most ``max_atoms_in_memory`` atoms in RAM.

    Chunks beyond that are written to ``directory`` (a temporary folder by default, removed by
    :meth:`close`) and read back one at a time while iterating, so a data set larger than memory
    streams through head training.
    """

    def __init__(self, max_atoms_in_memory: int = 2_000_000, directory=None):
        self.max_atoms_in_memory = int(max_atoms_in_memory)
        self._owns_dir = directory is None
        self._dir = Path(directory) if directory else None
        self._entries: list[FeatureChunk | Path] = []
        self._atoms_in_memory = 0
        self.num_atoms = 0
        self.num_graphs = 0

    def append(self, chunk: FeatureChunk) -> None:
        self.num_atoms += chunk.num_atoms
        self.num_graphs += chunk.num_graphs
        if self._atoms_in_memory + chunk.num_atoms <= self.max_atoms_in_memory:
            self._entries.append(chunk)
            self._atoms_in_memory += chunk.num_atoms
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="eip_feature_cache_"))
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"chunk_{len(self._entries):06d}.pt"
        torch.save(chunk.__dict__, path)
        self._entries.append(path)

    def __iter__(self) -> Iterator[FeatureChunk]:
        for entry in self._entries:
            if isinstance(entry, Path):
                yield FeatureChunk(**torch.load(entry, weights_only=True))
            else:
                yield entry

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def streamed(self) -> bool:
        return any(isinstance(e, Path) for e in self._entries)

    def close(self) -> None:
        if self._owns_dir and self._dir is not None and self._dir.exists():
            shutil.rmtree(self._dir)

    def concatenated(self) -> FeatureChunk:
        """All chunks as one (for evaluation); batch indices are made global."""
        parts, offset, atoms = [], 0, 0
        for c in self:
            parts.append((c, offset, atoms))
            offset += c.num_graphs
            atoms += c.num_atoms
        species = [c.species for c, _, _ in parts]
        with_edges = all(c.edge_index is not None for c, _, _ in parts)
        return FeatureChunk(
            torch.cat([c.node_feats for c, _, _ in parts]),
            torch.cat([c.forces for c, _, _ in parts]),
            torch.cat([c.forces_ref for c, _, _ in parts]),
            torch.cat([c.batch + o for c, o, _ in parts]),
            offset,
            None if any(s is None for s in species) else torch.cat(species),
            torch.cat([c.edge_index + a for c, _, a in parts], dim=1) if with_edges else None,
            torch.cat([c.edge_vectors for c, _, _ in parts]) if with_edges else None,
        )
