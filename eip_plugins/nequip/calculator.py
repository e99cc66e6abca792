"""ASE calculator for evidential NequIP models: energy, forces and force uncertainties.

Drop-in for ``nequip.integrations.ase.NequIPCalculator``::

    calc = NequIPUQCalculator.from_compiled_model("model.nequip.pt2", device="cpu")
    calc = NequIPUQCalculator.from_saved_model("best.ckpt")   # checkpoint or .nequip.zip package
    atoms.calc = calc
    atoms.get_forces(); calc.results["forces_uncertainty"]      # (N,) eV/A

Results are those of :class:`eip_plugins.ase_calculator.UncertaintyCalculator`.
A compiled (AOTInductor) model returns values, not an autograd graph, so it cannot give the
gradient of the uncertainty that uncertainty-driven dynamics needs: calculators built with
``from_compiled_model`` have ``supports_udd = False``; load the checkpoint/package for UDD.
"""

import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from ase.data import atomic_numbers
from nequip.data import AtomicDataDict, from_ase
from nequip.integrations.mixins import _IntegrationLoaderMixin
from nequip.nn import ForceStressOutput

from eip_plugins.ase_calculator import UncertaintyCalculator
from eip_plugins.core import keys
from eip_plugins.model_files import check_model_archive, error_summary

from . import _fields
from .compile_targets import ASE_UQ_TARGET
from .head_module import has_evidential_head, heads_for_inference

_NO_HEAD = (
    "{what} has no evidential uncertainty outputs ({missing} missing): it is a plain NequIP "
    "model. Give it a head without retraining with `eip-attach nequip`, or train it with "
    "eip_plugins.nequip.EvidentialNequIPGNNModel{hint}."
)


class NequIPUQCalculator(_IntegrationLoaderMixin, UncertaintyCalculator):
    """ASE calculator for NequIP models with an evidential head.

    Args:
        model: an evaluation-mode evidential ``GraphModel`` or a loaded ``--target ase_uq``
            AOTInductor model (use the ``from_*`` constructors).
        device: ``"cpu"`` or ``"cuda"``.
        transforms: data transforms (type mapping, neighbor list), set by the constructors.
        chemical_species_to_atom_type_map: element -> model type (for ``known_atomic_numbers``).
        udd: uncertainty-driven dynamics settings (checkpoint/package models only).
        torchscript_head: prepare the evidential head for inference
            (:func:`~eip_plugins.nequip.head_module.heads_for_inference`: frozen parameters,
            TorchScript; same results to rounding, about half the head's per-call cost on small
            structures); the NequIP model around it runs as given. It replaces the model's head
            module in place, so it is off for a model passed in here and on for the one
            ``from_saved_model`` loads.
        **kwargs: ``energy_units_to_eV``, ``length_units_to_A`` (the model's units, as in
            ``NequIPCalculator``) and ASE's calculator arguments; any other keyword raises
            ValueError (:class:`~eip_plugins.ase_calculator.UncertaintyCalculator`).
    """

    def __init__(
        self,
        model: Any,
        device: Union[str, torch.device] = "cpu",
        transforms: Optional[List[Callable]] = None,
        chemical_species_to_atom_type_map: Optional[Dict[str, str]] = None,
        udd=None,
        torchscript_head: bool = False,
        **kwargs,
    ):
        self.device = torch.device(device)
        self.transforms = list(transforms or [])
        self.compiled = not getattr(model, "is_graph_model", False)
        # an AOTInductor model returns no autograd graph: no gradient of sigma, hence no UDD
        self.supports_udd = not self.compiled
        if not self.compiled:
            if model.training:
                raise ValueError("call .eval() on the model before building the calculator")
            if not has_evidential_head(model):
                missing = list(_fields.REQUIRED_UNCERTAINTY_FIELDS)
                raise ValueError(_NO_HEAD.format(what="this model", missing=missing, hint=""))
            model = model.to(self.device)
            if torchscript_head:
                heads_for_inference(model)
        self.model = model
        if chemical_species_to_atom_type_map:
            self.known_atomic_numbers = {
                atomic_numbers[s] for s in chemical_species_to_atom_type_map
            }
        else:  # the elements the type mapper of the constructors knows
            for t in self.transforms:
                table = getattr(t, "lookup_table", None)
                if table is not None:
                    self.known_atomic_numbers = set(torch.nonzero(table >= 0).flatten().tolist())
        super().__init__(udd=udd, **kwargs)

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def _get_aoti_compile_target(cls) -> Dict:
        from nequip.scripts._compile_utils import COMPILE_TARGET_DICT

        return COMPILE_TARGET_DICT[ASE_UQ_TARGET]

    @classmethod
    def from_compiled_model(
        cls,
        compile_path: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        chemical_species_to_atom_type_map: Optional[Union[Dict[str, str], bool]] = True,
        **kwargs,
    ) -> "NequIPUQCalculator":
        """Load a ``nequip-compile --mode aotinductor --target ase_uq`` file (``.nequip.pt2``).

        ``chemical_species_to_atom_type_map=True`` (default) maps each element to the model
        type of the same name; pass a dict otherwise.
        """
        what = f"a NequIP model compiled with --target {ASE_UQ_TARGET}"
        check_model_archive(compile_path, what)
        with _unreadable_as(compile_path, what):
            _check_compiled_outputs(compile_path, device)
            return super().from_compiled_model(
                compile_path,
                device=device,
                chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
                **kwargs,
            )

    @classmethod
    def from_saved_model(
        cls,
        model_path: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        chemical_species_to_atom_type_map: Optional[Union[Dict[str, str], bool]] = True,
        **kwargs,
    ) -> "NequIPUQCalculator":
        """Load a checkpoint (``.ckpt``) or ``nequip-package`` file (``.nequip.zip``) directly."""
        what = "a NequIP checkpoint (*.ckpt) or package (*.nequip.zip)"
        check_model_archive(model_path, what)
        kwargs.setdefault("torchscript_head", True)  # the calculator's own copy of the model
        with _unreadable_as(model_path, what):
            return cls._from_saved_model(
                model_path,
                device=device,
                chemical_species_to_atom_type_map=chemical_species_to_atom_type_map,
                **kwargs,
            )

    from_checkpoint = from_saved_model
    from_package = from_saved_model

    # -- evaluation -----------------------------------------------------------------------------
    def atoms_to_data(self, atoms) -> AtomicDataDict.Type:
        data = from_ase(atoms)
        for t in self.transforms:
            data = t(data)
        return AtomicDataDict.to_(data, self.device)

    def evaluate_model(self, atoms, keep_graph: bool) -> Dict[str, torch.Tensor]:
        data = self.atoms_to_data(atoms)
        if keep_graph:
            if self.compiled:
                raise ValueError("a compiled model cannot keep the autograd graph (no UDD)")
            data[AtomicDataDict.POSITIONS_KEY].requires_grad_(True)
        with _keep_force_graph(self.model, keep_graph):
            out = self.model(data)
        result = {
            "energy": out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(()),
            "forces": out[AtomicDataDict.FORCE_KEY],
        }
        stress = out.get(AtomicDataDict.STRESS_KEY, None)
        if stress is not None and stress.numel() == 9 and atoms.cell.rank == 3:
            result["stress"] = stress.reshape(3, 3)
        for k in _fields.REQUIRED_UNCERTAINTY_FIELDS:
            result[k] = out[k]
        for k in _fields.DISTANCE_FIELDS:  # absent from files compiled by older versions
            if k in out:
                result[k] = out[k]
        for k in (*keys.PER_STRUCTURE_UNCERTAINTY_KEYS, *keys.PER_STRUCTURE_DISTANCE_KEYS):
            if k in result:
                result[k] = result[k].reshape(1)
        for k in keys.RAW_PARAMETER_KEYS:  # evidential parameters, for NLL/CE/ES metrics
            if k in out:
                result[k] = out[k]
        if keep_graph:
            result["positions"] = data[AtomicDataDict.POSITIONS_KEY]
        else:
            result = {k: v.detach() for k, v in result.items()}
        return result


