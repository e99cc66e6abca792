"""What the neighbour distance (``--density_neighbours``) costs per call, alone.

The bank is built as the calibration builds it (:class:`~eip_plugins.core.neighbour_distance.
NeighbourSample` and :func:`~eip_plugins.core.neighbour_distance.fit_neighbours` on Gaussian
statistics of the training descriptors), from synthetic descriptors: per element, a few clusters
of environments; the evaluated atoms are training-like, a tenth of them moved out of
distribution. The forward is scripted (as the calculators run heads) and timed on one thread.
No trained model or benchmark data are needed.

    .venv-mace/bin/python -m examples.benchmark.neighbour_cost
    .venv-mace/bin/python -m examples.benchmark.neighbour_cost --atoms 9,648 --dims 16,32 \\
        --stored 694 --rounds 15

Prints a markdown table: descriptor dimension D, stored atoms B, dtype, atoms N, median
milliseconds per call.
"""

from __future__ import annotations

import argparse
import time

import torch

from eip_plugins.core.neighbour_distance import (
    NeighbourSample,
    element_offsets,
    fit_neighbours,
    neighbour_distance_sq,
)

NUM_ELEMENTS = 3
CLUSTERS = 6


def synthetic_bank(dim: int, stored_per_element: int, seed: int = 0) -> dict:
    """Training descriptors of ``NUM_ELEMENTS`` elements in ``CLUSTERS`` clusters each, their
    per-element mean (Z, D) and whitening (Z, D, D), and the fitted bank of all of them."""
    g = torch.Generator().manual_seed(seed)
    z, n = NUM_ELEMENTS, stored_per_element
    centres = 2.0 * torch.randn(z, CLUSTERS, dim, generator=g, dtype=torch.float64)
    member = torch.randint(0, CLUSTERS, (n,), generator=g)
    noise = 0.5 * torch.randn(z, n, dim, generator=g, dtype=torch.float64)
    features = (centres[:, member] + noise).reshape(-1, dim)
    species = torch.arange(z).repeat_interleave(n)
    mean = torch.stack([features[species == e].mean(0) for e in range(z)])
    whitening = torch.stack(
        [
            torch.linalg.inv(torch.linalg.cholesky(torch.cov(features[species == e].T))) / dim**0.5
            for e in range(z)
        ]
    )
    sample = NeighbourSample(z, dim, max_per_species=n)
    sample.update(features, species)
    fitted = fit_neighbours(sample, mean, whitening)
    return {
        "features": features,
        "species": species,
        "mean": mean,
        "whitening": whitening,
        "fitted": fitted,
    }


def distance_arguments(bank: dict, atoms: int, dtype: torch.dtype, seed: int = 1) -> tuple:
    """``neighbour_distance_sq``'s arguments for ``atoms`` atoms drawn near training atoms, a
    tenth of them moved out of distribution."""
    g = torch.Generator().manual_seed(seed)
    features, species = bank["features"], bank["species"]
    index = torch.randint(0, features.shape[0], (atoms,), generator=g)
    h = features[index] + 0.3 * torch.randn(
        atoms, features.shape[1], generator=g, dtype=torch.float64
    )
    h[: atoms // 10] += 3.0
    z = species[index]
    whitened = torch.einsum("nij,nj->ni", bank["whitening"][z], h - bank["mean"][z])
    fitted = bank["fitted"]
    offsets = element_offsets(fitted.species, NUM_ELEMENTS)
    cast = [t.to(dtype) for t in (whitened, fitted.bank, fitted.temperature, fitted.scale)]
    gaussian = (cast[0] * cast[0]).sum(-1)
    local_scale = fitted.local_scale.to(dtype)
    return cast[0], z, cast[1], offsets, cast[2], cast[3], gaussian, local_scale


def median_ms(function, arguments: tuple, rounds: int, calls: int = 10) -> float:
    """Median over ``rounds`` of the mean time of ``calls`` calls, ms (5 warm-up calls)."""
    with torch.no_grad():
        for _ in range(5):
            function(*arguments)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                function(*arguments)
            times.append((time.perf_counter() - start) / calls)
    return 1e3 * sorted(times)[len(times) // 2]


def measure(atoms, dims, stored_per_element: int, rounds: int) -> list[dict]:
    """One row per (D, dtype, N)."""
    scripted = torch.jit.script(neighbour_distance_sq)
    rows = []
    for dim in dims:
        bank = synthetic_bank(dim, stored_per_element)
        for dtype in (torch.float64, torch.float32):
            for n in atoms:
                arguments = distance_arguments(bank, n, dtype)
                rows.append(
                    {
                        "dim": dim,
                        "stored": int(bank["fitted"].bank.shape[0]),
                        "dtype": str(dtype).removeprefix("torch."),
                        "atoms": n,
                        "ms": median_ms(scripted, arguments, rounds),
                    }
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| D | stored atoms B | dtype | atoms N | ms per call |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['dim']} | {r['stored']} | {r['dtype']} | {r['atoms']} | {r['ms']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", default="9,648", help="comma-separated N")
    parser.add_argument("--dims", default="16,32", help="comma-separated descriptor dimensions D")
    parser.add_argument("--stored", type=int, default=694, help="stored atoms per element")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    atoms = [int(a) for a in args.atoms.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    print(table(measure(atoms, dims, args.stored, args.rounds)))


if __name__ == "__main__":
    main()
