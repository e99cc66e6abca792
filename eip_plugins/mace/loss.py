"""The SPEC loss as a MACE loss module: ``loss_fn(pred=output, ref=batch) -> scalar``.

Patch point: ``get_loss_fn`` (as imported by ``mace.cli.run_train``) returns an
:class:`EvidentialLoss` when ``--head`` is set; ``get_swa`` gets one for stage two. The loss is
created before the model, so the model wrapper attaches its head afterwards (:meth:`attach`).

Two force objectives (``--eip_force_objective``):

- ``detached`` (default): loss = MACE's own loss (whatever ``--loss`` and its weights build, the
  same module MACE trains a plain model with) + mean_i w_i L_i, where the head reads detached
  node features and forces while training; the evidential term trains the head only, MACE's
  loss the model. The validation loss is MACE's loss alone (:meth:`EvidentialLoss.recording`):
  checkpoint selection, the learning-rate schedule and early stopping are a plain model's. With
  the head's RNG isolation and separate gradient clipping (:mod:`.registration`,
  :mod:`.clipping`) the model is bit-identical to a plain run of the same seed.
- ``nll`` (the papers' recipe):

  loss = mean_i w_i * L_i(head(node_feats, F_pred, species)_i, F_ref_i)
         + w_E * mean_g w_g * |E_pred_g - E_ref_g| (/ N_g with ``--eip_per_atom_energy``)

with L_i the head's per-atom force loss (NLL + lambda Reg, SPEC §1) and w_i, w_g MACE's per-config
weights (``weight * forces_weight`` / ``weight * energy_weight``; 1 for ordinary data, 0 for
configurations without that label). With unit weights the ``nll`` loss is exactly
:func:`eip_plugins.core.objective.evidential_total_loss`.

During MACE's ``evaluate`` the loss can record, per atom, sigma_i, |F_pred - F_ref| and the NLL of
the reference force under the predictive distribution (:meth:`recording`), from which
:mod:`eip_plugins.mace.evaluation` computes NLL, Spearman and ROC-AUC.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..calibration import CalibrationSettings
from ..core.config import HeadConfig
from ..core.metrics import force_error
from ..core.predictive import predictive_distribution
from .model import head_edges


class EvidentialLoss(nn.Module):
    """MACE-style loss module for an evidential head.

    Args:
        config: supplies ``force_objective``, ``energy_weight`` and ``per_atom_energy``.
        mean_loss: MACE's own loss module (``loss_fn(pred=..., ref=...) -> scalar``); required
            with the ``detached`` objective, which adds it to the head's evidential term.
    """

    def __init__(self, config: HeadConfig, mean_loss: Optional[nn.Module] = None):
        super().__init__()
        if (config.force_objective == "detached") != (mean_loss is not None):
            raise ValueError(
                f"force_objective={config.force_objective!r}: a MACE loss for the forces is "
                "needed with 'detached' and not used with 'nll'"
            )
        self.config = config
        self.mean_loss = mean_loss
        # what is fitted after training (set from --eip_density_statistics / --eip_recalibrate)
        self.calibration = CalibrationSettings()
        self._head: Optional[nn.Module] = None  # not a submodule: it belongs to the model
        self._records: Optional[Dict[str, List[Tensor]]] = None

    def attach(self, head: nn.Module) -> EvidentialLoss:
        object.__setattr__(self, "_head", head)  # a reference, not a registered submodule
        return self

    @property
    def head(self) -> nn.Module:
        if self._head is None:
            raise RuntimeError("EvidentialLoss used before a head was attached (attach(head))")
        return self._head

    def forward(self, pred: Dict[str, Tensor], ref) -> Tensor:
        head = self.head
        forces_ref = ref["forces"]
        batch = ref["batch"]
        species = torch.argmax(ref["node_attrs"], dim=-1)
        edges = head_edges(ref["positions"], ref["edge_index"], ref["shifts"])
        params = head(pred["node_feats"], pred["forces"], species, *edges)
        atom_weight = (ref["weight"] * ref["forces_weight"])[batch]
        force_term = (atom_weight * head.force_loss(params, forces_ref)).mean()
        if self._records is not None:
            self._record(head, params, pred["forces"], forces_ref, atom_weight > 0)
        if self.mean_loss is not None:  # detached: MACE's loss trains the model, NLL the head
            model_loss = self.mean_loss(pred=pred, ref=ref)
            if self._records is not None:  # validation: the model's loss alone (see recording)
                return model_loss
            return model_loss + force_term

        energy_err = (pred["energy"] - ref["energy"]).abs()
        if self.config.per_atom_energy:
            energy_err = energy_err / (ref["ptr"][1:] - ref["ptr"][:-1]).to(energy_err.dtype)
        energy_term = (ref["weight"] * ref["energy_weight"] * energy_err).mean()
        return force_term + self.config.energy_weight * energy_term

    @contextmanager
    def recording(self):
        """Within the context, record per-atom sigma, error and NLL; yields the record dict.

        MACE's ``evaluate`` (each epoch's validation, the final error tables) runs in it. With
        the ``detached`` objective the loss returned there is MACE's own loss alone: the
        validation loss that selects the best checkpoint, drives the learning-rate plateau
        schedule and early stopping is the one a plain model would have (as NequIP's
        ``config_with_eip`` monitors the force and energy MAE), so the head changes neither the
        model's training nor which epoch is kept. The head's quality is logged beside it
        (``NLL_F``, ``Spearman_F``, ``ROC_AUC_F``)."""
        self._records = {"sigma": [], "error": [], "nll": []}
        try:
            yield self._records
        finally:
            self._records = None

    @torch.no_grad()
    def _record(self, head, params, forces_pred, forces_ref, mask) -> None:
        params = type(params)(*(p.detach() for p in params))
        sigma = head.uncertainty(params).sigma
        nll = predictive_distribution(params).nll(forces_ref)
        error = force_error(forces_pred.detach(), forces_ref)
        self._records["sigma"].append(sigma[mask].cpu())
        self._records["error"].append(error[mask].cpu())
        self._records["nll"].append(nll[mask].cpu())

    def __repr__(self) -> str:
        c = self.config
        if self.mean_loss is not None:
            return (
                f"EvidentialLoss(head={c.kind}, lambda={c.lam}, quantile={c.quantile}, "
                f"force_objective=detached, model loss={self.mean_loss!r})"
            )
        return (
            f"EvidentialLoss(head={c.kind}, lambda={c.lam}, quantile={c.quantile}, "
            f"force_objective=nll, energy_weight={c.energy_weight}, "
            f"per_atom_energy={c.per_atom_energy})"
        )
