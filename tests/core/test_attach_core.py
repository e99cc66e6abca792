"""Head-only training on cached features (the framework-agnostic part of eip-attach)."""

import torch
from core_helpers import ToyBackbone

from eip_plugins.attach import FeatureCache, FeatureChunk, fit_head, initial_psi0
from eip_plugins.attach.head_training import evaluate_head
from eip_plugins.core import HeadConfig, build_head


def _synthetic_cache(n_structures, seed, max_atoms_in_memory=10**9):
    """Noise whose scale grows with local crowding: a learnable heteroscedastic error."""
    g = torch.Generator().manual_seed(seed)
    backbone = ToyBackbone()
    cache = FeatureCache(max_atoms_in_memory=max_atoms_in_memory)
    for _ in range(n_structures // 4):
        feats, forces, ref, batch = [], [], [], []
        for s in range(4):
            pos = torch.randn(8, 3, generator=g, dtype=torch.float64) * 1.3
            x = backbone(pos)
            crowd = x[:, 0]
            scale = 0.02 + 0.3 * torch.sigmoid(3 * (crowd - 2.0))
            f = torch.randn(8, 3, generator=g, dtype=torch.float64)
            feats.append(x)
            forces.append(f)
            ref.append(f + scale[:, None] * torch.randn(8, 3, generator=g, dtype=torch.float64))
            batch.append(torch.full((8,), s))
        cache.append(
            FeatureChunk(torch.cat(feats), torch.cat(forces), torch.cat(ref), torch.cat(batch), 4)
        )
    return backbone, cache


def test_head_learns_to_rank_errors_and_streaming_matches_memory(tmp_path):
    backbone, train = _synthetic_cache(48, seed=0)
    _, valid = _synthetic_cache(24, seed=1)
    _, streamed = _synthetic_cache(48, seed=0, max_atoms_in_memory=100)
    assert streamed.streamed and not train.streamed
    results = []
    for cache in (train, streamed):
        torch.manual_seed(0)
        head = build_head(HeadConfig(kind="e2ip", hidden=8), backbone.irreps_out).double()
        head.covariance.set_psi0(initial_psi0(cache))
        fit = fit_head(head, cache, valid, max_epochs=40, lr=2e-2, patience=10, progress=False)
        results.append((fit, evaluate_head(head, valid)))
    (fit, metrics), (fit_s, metrics_s) = results
    assert metrics["spearman"] > 0.3 and metrics["roc_auc"] > 0.65
    assert fit.best_valid_nll == min(h["valid_nll"] for h in fit.history)
    assert abs(fit.best_valid_nll - fit_s.best_valid_nll) < 1e-8
    streamed.close()


def test_atomic_write_keeps_the_old_file_when_verification_fails(tmp_path):
    import os

    import pytest

    from eip_plugins.attach import atomic_write

    out = tmp_path / "model.ckpt"
    out.write_bytes(b"previous model")

    def bad(tmp):
        raise RuntimeError("reloaded model differs")

    with pytest.raises(RuntimeError, match="differs"):
        atomic_write(out, lambda tmp: open(tmp, "wb").write(b"new"), verify=bad)
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]  # no temporary left

    old = os.umask(0o022)
    try:
        atomic_write(out, lambda tmp: open(tmp, "wb").write(b"new"), verify=lambda tmp: None)
    finally:
        os.umask(old)
    assert out.read_bytes() == b"new"
    assert (out.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600


def test_a_one_ulp_force_change_is_refused():
    import pytest

    from eip_plugins.attach.verify import require_identical_predictions

    before = {"energy": torch.tensor([-1.5]), "forces": torch.randn(4, 3)}
    require_identical_predictions(before, {k: v.clone() for k, v in before.items()})
    after = {k: v.clone() for k, v in before.items()}
    after["forces"][2, 1] = torch.nextafter(after["forces"][2, 1], torch.tensor(1e9))
    with pytest.raises(RuntimeError, match="changes the backbone's forces.*nothing was written"):
        require_identical_predictions(before, after)


def test_calibrate_head_fits_statistics_and_scale_and_reports_before_after():
    from eip_plugins.calibration import CalibrationSettings, calibrate_head, head_predictions
    from eip_plugins.core.predictive import predictive_distribution

    backbone, train = _synthetic_cache(24, seed=0)
    _, valid = _synthetic_cache(12, seed=1)
    torch.manual_seed(0)
    head = build_head(HeadConfig(kind="e2ip", hidden=8), backbone.irreps_out).double()
    head.covariance.set_psi0(initial_psi0(train))
    report = calibrate_head(head, train, valid, CalibrationSettings(recalibrate="nll"))
    assert report["statistics"]["atoms_per_species"] == [24 * 8]
    # the default stores every training atom (fewer than DEFAULT_NEIGHBOURS) for the neighbour
    # distance
    assert report["statistics"]["neighbours_per_species"] == [24 * 8]
    assert head.density.has_neighbours
    assert head.density.fitted and float(head.variance_scale.scale) == report["variance_scale"]
    # "before" is the head without statistics and scale; the scale is the validation NLL optimum
    head.variance_scale.set(1.1 * report["variance_scale"])
    params, ref, _, _ = head_predictions(head, valid)
    nll_off = predictive_distribution(params).nll(ref).mean().item()
    head.variance_scale.set(report["variance_scale"])
    assert report["after"]["nll"] < nll_off and report["before"]["nll"] != report["after"]["nll"]
    assert report["after"]["mean_feature_distance"] > 0
    assert head.output_range.fitted and report["output_range"] == {"atoms": 24 * 8}
    assert 0.0 <= report["after"]["bounded_fraction"] < 0.5
    # the force prior: k^2 = 64 times the mean squared reference force component of the
    # training atoms
    ref_train = torch.cat([c.forces_ref for c in train])
    expected = 64.0 * float(ref_train.square().mean())
    assert report["force_prior"] == [round(expected, 6)]
    # c is fitted before the prior is stored: the same c as without the prior
    no_prior = CalibrationSettings(recalibrate="nll", force_prior=0.0)
    copy = build_head(HeadConfig(kind="e2ip", hidden=8), backbone.irreps_out).double()
    copy.load_state_dict(head.state_dict())
    assert (
        calibrate_head(copy, train, valid, no_prior)["variance_scale"] == report["variance_scale"]
    )
    torch.testing.assert_close(
        head.density.prior_variance, torch.tensor([expected], dtype=torch.float64)
    )
    nothing = CalibrationSettings(
        density=False, output_range=False, recalibrate="none", force_prior=0.0
    )
    off = calibrate_head(head, train, valid, nothing)
    assert not head.density.fitted and not head.output_range.fitted
    assert not head.density.has_force_prior and "force_prior" not in off
    assert off["variance_scale"] == 1.0 and "output_range" not in off
    assert off["after"]["nll"] == off["before"]["nll"]


def test_a_failed_calibration_keeps_the_head_as_trained(caplog):
    from eip_plugins.calibration import CalibrationSettings, calibrate_or_keep

    backbone, train = _synthetic_cache(8, seed=0)
    head = build_head(HeadConfig(kind="e2ip", hidden=8), backbone.irreps_out).double()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    broken = [
        FeatureChunk(c.node_feats * float("nan"), c.forces, c.forces_ref, c.batch, 4) for c in train
    ]
    assert calibrate_or_keep(head, broken, None, CalibrationSettings()) is None
    assert "uncertainty calibration failed (non-finite node features" in caplog.text
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), key
