"""``training_module.loss``: the head's evidential force term with NequIP's energy/force loss, or
evidential force term + weighted energy MAE (SPEC §1).

Usage (``eip_plugins/nequip/configs/config_with_eip.yaml``)::

    loss:
      _target_: eip_plugins.nequip.EvidentialLoss
      head: ${head}                    # must match the model's head
      head_options: ${head_options}    # quantile, lam and force_objective are read from here
      energy_force_loss:               # force_objective: detached (NequIP's EnergyForceLoss)
        per_atom_energy: true
        coeffs: {total_energy: 1.0, forces: 1.0}
      energy_weight: 0.1               # force_objective: nll
      per_atom_energy: false           # force_objective: nll

The model's output dict carries the head parameters (``e2ip_kappa`` ... see ``_fields``), so the
loss rebuilds the core parameter tuple from it and evaluates the core per-atom force loss.

- ``force_objective: detached`` (default): the terms of NequIP's own ``EnergyForceLoss`` (energy
  and force MSE, ``energy_force_loss`` are its arguments) train the model as without a head; the
  evidential term ``evidential_force_loss`` (coeff 1) trains the head only, which reads detached
  forces and features while training. The coefficients are normalised over NequIP's terms only
  (:class:`DetachedObjectiveLoss`), so the model's gradients are exactly those of NequIP's loss
  without a head.
- ``force_objective: nll`` (the papers' recipe): the ``weighted_sum`` NequIP minimises is exactly
  ``mean_atoms(force loss) + w |E_pred - E_ref|`` (one entry with ``coeff: 1``); its two parts are
  logged without coefficients.
"""

from typing import Any, Dict, List, Optional, Union

import torch
from nequip.data import AtomicDataDict, PerAtomModifier
from nequip.data.stats import _MeanX
from nequip.train import MeanAbsoluteError, MetricsManager
from torch import Tensor

from eip_plugins.core import HeadConfig, keys
from eip_plugins.core.losses import (
    energy_loss,
    evidential_force_nll,
    evidential_force_regularizer,
    gaussian_force_nll,
    niw_evidence_regularizer,
    niw_student_t_nll,
)
from eip_plugins.core.params import GaussianParams, NIGParams, NIWParams

from . import _fields


def head_kind_of(output: AtomicDataDict.Type) -> str:
    """The head kind whose parameter fields are in a model output dict."""
    for kind, fields in _fields.PARAM_FIELDS.items():
        if all(f in output for f in fields):
            return kind
    raise ValueError(
        "the model output has no evidential head parameters (e.g. 'e2ip_psi'): build the model "
        "with eip_plugins.nequip.EvidentialNequIPGNNModel instead of a plain NequIP model"
    )


def params_from_output(output: AtomicDataDict.Type, kind: Optional[str] = None):
    """Rebuild the core parameter tuple (``NIWParams`` / ``GaussianParams`` / ``NIGParams``)."""
    found = head_kind_of(output)
    if kind is not None and found != kind:
        raise ValueError(
            f"the loss/metrics are configured for head '{kind}' but the model has a '{found}' "
            "head; use the same `head` for the model and the loss (e.g. head: ${head})"
        )
    # the head works in the model dtype; forces come in the dtype of the positions
    dtype = output[_fields.PARAM_FIELDS[found][0]].dtype
    forces = output[AtomicDataDict.FORCE_KEY].to(dtype)
    if found == "e2ip":
        return NIWParams(
            forces,
            output[keys.E2IP_KAPPA],
            output[keys.E2IP_NU_W],
            output[keys.E2IP_PSI],
            output[_fields.E2IP_PSI_INV],
            output[_fields.E2IP_LOG_DET_PSI],
        )
    if found == "mve":
        return GaussianParams(
            forces,
            output[keys.MVE_COV],
            output[_fields.MVE_COV_INV],
            output[_fields.MVE_LOG_DET_COV],
        )
    return NIGParams(forces, output[keys.EIP_NU], output[keys.EIP_ALPHA], output[keys.EIP_BETA])


def reference_forces(target: AtomicDataDict.Type) -> Tensor:
    """Reference forces (N, 3) eV/A, or a ValueError explaining how to provide them."""
    forces = target.get(AtomicDataDict.FORCE_KEY, None)
    if forces is None:
        raise ValueError(
            "the evidential loss/metrics need reference forces, but the data has no 'forces' "
            "field; label the data with forces and map the file's key to 'forces' "
            "(e.g. key_mapping: {REF_forces: forces})"
        )
    return forces


