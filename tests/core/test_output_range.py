"""Bounded extrapolation: the heads' learned outputs clamped to their range over the training
atoms (core.output_range), fitted by the calibration's pass over the training set."""

import math

import pytest
import torch
from core_helpers import make_head, output_range_inputs

from eip_plugins.attach import FeatureChunk
from eip_plugins.calibration import CalibrationSettings, calibrate_head, fit_training_statistics
from eip_plugins.core._e3nn import o3
from eip_plugins.core.output_range import NO_BOUND, OutputRange, OutputRangeStatistics

IRREPS = o3.Irreps("6x0e + 6x1o")
KINDS = ["e2ip", "eip", "mve"]


def _chunks(feats: torch.Tensor, species: torch.Tensor, size: int = 16) -> list[FeatureChunk]:
    """Feature chunks of ``feats`` (N, F) with zero forces, one structure per chunk."""
    out = []
    for start in range(0, feats.shape[0], size):
        x, z = feats[start : start + size], species[start : start + size]
        zeros = torch.zeros(x.shape[0], 3, dtype=x.dtype)
        batch = torch.zeros(x.shape[0], dtype=torch.long)
        out.append(FeatureChunk(x, zeros, zeros, batch, 1, species=z))
    return out


def _fitted_head(kind: str, n: int = 120, seed: int = 0):
    """A head whose output range is fitted on n random training atoms of 2 species."""
    head = make_head(kind, IRREPS, seed=seed, num_species=2).eval()
    g = torch.Generator().manual_seed(seed + 1)
    feats = torch.randn(n, IRREPS.dim, generator=g, dtype=torch.float64)
    species = torch.arange(n) % 2
    fit_training_statistics(head, _chunks(feats, species), 0.1, density=False, output_range=True)
    return head, feats, species


def test_unfitted_range_is_the_identity_and_old_state_dicts_load():
    r = OutputRange(3, ["a", "b"])
    x = torch.randn(10, 2, dtype=torch.float64) * 1e6
    assert torch.equal(r(x, torch.arange(10) % 3), x) and not r.fitted
    head = make_head("e2ip", IRREPS, num_species=2)
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("output_range.")}
    fresh, _, _ = _fitted_head("e2ip")
    assert fresh.output_range.fitted
    fresh.load_state_dict(state, strict=True)  # a checkpoint saved before the range existed
    assert not fresh.output_range.fitted


def test_streamed_range_is_the_per_species_min_and_max_and_pools_unseen_species():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(50, 3, generator=g, dtype=torch.float64)
    species = torch.randint(0, 2, (50,), generator=g)  # species 2 never occurs
    stats = OutputRangeStatistics(3, 3)
    for part in torch.arange(50).split(7):
        stats.update(values[part], species[part])
    lower, upper = stats.finalize()
    for z in (0, 1):
        assert torch.equal(lower[z], values[species == z].min(0).values)
        assert torch.equal(upper[z], values[species == z].max(0).values)
    assert torch.equal(lower[2], values.min(0).values) and torch.equal(
        upper[2], values.max(0).values
    )
    with pytest.raises(ValueError, match="non-finite head outputs"):
        stats.update(values[:2] * float("nan"), species[:2])


def test_clamp_against_an_independent_computation_with_a_one_sided_output():
    r = OutputRange(2, ["s", "norm"], upper_only=["norm"])
    lower = torch.tensor([[-1.0, 0.5], [-2.0, 0.2]], dtype=torch.float64)
    upper = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    r.load_range(lower, upper)
    assert r.lower[0, 1] == -NO_BOUND and r.lower[1, 1] == -NO_BOUND  # one-sided: no lower bound
    x = torch.tensor([[5.0, 0.0], [-5.0, 9.0], [0.3, 0.1], [-9.0, -1.0]], dtype=torch.float64)
    z = torch.tensor([0, 0, 1, 1])
    expected = torch.tensor(
        [[1.0, 0.0], [-1.0, 2.0], [0.3, 0.1], [-2.0, -1.0]], dtype=torch.float64
    )
    assert torch.equal(r(x, z), expected)
    with pytest.raises(ValueError, match="lower > upper"):
        r.load_range(upper, lower)
    with pytest.raises(ValueError, match="not among the outputs"):
        OutputRange(1, ["s"], upper_only=["t"])


@pytest.mark.parametrize("kind", KINDS)
def test_training_atoms_are_unchanged_bit_for_bit(kind):
    head, feats, species = _fitted_head(kind)
    forces = torch.randn(feats.shape[0], 3, dtype=torch.float64)
    bounded = head(feats, forces, species)
    head.output_range.reset()
    unbounded = head(feats, forces, species)
    for got, expected in zip(bounded, unbounded, strict=True):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_out_of_distribution_stay_inside_the_training_range(kind):
    head, _, _ = _fitted_head(kind)
    g = torch.Generator().manual_seed(7)
    far = 30.0 * torch.randn(40, IRREPS.dim, generator=g, dtype=torch.float64)
    species = torch.arange(40) % 2
    raw = output_range_inputs(head, far, torch.zeros(far.shape[0], 3, dtype=far.dtype), species)
    lower, upper = head.output_range.lower[species], head.output_range.upper[species]
    assert ((raw > upper) | (raw < lower)).any(), "the test inputs must leave the training range"
    seen = []
    handle = head.output_range.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        head(far, torch.zeros(40, 3, dtype=torch.float64), species)
    handle.remove()
    assert ((seen[0] >= lower) & (seen[0] <= upper)).all()


