"""Validated hyperparameters of an evidential force head and its loss (SPEC §1)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

HEAD_KINDS = ("eip", "e2ip", "mve")

# What trains the backbone's forces when a head is trained with it:
# - "detached": the framework's own energy/force loss (MACE's --loss, NequIP's EnergyForceLoss)
#   trains the backbone exactly as without a head; the head's evidential loss is evaluated on
#   detached forces and node features, so it trains the head only.
# - "nll": the papers' recipe; the head's evidential NLL (+ regulariser) is the force loss and
#   trains the backbone's forces too (its mean is the backbone's force).
FORCE_OBJECTIVES = ("detached", "nll")

# When the head builds its own vector (1o) and l = 2 (2e) features from the local geometry
# (:mod:`eip_plugins.core.geometric_features`):
# - "auto": only for backbones without 1o node features (scalar MACE, NequIP l_max = 0);
# - "always": also on top of a backbone's own 1o features;
# - "never": read the backbone's features only (a scalar-only backbone is then refused).
GEOMETRIC_FEATURES = ("auto", "always", "never")

# Default weight of the evidence regulariser per head kind. eIP's reference code uses 1; the NIW
# regulariser |y - mu0| (2 kappa + nu_w) is an order of magnitude larger at initialisation, so e2ip
# starts lower. mve has no evidential prior and therefore no regulariser.
DEFAULT_LAMBDA = {"eip": 1.0, "e2ip": 0.1, "mve": 0.0}

SPATIAL_DIM = 3


@dataclass
class HeadConfig:
    """Everything that defines an evidential head and its training loss.

    Attributes:
        kind: ``"eip"`` (per-component NIG, quantile regression), ``"e2ip"`` (equivariant NIW with a
            3x3 SPD scale matrix) or ``"mve"`` (heteroscedastic Gaussian with the same SPD matrix).
        quantile: quantile q in (0, 1) of the eIP Bayesian quantile regression (eip only).
        lam: weight lambda >= 0 of the evidence regulariser; ``None`` takes the kind's default.
        energy_weight: weight w >= 0 of the energy MAE term of the total loss.
        per_atom_energy: use |E_pred - E_ref| / N_atoms instead of |E_pred - E_ref| in the loss.
        hidden: channel width of the head (>= 1).
        nu_w_floor: lower bound of the NIW degrees of freedom nu_w; must exceed d + 1 = 4 so that
            E[Sigma] = Psi / (nu_w - d - 1) exists.
        psi0: initial value of the positive scale psi0 of Psi = psi0 exp(S), in (eV/A)^2.
        learn_psi0: whether psi0 is trained (as log psi0) or a fixed buffer.
        max_log_scale: bound of |s| (isotropic log scale) and of |T|_F (anisotropic log scale); keeps
            exp(S) finite for any input. The condition number of Psi is at most exp(2 max_log_scale).
        force_objective: ``"detached"`` or ``"nll"`` (see :data:`FORCE_OBJECTIVES`). With
            ``"detached"`` the head, while training, reads detached forces and node features.
    """

    kind: str = "e2ip"
    quantile: float = 0.4
    lam: float | None = None
    energy_weight: float = 0.1
    per_atom_energy: bool = False
    hidden: int = 32
    nu_w_floor: float = 4.01
    psi0: float = 1.0
    learn_psi0: bool = True
    max_log_scale: float = 10.0
    force_objective: str = "detached"
    geometric_features: str = "auto"
    geometric_channels: int = 16
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got kind={self.kind!r}")
        if self.force_objective not in FORCE_OBJECTIVES:
            raise ValueError(
                f"invalid force_objective={self.force_objective!r}: choose one of "
                f"{FORCE_OBJECTIVES}"
            )
        if self.geometric_features not in GEOMETRIC_FEATURES:
            raise ValueError(
                f"invalid geometric_features={self.geometric_features!r}: choose one of "
                f"{GEOMETRIC_FEATURES}"
            )
        if self.lam is None:
            self.lam = DEFAULT_LAMBDA[self.kind]
        _check(
            0.0 < self.quantile < 1.0, "quantile", self.quantile, "must lie strictly inside (0, 1)"
        )
        _check(self.lam >= 0.0, "lam", self.lam, "(evidence regulariser weight) must be >= 0")
        _check(self.energy_weight >= 0.0, "energy_weight", self.energy_weight, "must be >= 0")
        _check(int(self.hidden) >= 1, "hidden", self.hidden, "must be a positive integer")
        _check(
            self.nu_w_floor > SPATIAL_DIM + 1,
            "nu_w_floor",
            self.nu_w_floor,
            f"must exceed d + 1 = {SPATIAL_DIM + 1} (E[Sigma] is undefined otherwise)",
        )
        _check(self.psi0 > 0.0, "psi0", self.psi0, "must be > 0 (eV/A)^2")
        _check(self.max_log_scale > 0.0, "max_log_scale", self.max_log_scale, "must be > 0")
        _check(
            int(self.geometric_channels) >= 1,
            "geometric_channels",
            self.geometric_channels,
            "must be a positive integer",
        )
        self.hidden = int(self.hidden)
        self.geometric_channels = int(self.geometric_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _check(ok: bool, name: str, value, why: str) -> None:
    if isinstance(value, float) and math.isnan(value):
        ok = False
    if not ok:
        raise ValueError(f"invalid {name}={value!r}: {why}")
