"""ASE calculator for MACE models trained with ``mace_run_train --head=...``.

:class:`MACEUQCalculator` is a drop-in for ``mace.calculators.MACECalculator`` (same
``model_paths``, ``device``, ``default_dtype``, ``head``, ``energy_units_to_eV`` and
``length_units_to_A`` arguments) that also returns the force
uncertainties and supports uncertainty-driven dynamics (UDD) through the shared base
:class:`eip_plugins.ase_calculator.UncertaintyCalculator` (results and units documented there).
It accepts the eager ``*.model`` and MACE's TorchScript ``*_compiled.model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

from ..ase_calculator import UncertaintyCalculator
from ..core import keys
from ..core.inference import script_head
from ..model_files import check_model_archive, error_summary
from .heads import select_mace_head

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DISTANCE_KEYS = (keys.FORCES_FEATURE_DISTANCE, *keys.PER_STRUCTURE_DISTANCE_KEYS)


def load_model(path: Union[str, Path], device: str = "cpu") -> torch.nn.Module:
    """Load a ``*.model`` (eager pickle) or ``*_compiled.model`` (TorchScript) MACE model."""
    import mace  # noqa: F401 - registers MACE's classes and its torch.load setting

    hint = "give the '*.model' (or '*_compiled.model') written by mace_run_train"
    try:
        path = check_model_archive(path, "a MACE model file")
    except ValueError as err:
        raise ValueError(f"{err}; {hint}") from err
    try:
        model = torch.load(str(path), map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a model file"
        first = error_summary(err)
        raise ValueError(
            f"{path} is not a MACE model file (torch.load failed: {type(err).__name__}: "
            f"{first}); {hint}"
        ) from err
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"{path} is not a MACE model file: it holds a {type(model).__name__}, not a model "
            f"(a checkpoint, or a model of another framework?); {hint}"
        )
    return model


def has_evidential_head(model: torch.nn.Module) -> bool:
    return hasattr(model, "eip_head_config") and hasattr(model, "head")


class MACEUQCalculator(UncertaintyCalculator):
    """MACE + evidential head as an ASE calculator.

    Args:
        model_paths: path of one model trained with ``--head`` (a one-element list is accepted).
        device: torch device.
        default_dtype: ``"float64"`` or ``"float32"``; the model is cast to it.
        head: MACE multi-head name; default: the head the evidential head was attached to, else
            MACE's rule (the only head, or the one named ``default``).
        udd: uncertainty-driven dynamics settings (see the base class), or None.
        torchscript_head: run the evidential head as TorchScript (same results, about half its
            per-call cost on small structures: :mod:`eip_plugins.core.inference`); the MACE
            backbone runs as loaded. A TorchScript ``*_compiled.model`` is compiled already.
        **kwargs: ``energy_units_to_eV``, ``length_units_to_A`` (the model's units, as in
            ``MACECalculator``) and ASE's calculator arguments; see
            :class:`~eip_plugins.ase_calculator.UncertaintyCalculator`.

    Raises:
        ValueError: for a model without an evidential head (plain MACE), several paths, or a
            keyword argument it does not take (``compile_mode``, for instance).
    """

    def __init__(
        self,
        model_paths: Union[str, Path, list] = None,
        device: str = "cpu",
        default_dtype: str = "float64",
        head: str | None = None,
        udd=None,
        torchscript_head: bool = True,
        **kwargs,
    ):
        if isinstance(model_paths, (list, tuple)):
            if len(model_paths) != 1:
                raise ValueError(
                    f"MACEUQCalculator takes one model (a single model carries its own "
                    f"uncertainty), got {len(model_paths)} paths"
                )
            model_paths = model_paths[0]
        if model_paths is None:
            raise ValueError("MACEUQCalculator needs model_paths=<path to a *.model file>")
        if default_dtype not in _DTYPES:
            raise ValueError(
                f"default_dtype must be one of {sorted(_DTYPES)}, got {default_dtype!r}"
            )
        model = load_model(model_paths, device)
        if not has_evidential_head(model):
            raise ValueError(
                f"{model_paths} is a plain MACE model without an evidential head, so it has no "
                "force uncertainty. Give it one without retraining with `eip-attach mace`, train "
                "with `mace_run_train --head=e2ip` (or eip, mve), or use "
                "mace.calculators.MACECalculator for energies and forces only."
            )
        self.supports_udd = True
        super().__init__(udd=udd, **kwargs)
        self.device = torch.device(device)
        self.dtype = _DTYPES[default_dtype]
        # evaluation mode: a head trained with the detached objective reads detached inputs in
        # training mode, and UDD needs sigma's gradient with respect to positions
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if torchscript_head and not isinstance(self.model, torch.jit.ScriptModule):
            self.model.head = script_head(self.model.head)
        self.model_path = str(model_paths)
        self.r_max = float(self.model.r_max)
        self.known_atomic_numbers = {int(z) for z in self.model.atomic_numbers}
        self.heads = list(self.model.heads)
        trained_on = getattr(self.model, "eip_mace_head", None)
        self.head = select_mace_head(self.heads, head, trained_on or None)

    def _batch(self, atoms) -> Dict[str, torch.Tensor]:
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools, utils

        z_table = utils.AtomicNumberTable(sorted(self.known_atomic_numbers))
        # Built in the calculator's dtype (as MACECalculator does): positions are not rounded.
        with torch_tools.default_dtype(self.dtype):
            config = mace_data.config_from_atoms(atoms, head_name=self.head)
            graph = mace_data.AtomicData.from_config(
                config, z_table=z_table, cutoff=self.r_max, heads=self.heads
            )
        loader = torch_geometric.dataloader.DataLoader([graph], batch_size=1, shuffle=False)
        batch = next(iter(loader)).to(self.device).to_dict()
        return {
            k: v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in batch.items()
        }

    def evaluate_model(self, atoms, keep_graph: bool) -> dict[str, torch.Tensor]:
        """Energy () eV, forces (N, 3) eV/A, stress (3, 3) eV/A^3 for periodic cells, and the
        uncertainty fields; with ``keep_graph`` also ``positions`` (N, 3) with the graph kept."""
        data = self._batch(atoms)
        periodic = bool(atoms.pbc.all()) and atoms.cell.rank == 3
        # training=True keeps the autograd graph of the forces, so that the uncertainty can be
        # differentiated with respect to positions (UDD bias forces).
        out = self.model(data, training=keep_graph, compute_force=True, compute_stress=periodic)
        result = {
            "energy": out["energy"].reshape(-1)[0],
            "forces": out["forces"],
            keys.FORCES_UNCERTAINTY: out[keys.FORCES_UNCERTAINTY],
            keys.FORCES_EPISTEMIC_COV: out[keys.FORCES_EPISTEMIC_COV],
            keys.FORCES_ALEATORIC_COV: out[keys.FORCES_ALEATORIC_COV],
            keys.UNCERTAINTY: out[keys.UNCERTAINTY],
            keys.UNCERTAINTY_MAX: out[keys.UNCERTAINTY_MAX],
        }
        for key in (*keys.RAW_PARAMETER_KEYS, *_DISTANCE_KEYS):  # for NLL/CE/ES and OOD scores
            if out.get(key) is not None:
                result[key] = out[key]
        if periodic and out.get("stress") is not None:
            result["stress"] = out["stress"].reshape(3, 3)
        if keep_graph:
            result["positions"] = data["positions"]
        else:
            result = {k: v.detach() for k, v in result.items()}
        return result
