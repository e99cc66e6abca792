"""The total training objective: evidential force term + weighted energy MAE (SPEC §1)."""

from typing import Dict

from torch import Tensor, nn

from .config import HeadConfig
from .losses import energy_loss


def evidential_total_loss(
    head: nn.Module,
    params,
    forces_ref: Tensor,
    energy_pred: Tensor,
    energy_ref: Tensor,
    num_atoms: Tensor,
    config: HeadConfig,
) -> Dict[str, Tensor]:
    """Total loss = mean over atoms of the head's force loss + w |E_pred - E_ref|.

    Args:
        head: a head from :func:`build_head`.
        params: the head's output for this batch.
        forces_ref: (N, 3) reference forces, eV/A.
        energy_pred, energy_ref: (G,) energies, eV.
        num_atoms: (G,) atoms per structure.
        config: supplies ``energy_weight`` and ``per_atom_energy``.

    Returns:
        dict with ``loss`` (the scalar to minimise), ``force_loss`` and ``energy_loss``.
    """
    _check_shape("forces_ref", forces_ref, tuple(params[0].shape))
    _check_shape("energy_ref", energy_ref, tuple(energy_pred.shape))
    _check_shape("num_atoms", num_atoms, tuple(energy_pred.shape))
    force = head.force_loss(params, forces_ref).mean()
    energy = energy_loss(energy_pred, energy_ref, num_atoms, config.per_atom_energy)
    return {
        "loss": force + config.energy_weight * energy,
        "force_loss": force,
        "energy_loss": energy,
    }


def _check_shape(name: str, tensor: Tensor, expected: tuple) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}, expected {expected} to match the predictions"
        )