@contextlib.contextmanager
def _keep_force_graph(model, keep: bool):
    """Make ``ForceStressOutput`` build a differentiable force graph (as in training).

    In evaluation mode NequIP computes forces with ``create_graph=False``, which frees the
    backbone's autograd graph that the head's features share; UDD needs it once more.
    """
    modules = [m for m in model.modules() if isinstance(m, ForceStressOutput)] if keep else []
    for m in modules:
        m.training = True
    try:
        yield
    finally:
        for m in modules:
            m.training = False


@contextlib.contextmanager
def _unreadable_as(path, what: str):
    """Turn a failure to load ``path`` (a corrupt archive, a model of another framework, a
    foreign dict) into one ValueError naming the file; our own ValueErrors pass unchanged."""
    try:
        yield
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever torch/nequip raise on a foreign file
        first = error_summary(err)
        raise ValueError(
            f"{path} could not be loaded as {what} ({type(err).__name__}: {first}); "
            "a corrupt file, or a model of another framework?"
        ) from err


def _check_compiled_outputs(compile_path, device) -> None:
    """ValueError if a compiled model lacks the uncertainty outputs (e.g. ``--target ase``)."""
    from nequip.model.inference_models import load_compiled_model
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_OUTPUTS_KEY, parse_aoti_keys

    path = str(compile_path)
    if not path.endswith(".nequip.pt2"):
        raise ValueError(
            f"expected an AOTInductor file compiled with --target {ASE_UQ_TARGET} "
            f"(*.nequip.pt2), got '{path}'; use from_saved_model for checkpoints and packages"
        )
    target = NequIPUQCalculator._get_aoti_compile_target()
    _, metadata = load_compiled_model(path, device, list(target["input"]), None)
    outputs = parse_aoti_keys(metadata.get(NEQUIP_AOTI_OUTPUTS_KEY, ""))
    missing = [k for k in _fields.REQUIRED_UNCERTAINTY_FIELDS if k not in outputs]
    if missing:
        hint = (
            f", then `nequip-compile ... --mode aotinductor --target {ASE_UQ_TARGET}` (a model "
            f"compiled with another target, e.g. `--target ase`, exports only {outputs})"
        )
        raise ValueError(_NO_HEAD.format(what=f"'{path}'", missing=missing, hint=hint))