def per_atom_force_loss(params, forces_ref: Tensor, config: HeadConfig) -> Tensor:
    """The head's per-atom force loss (N,): NLL + lambda Reg (mirrors ``head.force_loss``)."""
    if isinstance(params, NIWParams):
        return niw_student_t_nll(params, forces_ref) + config.lam * niw_evidence_regularizer(
            params, forces_ref
        )
    if isinstance(params, GaussianParams):
        return gaussian_force_nll(params, forces_ref)
    nll = evidential_force_nll(params, forces_ref, config.quantile)
    reg = evidential_force_regularizer(params, forces_ref, config.quantile)
    return (nll + config.lam * reg).sum(-1)


def _energy_term(preds, target, per_atom: bool) -> Tensor:
    if AtomicDataDict.TOTAL_ENERGY_KEY not in target:
        raise ValueError(
            "the evidential loss needs reference energies ('total_energy'); map the file's key "
            "with key_mapping (e.g. {REF_energy: total_energy}) or set energy_weight: 0"
        )
    num_atoms = preds.get(AtomicDataDict.NUM_NODES_KEY, None)
    if num_atoms is None:
        num_atoms = torch.full((1,), preds[AtomicDataDict.FORCE_KEY].shape[0])
    return energy_loss(
        preds[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1),
        target[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1),
        num_atoms.reshape(-1),
        per_atom,
    )


