"""``nequip-compile --target ase_uq``: the AOTInductor ASE target with uncertainties.

NequIP's ``ase`` target exports energy, per-atom energy, forces and stress only. ``ase_uq`` has
the same inputs and single-frame settings and adds the five uncertainty fields, so that

    nequip-compile CKPT model.nequip.pt2 --mode aotinductor --device cpu --target ase_uq

produces a file :meth:`eip_plugins.nequip.NequIPUQCalculator.from_compiled_model` can load.
"""

from typing import Dict, Final

from . import _fields

ASE_UQ_TARGET: Final[str] = "ase_uq"


def targets() -> Dict[str, Dict]:
    """The target dicts (``input``, ``output``, ``batch_map_settings``, ``data_settings``)."""
    from nequip.scripts import _compile_utils as cu

    outputs = list(cu.ASE_OUTPUTS) + list(_fields.UNCERTAINTY_FIELDS)
    return {ASE_UQ_TARGET: {**cu.ASE_TARGET, "output": outputs}}


def register() -> None:
    """Register the targets with ``nequip-compile`` (called on ``import nequip``)."""
    from nequip.scripts._compile_utils import register_compile_targets

    register_compile_targets(targets())
