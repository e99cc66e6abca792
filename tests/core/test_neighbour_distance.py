"""The neighbour distance (core.neighbour_distance): the soft distance of an atom's descriptors to
the nearest stored training atoms of its element, added to the Gaussian distance.

Checked against an independent NumPy computation, through the calibration's pass over the
training set, for smooth gradients, rotation invariance, and through every way a head is saved
(state dict into a fresh head, an old state dict, pickle, TorchScript).
"""

import io
import pickle

import numpy as np
import pytest
import torch
from core_helpers import make_head

from eip_plugins.attach import FeatureChunk
from eip_plugins.calibration import CalibrationSettings, calibrate_head
from eip_plugins.core import FeatureStatistics
from eip_plugins.core._e3nn import o3
from eip_plugins.core.feature_density import FeatureDensity
from eip_plugins.core.neighbour_distance import (
    DEFAULT_LOCAL_NEIGHBOURS,
    DEFAULT_LOCAL_SCALE_POWER,
    DEFAULT_TEMPERATURE_FACTOR,
    NeighbourSample,
    element_offsets,
    fit_neighbours,
    neighbour_distance_sq,
)

IRREPS = o3.Irreps("5x0e + 2x1o")


def _training_set(n: int = 150, seed: int = 0):
    """Features of two species in two clusters each (a gap between them) and species ids."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, IRREPS.dim, generator=g, dtype=torch.float64)
    feats[: n // 2, :5] += 4.0  # two clusters of environments along the scalars
    species = torch.arange(n) % 2
    return feats, species


def _fit(head, feats, species, max_per_species: int = 1000, **options):
    """Gaussian statistics and the neighbour bank of ``feats`` stored in ``head`` (``options``:
    of :func:`fit_neighbours`)."""
    descriptors = head.invariants(feats)
    stats = FeatureStatistics(head.density.num_species, head.density.dim)
    stats.update(descriptors, species)
    fitted = stats.finalize()
    head.density.load_statistics(fitted)
    sample = NeighbourSample(head.density.num_species, head.density.dim, max_per_species)
    sample.update(descriptors, species)
    head.density.load_neighbours(fit_neighbours(sample, fitted.mean, fitted.whitening, **options))
    return descriptors, fitted


def _soft_min(d2: np.ndarray, tau: float) -> np.ndarray:
    shifted = d2.min(1, keepdims=True)
    return np.maximum(shifted[:, 0] - tau * np.log(np.exp(-(d2 - shifted) / tau).sum(1)), 0.0)


def _local_scale(within: np.ndarray, power: float) -> np.ndarray:
    """rho_j of stored atoms with squared distances ``within`` (M, M), diagonal inf."""
    spacing = np.sort(within, axis=1)[:, :DEFAULT_LOCAL_NEIGHBOURS].mean(1)
    return (spacing / spacing.mean()) ** power


@pytest.mark.parametrize("power", [DEFAULT_LOCAL_SCALE_POWER, 0.0, 1.0])
def test_distance_against_an_independent_computation(power):
    head = make_head("e2ip", IRREPS, num_species=3).double()
    feats, species = _training_set()
    descriptors, fitted = _fit(head, feats, species, local_scale_power=power)
    g = torch.Generator().manual_seed(7)
    new = torch.randn(40, IRREPS.dim, generator=g, dtype=torch.float64) * 2.0
    new[:9] *= 50.0  # far out: every term of their sums but the nearest underflows
    new_species = torch.arange(40) % 3  # species 2: no training atoms, Gaussian distance alone
    r2 = head.feature_distance_sq(new, new_species).numpy()
    h_new = head.invariants(new).numpy()
    for z in range(3):
        mean, w = fitted.mean[z].numpy(), fitted.whitening[z].numpy()
        own = (h_new[new_species.numpy() == z] - mean) @ w.T
        gaussian = (own**2).sum(1)
        if z == 2:
            np.testing.assert_allclose(r2[new_species.numpy() == z], gaussian, rtol=1e-12)
            continue
        bank = (descriptors.numpy()[species.numpy() == z] - mean) @ w.T
        within = ((bank[:, None] - bank[None]) ** 2).sum(-1)
        np.fill_diagonal(within, np.inf)
        rho = _local_scale(within, power)
        scaled = within / rho[None, :]  # distances in units of the stored atom's spacing
        tau = DEFAULT_TEMPERATURE_FACTOR * scaled.min(1).mean()
        scale = _soft_min(scaled, tau).mean()  # each training atom left out of its own sum
        d2 = ((own[:, None] - bank[None]) ** 2).sum(-1) / rho[None, :]
        expected = 0.5 * gaussian + 0.5 * _soft_min(d2, tau) / scale
        np.testing.assert_allclose(r2[new_species.numpy() == z], expected, rtol=1e-9)
        assert float(head.density.bank_temperature[z]) == pytest.approx(tau, rel=1e-12)
        stored = head.density.bank_local_scale[head.density.bank_species == z].numpy()
        np.testing.assert_allclose(stored, rho, rtol=1e-12)


def test_a_thinly_covered_region_counts_as_covered_with_the_local_scale():
    """One element, two regions of environments: a dense cluster (many atoms close together, as
    a gas-phase molecule's MD frames) and a wide one (fewer atoms, 5x the spread, as
    condensed-phase water). With one scale for the element (power 0) a new atom drawn like the
    wide region's atoms reads as ~100x farther out than one of the dense cluster; measured in
    each stored atom's own spacing (power 1) the two are alike, the default power 1/2 is between.
    An atom beyond both regions stays far at every power."""
    g = torch.Generator().manual_seed(5)

    def draw(n: int, centre: float, spread: float) -> torch.Tensor:
        x = spread * torch.randn(n, 3, generator=g, dtype=torch.float64)
        x[:, 0] += centre
        return x

    train = torch.cat([draw(400, 0.0, 0.3), draw(100, 6.0, 1.5)])
    species = torch.zeros(train.shape[0], dtype=torch.long)
    dense, wide, beyond = draw(200, 0.0, 0.3), draw(200, 6.0, 1.5), draw(50, -20.0, 0.3)
    ratio = {}
    for power in (0.0, DEFAULT_LOCAL_SCALE_POWER, 1.0):
        density = FeatureDensity(1, 3).double()
        stats = FeatureStatistics(1, 3)
        stats.update(train, species)
        fitted = stats.finalize()
        density.load_statistics(fitted)
        sample = NeighbourSample(1, 3, max_per_species=1000)
        sample.update(train, species)
        bank = fit_neighbours(sample, fitted.mean, fitted.whitening, local_scale_power=power)
        density.load_neighbours(bank, weight=1.0)  # the neighbour distance alone
        mean_dense, mean_wide, mean_beyond = (
            float(density(x, torch.zeros(x.shape[0], dtype=torch.long)).mean())
            for x in (dense, wide, beyond)
        )
        assert mean_beyond > 20.0 * max(mean_dense, mean_wide), power
        ratio[power] = mean_wide / mean_dense
    assert ratio[0.0] > 50.0  # one scale: the wide region reads as new
    assert ratio[DEFAULT_LOCAL_SCALE_POWER] < ratio[0.0] / 10.0
    assert ratio[1.0] < 2.0  # its own spacing: covered as well as the dense cluster


def test_fit_in_row_blocks_equals_the_fit_in_one(monkeypatch):
    import eip_plugins.core.neighbour_distance as neighbour_distance

    head = make_head("e2ip", IRREPS, num_species=2).double()
    feats, species = _training_set()
    _fit(head, feats, species)
    whole = {k: v.clone() for k, v in head.density.state_dict().items()}
    monkeypatch.setattr(neighbour_distance, "_FIT_BLOCK_ROWS", 7)  # 75 atoms: 11 blocks
    _fit(head, feats, species)
    for name, value in head.density.state_dict().items():
        torch.testing.assert_close(value, whole[name], rtol=1e-12, atol=1e-14, msg=name)


def test_an_atom_in_the_gap_between_clusters_is_far_only_for_the_neighbour_distance():
    irreps = o3.Irreps("2x0e + 1x1o")  # 3 descriptors: 200 atoms per species sample them densely
    head = make_head("e2ip", irreps, num_species=2).double()
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(400, irreps.dim, generator=g, dtype=torch.float64)
    feats[:200, :2] += 8.0  # two clusters of environments
    species = torch.arange(400) % 2
    _fit(head, feats, species)
    gap = feats[:20].clone()
    gap[:, :2] -= 4.0  # cluster atoms moved halfway to the other cluster, at the Gaussian's centre
    z = species[:20]
    head.density.neighbour_weight.fill_(1.0)
    neighbours = head.feature_distance_sq(gap, z)
    head.density.neighbour_weight.zero_()
    gaussian = head.feature_distance_sq(gap, z)
    assert gaussian.mean() < 1.0  # closer than a typical training atom, for the Gaussian
    assert neighbours.mean() > 5.0  # far from every training atom


def test_a_bank_loaded_out_of_element_order_is_sorted_and_gives_the_same_distance():
    head = make_head("e2ip", IRREPS, num_species=3).double().eval()
    feats, species = _training_set()
    _fit(head, feats, species)
    assert head.density.bank_offsets == [0, 75, 150, 150]  # element 2: no training atoms
    x = torch.randn(9, IRREPS.dim, dtype=torch.float64)
    z = torch.arange(9) % 3
    expected = head.feature_distance_sq(x, z)
    state = head.state_dict()
    order = torch.randperm(
        state["density.bank"].shape[0], generator=torch.Generator().manual_seed(2)
    )
    state["density.bank"] = state["density.bank"][order]
    state["density.bank_species"] = state["density.bank_species"][order]
    state["density.bank_local_scale"] = state["density.bank_local_scale"][order]
    fresh = make_head("e2ip", IRREPS, num_species=3, seed=4).double().eval()
    fresh.load_state_dict(state, strict=True)
    assert fresh.density.bank_offsets == [0, 75, 150, 150]
    assert bool((fresh.density.bank_species.diff() >= 0).all())
    torch.testing.assert_close(fresh.feature_distance_sq(x, z), expected, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not sorted by element"):
        element_offsets(torch.tensor([1, 0]), 2)


def test_reservoir_sample_is_bounded_and_uniform():
    small = NeighbourSample(2, 3, max_per_species=50)
    x = torch.arange(30, dtype=torch.float64)[:, None].expand(30, 3)
    small.update(x, torch.zeros(30, dtype=torch.long))
    torch.testing.assert_close(small.kept[0], x)  # fewer than M: every atom, in order
    assert small.kept[1].shape == (0, 3)
    kept_first_half = []
    for seed in range(200):
        sample = NeighbourSample(1, 1, max_per_species=20, seed=seed)
        for batch in torch.arange(400, dtype=torch.float64).split(37):
            sample.update(batch[:, None], torch.zeros(batch.shape[0], dtype=torch.long))
        kept = sample.kept[0][:, 0]
        assert kept.shape == (20,) and kept.unique().numel() == 20
        kept_first_half.append(float((kept < 200).double().mean()))
    # uniform: half the kept atoms come from the first half of the stream (4000 draws)
    assert abs(np.mean(kept_first_half) - 0.5) < 0.03
    again = NeighbourSample(1, 1, max_per_species=20, seed=3)
    for batch in torch.arange(400, dtype=torch.float64).split(37):
        again.update(batch[:, None], torch.zeros(batch.shape[0], dtype=torch.long))
    same = NeighbourSample(1, 1, max_per_species=20, seed=3)
    for batch in torch.arange(400, dtype=torch.float64).split(37):
        same.update(batch[:, None], torch.zeros(batch.shape[0], dtype=torch.long))
    torch.testing.assert_close(again.kept[0], same.kept[0])
    with pytest.raises(ValueError, match="at least 2 training atoms"):
        NeighbourSample(1, 1, max_per_species=1)


def test_gradients_are_finite_and_match_finite_differences():
    head = make_head("e2ip", IRREPS, num_species=3).double()
    feats, species = _training_set()
    _fit(head, feats, species)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, IRREPS.dim, generator=g, dtype=torch.float64).requires_grad_()
    z = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.autograd.gradcheck(lambda f: head.feature_distance_sq(f, z), (x,))
    at_a_training_atom = feats[:2].clone().requires_grad_()  # d = 0 to a stored atom
    (grad,) = torch.autograd.grad(
        head.feature_distance_sq(at_a_training_atom, species[:2]).sum(), at_a_training_atom
    )
    assert torch.isfinite(grad).all()


def test_sigma_rotates_with_a_neighbour_bank():
    torch.manual_seed(1)
    head = make_head("e2ip", IRREPS, num_species=2).double().eval()
    feats, species = _training_set()
    _fit(head, feats, species)
    x = torch.randn(5, IRREPS.dim, dtype=torch.float64)
    forces = torch.randn(5, 3, dtype=torch.float64)
    z = torch.tensor([0, 1, 1, 0, 1])
    unc = head.uncertainty(head(x, forces, z))
    for _ in range(10):
        rot = o3.rand_matrix(dtype=torch.float64)
        unc_r = head.uncertainty(head(x @ IRREPS.D_from_matrix(rot).T, forces @ rot.T, z))
        expected = rot @ unc.epistemic_cov @ rot.T
        assert ((unc_r.epistemic_cov - expected).abs().max() / expected.abs().max()) < 1e-7


def test_every_save_path_keeps_the_bank():
    head = make_head("e2ip", IRREPS, num_species=2).double().eval()
    feats, species = _training_set()
    _fit(head, feats, species)
    x = torch.randn(7, IRREPS.dim, dtype=torch.float64)
    z = torch.arange(7) % 2
    expected = head.feature_distance_sq(x, z)
    assert head.density.has_neighbours and head.density.bank.shape == (150, 7)
    # a state dict into a freshly built head (how NequIP checkpoints load): B comes from the file
    fresh = make_head("e2ip", IRREPS, num_species=2, seed=4).double().eval()
    fresh.load_state_dict(head.state_dict(), strict=True)
    torch.testing.assert_close(fresh.feature_distance_sq(x, z), expected, rtol=0, atol=0)
    # a state dict saved before the local scale existed: rho = 1, as the fit with power 0
    one_scale = make_head("e2ip", IRREPS, num_species=2).double().eval()
    _fit(one_scale, feats, species, local_scale_power=0.0)
    before_local = {k: v for k, v in one_scale.state_dict().items() if "local_scale" not in k}
    fresh.load_state_dict(before_local, strict=True)
    torch.testing.assert_close(fresh.density.bank_local_scale, torch.ones(150, dtype=torch.float64))
    torch.testing.assert_close(
        fresh.feature_distance_sq(x, z), one_scale.feature_distance_sq(x, z), rtol=1e-12, atol=0
    )
    pickled = pickle.loads(pickle.dumps(one_scale))
    del pickled.density._buffers["bank_local_scale"]  # as pickled before the local scale
    pickled.density.__setstate__(pickled.density.__dict__)
    torch.testing.assert_close(
        pickled.feature_distance_sq(x, z), one_scale.feature_distance_sq(x, z), rtol=0, atol=0
    )
    # a state dict saved before the bank existed: the Gaussian distance alone
    old = {k: v for k, v in head.state_dict().items() if "bank" not in k and "neighbour" not in k}
    fresh.load_state_dict(old, strict=True)
    assert not fresh.density.has_neighbours
    gaussian = fresh.feature_distance_sq(x, z)
    assert not torch.allclose(gaussian, expected)
    # pickle (MACE's *.model) and TorchScript
    buffer = io.BytesIO()
    torch.save(head, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded.feature_distance_sq(x, z), expected, rtol=0, atol=0)
    unpickled = pickle.loads(pickle.dumps(head))
    del unpickled.density._buffers["bank"]  # as pickled before the neighbour distance existed
    unpickled.density.__setstate__(unpickled.density.__dict__)
    torch.testing.assert_close(unpickled.feature_distance_sq(x, z), gaussian, rtol=0, atol=0)
    scripted = torch.jit.script(head)
    forces = torch.zeros(7, 3, dtype=torch.float64)
    _, scripted_r2 = scripted.forward_with_distance(x, forces, z)
    torch.testing.assert_close(scripted_r2, expected, rtol=1e-12, atol=0)
    # float32, as a float32 model casts its buffers
    r2_32 = head.float().feature_distance_sq(x.float(), z)
    torch.testing.assert_close(r2_32, expected.float(), rtol=1e-4, atol=1e-5)
    head.density.reset()
    assert not head.density.has_neighbours and float(head.density.neighbour_weight) == 0.0


def test_calibration_fits_the_bank_and_refuses_bad_settings():
    head = make_head("e2ip", IRREPS, num_species=2).double()
    feats, species = _training_set()
    zeros = torch.zeros(feats.shape[0], 3, dtype=feats.dtype)
    chunks = [
        FeatureChunk(
            feats[i : i + 16],
            zeros[i : i + 16],
            zeros[i : i + 16],
            torch.zeros(feats[i : i + 16].shape[0], dtype=torch.long),
            1,
            species=species[i : i + 16],
        )
        for i in range(0, feats.shape[0], 16)
    ]
    report = calibrate_head(head, chunks, None, CalibrationSettings(neighbours=40))
    assert report["statistics"]["neighbours_per_species"] == [40, 40]
    assert head.density.bank.shape == (80, head.density.dim)
    assert float(head.density.neighbour_weight) == 0.5
    calibrate_head(head, chunks, None, CalibrationSettings(neighbours=0))  # refit without
    assert not head.density.has_neighbours
    # the default keeps up to DEFAULT_NEIGHBOURS per element: here every training atom
    report = calibrate_head(head, chunks, None, CalibrationSettings())
    assert report["statistics"]["neighbours_per_species"] == torch.bincount(species).tolist()
    assert head.density.has_neighbours
    assert CalibrationSettings(density=False).neighbours == 0
    with pytest.raises(ValueError, match="neighbours=1"):
        CalibrationSettings(neighbours=1)
    with pytest.raises(ValueError, match="need the feature statistics"):
        CalibrationSettings(neighbours=10, density=False)
    sample = NeighbourSample(2, head.density.dim, 10)
    mean, whitening = head.density.mean, head.density.whitening
    with pytest.raises(ValueError, match="local_scale_power=1.5"):
        fit_neighbours(sample, mean, whitening, local_scale_power=1.5)
    with pytest.raises(ValueError, match="local_neighbours=0"):
        fit_neighbours(sample, mean, whitening, local_neighbours=0)


def test_the_cost_script_times_the_distance_on_a_bank_fitted_as_the_calibration_fits_it(capsys):
    """``python -m examples.benchmark.neighbour_cost`` (README figures): its synthetic bank is a
    fitted bank of every element, its arguments give the head's own distance, and it prints a
    row per (D, dtype, N)."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    if str(repo) not in sys.path:  # `examples` is imported from the repository root
        sys.path.insert(0, str(repo))
    from examples.benchmark import neighbour_cost

    bank = neighbour_cost.synthetic_bank(dim=4, stored_per_element=20)
    assert bank["fitted"].count.tolist() == [20.0, 20.0, 20.0]
    args = neighbour_cost.distance_arguments(bank, atoms=30, dtype=torch.float64)
    s2 = neighbour_distance_sq(*args)
    assert s2.shape == (30,) and bool((s2[:3] > s2[3:].median()).all())  # the moved atoms: far
    neighbour_cost.main(["--atoms", "3", "--dims", "4", "--stored", "10", "--rounds", "1"])
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2 + 2 and rows[2].startswith("| 4 | 30 | float64 | 3 |")
