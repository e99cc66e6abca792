"""The SPEC loss as a MACE loss module: ``loss_fn(pred=output, ref=batch) -> scalar``.

Patch point: ``get_loss_fn`` (as imported by ``mace.cli.run_train``) returns an
:class:`EvidentialLoss` when ``--head`` is set; ``get_swa`` gets one for stage two. The loss is
created before the model, so the model wrapper attaches its head afterwards (:meth:`attach`).

loss = mean_i w_i * L_i(head(node_feats, F_pred, species)_i, F_ref_i)
       + w_E * mean_g w_g * |E_pred_g - E_ref_g| (/ N_g with ``--eip_per_atom_energy``)

with L_i the head's per-atom force loss (NLL + lambda Reg, SPEC §1) and w_i, w_g MACE's per-config
weights (``weight * forces_weight`` / ``weight * energy_weight``; 1 for ordinary data, 0 for
configurations without that label). With unit weights this is exactly
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


class EvidentialLoss(nn.Module):
    """MACE-style loss module for an evidential head.

    Args:
        config: supplies ``energy_weight`` and ``per_atom_energy``.
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
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
        params = head(pred["node_feats"], pred["forces"], torch.argmax(ref["node_attrs"], dim=-1))
        atom_weight = (ref["weight"] * ref["forces_weight"])[batch]
        force_term = (atom_weight * head.force_loss(params, forces_ref)).mean()

        energy_err = (pred["energy"] - ref["energy"]).abs()
        if self.config.per_atom_energy:
            energy_err = energy_err / (ref["ptr"][1:] - ref["ptr"][:-1]).to(energy_err.dtype)
        energy_term = (ref["weight"] * ref["energy_weight"] * energy_err).mean()

        if self._records is not None:
            self._record(head, params, pred["forces"], forces_ref, atom_weight > 0)
        return force_term + self.config.energy_weight * energy_term

    @contextmanager
    def recording(self):
        """Within the context, record per-atom sigma, error and NLL; yields the record dict."""
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
        return (
            f"EvidentialLoss(head={c.kind}, lambda={c.lam}, quantile={c.quantile}, "
            f"energy_weight={c.energy_weight}, per_atom_energy={c.per_atom_energy})"
        )
