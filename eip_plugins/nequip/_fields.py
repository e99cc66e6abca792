"""Output fields of the evidential NequIP models and their registration with NequIP.

Names come from :mod:`eip_plugins.core.keys`; the closed-form inverse / log-determinant fields are
NequIP-adapter specific (the loss needs them and they are cheaper and better conditioned than an
inversion of ``e2ip_psi``). Units: forces eV/A, covariances (eV/A)^2.

Shapes (N atoms, G structures):

======================  ==========  =====  ==============================================
field                   shape       kind   rotation behaviour
======================  ==========  =====  ==============================================
forces_uncertainty      (N,)        node   invariant (eip: not equivariant, see README)
forces_epistemic_cov    (N, 3, 3)   node   Cartesian ``ij=ji``
forces_aleatoric_cov    (N, 3, 3)   node   Cartesian ``ij=ji``
uncertainty             (G,)        graph  invariant
uncertainty_max         (G,)        graph  invariant
e2ip_kappa, e2ip_nu_w   (N,)        node   invariant
e2ip_psi, e2ip_psi_inv  (N, 3, 3)   node   Cartesian ``ij=ji``
e2ip_log_det_psi        (N,)        node   invariant
mve_cov, mve_cov_inv    (N, 3, 3)   node   Cartesian ``ij=ji``
mve_log_det_cov         (N,)        node   invariant
eip_nu/alpha/beta       (N, 3)      node   per Cartesian component (not equivariant)
forces_feature_distance (N,)        node   invariant (every head)
feature_distance[_max]  (G,)        graph  invariant
======================  ==========  =====  ==============================================
"""

from typing import Dict, Final, Tuple

from eip_plugins.core import keys

E2IP_PSI_INV: Final[str] = "e2ip_psi_inv"  # (N, 3, 3), (eV/A)^-2
E2IP_LOG_DET_PSI: Final[str] = "e2ip_log_det_psi"  # (N,)
MVE_COV_INV: Final[str] = "mve_cov_inv"  # (N, 3, 3), (eV/A)^-2
MVE_LOG_DET_COV: Final[str] = "mve_log_det_cov"  # (N,)

# Internal: the backbone node features the head reads (never part of the model output).
HEAD_FEATURES: Final[str] = "eip_head_features"


def partial_feature_field(layer: str, feature_field: str = HEAD_FEATURES) -> str:
    """The field where the tap after convnet layer ``layer`` writes the features read so far
    (``feature_layer: all``: every tap but the last; never part of the model output)."""
    return f"{feature_field}_{layer}"


def is_partial_feature_field(field: str, feature_field: str = HEAD_FEATURES) -> bool:
    """Whether ``field`` is one of :func:`partial_feature_field`'s fields."""
    return field.startswith(feature_field + "_")


CARTESIAN_FORMULA: Final[str] = "ij=ji"

DISTANCE_FIELDS: Final[Tuple[str, ...]] = (
    keys.FORCES_FEATURE_DISTANCE,
    *keys.PER_STRUCTURE_DISTANCE_KEYS,
)

GRAPH_FIELDS: Final[Tuple[str, ...]] = (
    *keys.PER_STRUCTURE_UNCERTAINTY_KEYS,
    *keys.PER_STRUCTURE_DISTANCE_KEYS,
)

# Fields that are invariant scalars, per head kind ((N,) or (G,) tensors).
_COMMON_INVARIANT = (
    keys.FORCES_UNCERTAINTY,
    keys.UNCERTAINTY,
    keys.UNCERTAINTY_MAX,
    *DISTANCE_FIELDS,
)
_COMMON_CARTESIAN = (keys.FORCES_EPISTEMIC_COV, keys.FORCES_ALEATORIC_COV)

#: Node fields of each head's parameters (beyond the five uncertainty fields).
PARAM_FIELDS: Final[Dict[str, Tuple[str, ...]]] = {
    "e2ip": (keys.E2IP_KAPPA, keys.E2IP_NU_W, keys.E2IP_PSI, E2IP_PSI_INV, E2IP_LOG_DET_PSI),
    "mve": (keys.MVE_COV, MVE_COV_INV, MVE_LOG_DET_COV),
    "eip": (keys.EIP_NU, keys.EIP_ALPHA, keys.EIP_BETA),
}

CARTESIAN_FIELDS: Final[Tuple[str, ...]] = _COMMON_CARTESIAN + (
    keys.E2IP_PSI,
    E2IP_PSI_INV,
    keys.MVE_COV,
    MVE_COV_INV,
)

NODE_FIELDS: Final[Tuple[str, ...]] = (
    keys.FORCES_UNCERTAINTY,
    keys.FORCES_FEATURE_DISTANCE,
    *_COMMON_CARTESIAN,
    *(f for fields in PARAM_FIELDS.values() for f in fields),
)

#: Uncertainty fields a model with a head must return (files compiled by earlier versions of
#: eip-plugins have no feature distance fields).
REQUIRED_UNCERTAINTY_FIELDS: Final[Tuple[str, ...]] = (
    keys.PER_ATOM_UNCERTAINTY_KEYS + keys.PER_STRUCTURE_UNCERTAINTY_KEYS
)

#: Uncertainty fields every head returns (what the ``ase_uq`` compile target exports).
UNCERTAINTY_FIELDS: Final[Tuple[str, ...]] = REQUIRED_UNCERTAINTY_FIELDS + DISTANCE_FIELDS


def output_irreps(kind: str) -> Dict[str, object]:
    """Irreps NequIP uses to test the rotation behaviour of a head's output fields.

    ``None`` means invariant. Registered Cartesian tensor fields are declared ``"1o"`` like
    NequIP's own ``stress`` (the irreps debug check compares the last dimension, 3, and the
    equivariance test replaces the irreps of Cartesian fields by ``CartesianTensor("ij=ji")``).
    The eIP head is deliberately not rotation-equivariant (SPEC §1a), so its fields declare no
    rotation behaviour.
    """
    if kind == "eip":  # only the feature distance is invariant
        return {k: None for k in DISTANCE_FIELDS}
    out: Dict[str, object] = {k: None for k in _COMMON_INVARIANT}
    out.update({k: "1o" for k in _COMMON_CARTESIAN})
    for f in PARAM_FIELDS[kind]:
        out[f] = "1o" if f in CARTESIAN_FIELDS else None
    return out


def register() -> None:
    """Register every field with NequIP (idempotent; called on ``import nequip``)."""
    # import the module, not the `nequip.data` package: keeps `nequip-package` dependencies small
    from nequip.data._key_registry import register_fields

    register_fields(
        graph_fields=list(GRAPH_FIELDS),
        node_fields=list(NODE_FIELDS),
        cartesian_tensor_fields={k: CARTESIAN_FORMULA for k in CARTESIAN_FIELDS},
    )
