"""The NequIP loss and metrics agree with the framework-agnostic core on real model outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nequip.data import AtomicDataDict
from nequip_helpers import build_model, to_data

from eip_plugins.core import evidential_total_loss, keys
from eip_plugins.core.metrics import calibration, force_error, roc_auc, spearman
from eip_plugins.core.predictive import predictive_distribution
from eip_plugins.nequip import EvidentialLoss, EvidentialMetrics
from eip_plugins.nequip.loss import params_from_output


@pytest.mark.parametrize("head", ["e2ip", "eip", "mve"])
def test_loss_is_core_total_loss_and_trains_everything(head, ethanol_300K):
    """force_objective: nll, the papers' loss: exactly the core closed form, training all."""
    model = build_model(head, force_objective="nll")
    model.train()
    batch = to_data(ethanol_300K[:4])
    out = model(batch.copy())
    options = {"quantile": 0.3, "force_objective": "nll"}
    loss_fn = EvidentialLoss(head=head, head_options=options, energy_weight=0.2)
    loss = loss_fn(out, batch)["weighted_sum"]

    head_module = model.model.head  # the core head inside the NequIP model
    params = params_from_output(out, head)
    if head == "eip":
        head_module.quantile = 0.3  # the loss was configured with q = 0.3
    expected = evidential_total_loss(
        head_module,
        params,
        batch[AtomicDataDict.FORCE_KEY],
        out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1),
        batch[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1),
        batch[AtomicDataDict.NUM_NODES_KEY],
        loss_fn["evidential_loss"].config,
    )["loss"]
    torch.testing.assert_close(loss, expected.to(loss.dtype))

    loss.backward()
    head_grads = [p.grad for n, p in model.named_parameters() if ".head." in n]
    backbone_grads = [p.grad for n, p in model.named_parameters() if ".head." not in n]
    assert head_grads and all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in backbone_grads)


@pytest.mark.parametrize("head", ["e2ip", "eip", "mve"])
def test_detached_loss_trains_the_model_with_nequips_own_loss(head, ethanol_300K):
    """force_objective: detached (default): NequIP's EnergyForceLoss + the evidential term; the
    backbone's gradient is exactly the one NequIP's loss alone gives (the evidential term's is
    zero), the head's parameters get finite gradients."""
    from nequip.train import EnergyForceLoss

    model = build_model(head).train()
    batch = to_data(ethanol_300K[:4])
    out = model(batch.copy())
    loss_fn = EvidentialLoss(head=head)
    plain_fn = EnergyForceLoss()
    loss = loss_fn(out, batch)["weighted_sum"]
    plain = plain_fn(out, batch)["weighted_sum"]
    backbone = [p for n, p in model.named_parameters() if ".head." not in n]
    head_params = [p for n, p in model.named_parameters() if ".head." in n and p.requires_grad]
    grads = torch.autograd.grad(loss, backbone + head_params, retain_graph=True, allow_unused=True)
    plain_grads = torch.autograd.grad(plain, backbone, retain_graph=True, allow_unused=True)
    # the coefficients are normalised over NequIP's own terms: 1/2 each, as without the head
    assert loss_fn.entries["forces_mse"].coeff == plain_fn.entries["forces_mse"].coeff == 0.5
    for g, g_plain in zip(grads[: len(backbone)], plain_grads, strict=True):
        if g_plain is None:
            assert g is None or torch.all(g == 0)
        else:
            assert torch.equal(g, g_plain)
    assert any(g is not None and g.abs().sum() > 0 for g in plain_grads)
    assert all(g is not None and torch.isfinite(g).all() for g in grads[len(backbone) :])
    with pytest.raises(ValueError, match="energy_force_loss: unknown key\\(s\\) \\['coef'\\]"):
        EvidentialLoss(head=head, energy_force_loss={"coef": {}})


def test_metrics_match_core_over_an_epoch(ethanol_300K, ethanol_1200K):
    model = build_model("e2ip")
    model.eval()
    metrics = EvidentialMetrics()
    batches = [to_data(ethanol_300K[:6]), to_data(ethanol_1200K[:6])]
    sigma, error, nll, levels = [], [], [], []
    for batch in batches:
        out = model(batch.copy())
        metrics(out, batch)
        params = type(p := params_from_output(out))(*[t.detach().double() for t in p])
        dist = predictive_distribution(params)
        ref = batch[AtomicDataDict.FORCE_KEY].double()
        sigma.append(out[keys.FORCES_UNCERTAINTY].detach().double())
        error.append(force_error(out[AtomicDataDict.FORCE_KEY].detach().double(), ref))
        nll.append(dist.nll(ref))
        levels.append(dist.credible_level(ref))
    epoch = metrics.compute()
    sigma, error = torch.cat(sigma), torch.cat(error)
    assert math.isclose(epoch["uncertainty_spearman"].item(), spearman(sigma, error), abs_tol=1e-9)
    assert math.isclose(epoch["uncertainty_roc_auc"].item(), roc_auc(sigma, error), abs_tol=1e-9)
    assert math.isclose(
        epoch["calibration_error"].item(), calibration(torch.cat(levels))["ce"], abs_tol=1e-9
    )
    assert math.isclose(epoch["force_nll"].item(), torch.cat(nll).mean().item(), rel_tol=1e-9)
    assert math.isclose(epoch["uncertainty_mean"].item(), sigma.mean().item(), rel_tol=1e-9)
    assert math.isclose(
        epoch["weighted_sum"].item(),
        0.5 * (epoch["forces_mae"].item() + epoch["total_energy_mae"].item()),
        rel_tol=1e-9,
    )