class _HeadLossMean(_MeanX):
    """A running mean of a quantity of the head's loss under ``config``."""

    full_state_update = False

    def __init__(self, config: HeadConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def _force_loss(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> Tensor:
        """The head's per-atom force loss (N,) for one batch (on the detached mean force with the
        ``detached`` objective, so that it trains the head only)."""
        params = params_from_output(preds, self.config.kind)
        if self.config.force_objective == "detached":
            params = type(params)(params[0].detach(), *params[1:])
        forces_ref = reference_forces(target).to(params[0].dtype)
        return per_atom_force_loss(params, forces_ref, self.config)


class EvidentialForceLoss(_HeadLossMean):
    """Running mean over atoms of the head's per-atom force loss (nats per atom)."""

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        super().update(self._force_loss(preds, target))

    def __str__(self) -> str:
        return "evidential_force_loss"


class EvidentialTotalLoss(_HeadLossMean):
    """mean_atoms(force loss) + w |E_pred - E_ref| per batch, averaged over batches."""

    def update(self, preds: AtomicDataDict.Type, target: AtomicDataDict.Type) -> None:
        total = self._force_loss(preds, target).mean()
        if self.config.energy_weight > 0.0:
            energy = _energy_term(preds, target, self.config.per_atom_energy)
            total = total + self.config.energy_weight * energy
        super().update(total.reshape(1))

    def __str__(self) -> str:
        return "evidential_loss"


def EvidentialLoss(
    head: Union[str, Dict[str, Any]] = "e2ip",
    head_options: Optional[Dict[str, Any]] = None,
    energy_weight: float = 0.1,
    per_atom_energy: bool = False,
    type_names: Optional[List[str]] = None,
    extra_metrics: Optional[List[Dict[str, Any]]] = None,
    energy_force_loss: Optional[Dict[str, Any]] = None,
) -> MetricsManager:
    """``MetricsManager`` for ``training_module.loss``.

    Args:
        head: head kind (must match the model's) or a dict of ``HeadConfig`` fields.
        head_options: ``HeadConfig`` fields; the loss uses ``quantile`` (eip), ``lam`` and
            ``force_objective``.
        energy_weight: w of the energy MAE term (eV, or eV/atom with ``per_atom_energy``);
            ``nll`` objective only.
        per_atom_energy: use |E_pred - E_ref| / N_atoms; ``nll`` objective only.
        type_names: passed by NequIP.
        extra_metrics: further ``MetricsManager`` entries (logged; give them ``coeff`` to add
            them to the minimised sum, which NequIP then renormalises).
        energy_force_loss: keyword arguments of ``nequip.train.EnergyForceLoss`` (``coeffs``,
            ``per_atom_energy``, ``per_type_forces_coeffs``); ``detached`` objective only,
            default NequIP's (per-atom energy and force MSE, coefficients 1).

    Logged names: ``detached``: ``per_atom_energy_mse``, ``forces_mse`` (NequIP's) and
    ``evidential_force_loss``; ``nll``: ``evidential_loss`` (minimised),
    ``evidential_force_loss``, ``total_energy_mae`` / ``per_atom_energy_mae``.
    """
    from .model import head_config

    config = head_config(head, head_options)
    config.energy_weight = float(energy_weight)
    config.per_atom_energy = bool(per_atom_energy)
    config = HeadConfig(**config.to_dict())  # re-validate the loss-only fields
    if config.force_objective == "detached":
        return _detached_loss(config, energy_force_loss, type_names, extra_metrics)
    energy_name = "per_atom_energy_mae" if per_atom_energy else "total_energy_mae"
    energy_field = (
        PerAtomModifier(AtomicDataDict.TOTAL_ENERGY_KEY)
        if per_atom_energy
        else AtomicDataDict.TOTAL_ENERGY_KEY
    )
    metrics = [
        {"name": "evidential_loss", "coeff": 1.0, "metric": EvidentialTotalLoss(config)},
        {"name": "evidential_force_loss", "metric": EvidentialForceLoss(config)},
        {"name": energy_name, "field": energy_field, "metric": MeanAbsoluteError()},
    ]
    return MetricsManager(metrics + list(extra_metrics or []), type_names=type_names)


def _detached_loss(config, energy_force_loss, type_names, extra_metrics) -> MetricsManager:
    """The entries of NequIP's ``EnergyForceLoss`` (same names, fields, MSE metrics and
    arguments) after the head's evidential force term (coeff 1), which comes first so that data
    without forces gets the one-line message of :func:`reference_forces`."""
    from nequip.train import MeanSquaredError

    kwargs = dict(energy_force_loss or {})
    valid = {"coeffs", "per_atom_energy", "per_type_forces_coeffs"}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"energy_force_loss: unknown key(s) {unknown}; valid: {sorted(valid)} "
            "(the arguments of nequip.train.EnergyForceLoss)"
        )
    coeffs = {AtomicDataDict.TOTAL_ENERGY_KEY: 1.0, AtomicDataDict.FORCE_KEY: 1.0}
    coeffs.update(dict(kwargs.get("coeffs") or {}))
    per_atom = bool(kwargs.get("per_atom_energy", True))
    forces_entry = {
        "name": "forces_mse",
        "field": AtomicDataDict.FORCE_KEY,
        "coeff": float(coeffs[AtomicDataDict.FORCE_KEY]),
        "metric": MeanSquaredError(),
    }
    if kwargs.get("per_type_forces_coeffs") is not None:
        forces_entry["per_type"] = True
        forces_entry["per_type_coeffs"] = kwargs["per_type_forces_coeffs"]
    metrics = [
        {"name": "evidential_force_loss", "coeff": 1.0, "metric": EvidentialForceLoss(config)},
        {
            "name": "per_atom_energy_mse" if per_atom else "total_energy_mse",
            "field": (
                PerAtomModifier(AtomicDataDict.TOTAL_ENERGY_KEY)
                if per_atom
                else AtomicDataDict.TOTAL_ENERGY_KEY
            ),
            "coeff": float(coeffs[AtomicDataDict.TOTAL_ENERGY_KEY]),
            "metric": MeanSquaredError(),
        },
        forces_entry,
    ]
    return DetachedObjectiveLoss(metrics + list(extra_metrics or []), type_names=type_names)


class DetachedObjectiveLoss(MetricsManager):
    """NequIP's ``MetricsManager`` with the coefficients normalised over every term but the
    head's evidential one (``evidential_force_loss``), which keeps its coefficient relative to
    them.

    ``MetricsManager`` divides every coefficient by their sum, so adding the head's term would
    scale the model's energy and force terms (1/3 each instead of NequIP's 1/2): the same
    direction of the gradient, but not the same numbers, and Adam's epsilon and gradient-norm
    clipping see the difference. Normalised this way the model's terms, hence its gradients,
    are exactly those of NequIP's ``EnergyForceLoss`` with the same coefficients.
    """

    HEAD_TERM = "evidential_force_loss"

    def set_coeffs(self, coeff_dict: Dict[str, Optional[float]]) -> None:
        coeffs = {k: coeff_dict.get(k) for k in self.entries}
        model_total = sum(v for k, v in coeffs.items() if v is not None and k != self.HEAD_TERM)
        total = model_total if model_total > 0 else sum(v for v in coeffs.values() if v)
        self.do_weighted_sum = total > 0
        for name, entry in self.entries.items():
            c = coeffs[name]
            entry.coeff = (c / total) if (c is not None and self.do_weighted_sum) else None