def test_e2ip_sigma_out_of_distribution_obeys_the_closed_form_bound():
    """sigma^2 = tr(Psi) / (3 kappa (nu_w - 4)) with Psi = psi0 exp(s I + T): with s <= s_max,
    |T|_F <= t_max (largest eigenvalue of a traceless T <= sqrt(2/3) |T|_F), kappa >= kappa_min
    and nu_w >= nu_min from the fitted range, sigma^2 <= psi0 e^(s_max + sqrt(2/3) t_max) /
    (kappa_min (nu_min - 4))."""
    head, _, _ = _fitted_head("e2ip")
    g = torch.Generator().manual_seed(8)
    far = 50.0 * torch.randn(60, IRREPS.dim, generator=g, dtype=torch.float64)
    species = torch.arange(60) % 2
    lo, hi = head.output_range.lower.clone(), head.output_range.upper.clone()
    with torch.no_grad():
        sigma = head.uncertainty(head(far, torch.zeros(60, 3, dtype=torch.float64), species)).sigma
        head.output_range.reset()
        unbounded = head.uncertainty(head(far, torch.zeros(60, 3, dtype=far.dtype), species))
    names = head.output_range.names
    s_max, t_max = hi[species, names.index("log_scale")], hi[species, names.index("anisotropy")]
    kappa_min = torch.nn.functional.softplus(lo[species, names.index("kappa")]) + head.kappa_floor
    nu_min = torch.nn.functional.softplus(lo[species, names.index("nu_w")]) + head.nu_w_floor
    psi0 = math.exp(float(head.covariance.log_psi0.detach()))
    bound = psi0 * torch.exp(s_max + math.sqrt(2.0 / 3.0) * t_max) / (kappa_min * (nu_min - 4.0))
    assert (sigma**2 <= bound * (1 + 1e-9)).all()
    assert unbounded.sigma.max() > sigma.max()  # the unbounded head extrapolates further


@pytest.mark.parametrize("kind", ["e2ip", "mve"])
def test_bounded_covariance_still_rotates(kind):
    """Clamping invariants (and |T| along T) keeps Sigma(R x) = R Sigma(x) R^T, float64, on
    inputs where every bound acts."""
    head, _, _ = _fitted_head(kind)
    g = torch.Generator().manual_seed(9)
    far = 20.0 * torch.randn(30, IRREPS.dim, generator=g, dtype=torch.float64)
    forces = torch.randn(30, 3, dtype=torch.float64)
    species = torch.arange(30) % 2
    raw = output_range_inputs(head, far, torch.zeros(far.shape[0], 3, dtype=far.dtype), species)
    upper = head.output_range.upper[species]
    assert (raw[:, 1] > upper[:, 1]).any(), "the anisotropy bound must act"
    cov = head.uncertainty(head(far, forces, species)).aleatoric_cov
    for _ in range(10):
        rot = o3.rand_matrix(dtype=torch.float64)
        cov_r = head.uncertainty(head(far @ IRREPS.D_from_matrix(rot).T, forces @ rot.T, species))
        expected = rot @ cov @ rot.T
        rel = (cov_r.aleatoric_cov - expected).abs().max() / expected.abs().max()
        assert rel.item() < 1e-7


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_stay_finite_where_outputs_are_clamped(kind):
    head, _, _ = _fitted_head(kind)
    g = torch.Generator().manual_seed(10)
    far = (20.0 * torch.randn(12, IRREPS.dim, generator=g, dtype=torch.float64)).requires_grad_()
    sigma = head.uncertainty(head(far, torch.zeros(12, 3, dtype=far.dtype), torch.arange(12) % 2))
    (grad,) = torch.autograd.grad(sigma.sigma.sum(), far)
    assert torch.isfinite(grad).all()


def test_calibration_report_and_switch():
    head, feats, species = _fitted_head("e2ip")
    valid = _chunks(30.0 * feats[:32], species[:32])  # out of distribution: clamped
    report = calibrate_head(head, _chunks(feats, species), valid, CalibrationSettings())
    assert report["output_range"] == {"atoms": feats.shape[0]}
    assert report["after"]["bounded_fraction"] > 0.5
    off = calibrate_head(
        head, _chunks(feats, species), valid, CalibrationSettings(output_range=False)
    )
    assert not head.output_range.fitted and "bounded_fraction" not in off["after"]