@pytest.mark.parametrize("head", ["e2ip", "mve"])
def test_batched_and_single_frame_fields_agree(head, ethanol_300K):
    """The compile-friendly single-frame path (no `batch`) equals the batched path."""
    from eip_plugins.calibration import fit_training_statistics
    from eip_plugins.nequip.calibration import head_of
    from eip_plugins.nequip.features import feature_chunks

    model = build_model(head)
    model.eval()
    data = to_data(ethanol_300K[:1])
    # statistics and output range of a few frames, so that the distance fields are not all zero
    # and the first frame's outputs may be clamped
    head_module = head_of(model)
    batches = [(to_data(ethanol_300K[i : i + 5]), torch.zeros(45, 3)) for i in (5, 10, 15)]
    fit_training_statistics(
        head_module, feature_chunks(model, batches), 0.1, density=True, output_range=True
    )
    batched = model(data.copy())
    single = data.copy()
    single.pop(AtomicDataDict.BATCH_KEY)
    single.pop(AtomicDataDict.NUM_NODES_KEY)
    out = model(single)
    distance = (keys.FORCES_FEATURE_DISTANCE, *keys.PER_STRUCTURE_DISTANCE_KEYS)
    assert (batched[keys.FORCES_FEATURE_DISTANCE] > 0).all()
    for k in (*keys.PER_ATOM_UNCERTAINTY_KEYS, *keys.PER_STRUCTURE_UNCERTAINTY_KEYS, *distance):
        torch.testing.assert_close(out[k], batched[k])
    assert np.isclose(out[keys.UNCERTAINTY].item(), out[keys.FORCES_UNCERTAINTY].mean().item())


def test_registered_fields():
    from nequip.data._key_registry import _CARTESIAN_TENSOR_FIELDS, get_field_type
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT

    assert get_field_type(keys.UNCERTAINTY) == "graph"
    assert get_field_type(keys.UNCERTAINTY_MAX) == "graph"
    for k in (keys.FEATURE_DISTANCE, keys.FEATURE_DISTANCE_MAX):
        assert get_field_type(k) == "graph"
    for k in (keys.FORCES_UNCERTAINTY, keys.E2IP_KAPPA, keys.EIP_NU, keys.MVE_COV):
        assert get_field_type(k) == "node"
    assert get_field_type(keys.FORCES_FEATURE_DISTANCE) == "node"
    for k in (keys.FORCES_EPISTEMIC_COV, keys.FORCES_ALEATORIC_COV, keys.E2IP_PSI):
        assert _CARTESIAN_TENSOR_FIELDS[k] == "ij=ji"
    outputs = COMPILE_TARGET_DICT["ase_uq"]["output"]
    assert set(COMPILE_TARGET_DICT["ase"]["output"]) < set(outputs)
    for k in (*keys.PER_ATOM_UNCERTAINTY_KEYS, *keys.PER_STRUCTURE_UNCERTAINTY_KEYS):
        assert k in outputs
    assert keys.FORCES_FEATURE_DISTANCE in outputs and keys.FEATURE_DISTANCE_MAX in outputs


def test_eip_calibration_error_samples_are_a_setting(ethanol_300K):
    """The eIP calibration error is a Monte Carlo estimate: ``calibration_mc_samples`` (1000 by
    default, every validation epoch) sets its samples; the estimate agrees with 4000 samples to
    the Monte Carlo error, and a setting too small to resolve a level is refused."""
    from eip_plugins.nequip.metrics import CalibrationError

    model = build_model("eip").eval()
    batch = to_data(ethanol_300K[:6])
    out = model(batch.copy())
    default = EvidentialMetrics()
    assert default["calibration_error"].mc_samples == 1000
    estimates = {}
    for samples in (1000, 4000):
        metric = CalibrationError(samples)
        metric.update(out, batch)
        estimates[samples] = float(metric.compute())
    assert estimates[1000] != estimates[4000]
    assert abs(estimates[1000] - estimates[4000]) < 0.03
    with pytest.raises(ValueError, match="calibration_mc_samples=10: must be >= 100"):
        EvidentialMetrics(calibration_mc_samples=10)
