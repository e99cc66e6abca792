"""The ``--head`` and ``--eip_*`` options of ``mace_run_train`` and their validation.

Patch point (see :mod:`eip_plugins.mace.registration`): ``mace.tools.build_default_arg_parser``
gains the options below; ``mace.tools.check_args`` additionally runs :func:`validate_args`, so
every bad input stops the run before any data loading or training with one line on stderr
(``mace_run_train: error: ...``) naming the flag or the file.

``--head none`` (the default) leaves every other option and MACE's behaviour untouched.
"""

from __future__ import annotations

import argparse

from ..calibration import DEFAULT_NEIGHBOURS, RECALIBRATION_CHOICES, CalibrationSettings
from ..core.config import (
    DEFAULT_LAMBDA,
    FORCE_OBJECTIVES,
    GEOMETRIC_FEATURES,
    HEAD_KINDS,
    HeadConfig,
)
from ..core.feature_density import DEFAULT_FORCE_PRIOR, DEFAULT_POWER, DEFAULT_STRENGTH

HEAD_CHOICES = ("none", *HEAD_KINDS)
SUPPORTED_MODELS = ("MACE", "ScaleShiftMACE")
_DEFAULTS = HeadConfig()


class HeadArgumentError(ValueError):
    """A ``--head``/``--eip_*`` option or a training file cannot be used; the message is one line."""


def add_head_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--head`` and the ``--eip_*`` hyperparameters (defaults from :class:`HeadConfig`)."""
    group = parser.add_argument_group("evidential force uncertainty (eip-plugins)")
    group.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        default="none",
        help="evidential force-uncertainty head: e2ip (equivariant Normal-Inverse-Wishart), "
        "eip (per-component Normal-Inverse-Gamma, quantile regression), mve (Gaussian); "
        "'none' trains plain MACE",
    )
    group.add_argument(
        "--eip_lambda",
        type=float,
        default=None,
        help="weight of the evidence regulariser; default per head: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_LAMBDA.items()),
    )
    group.add_argument(
        "--eip_quantile",
        type=float,
        default=_DEFAULTS.quantile,
        help="quantile q in (0, 1) of the eIP Bayesian quantile regression (--head=eip)",
    )
    group.add_argument(
        "--eip_force_objective",
        choices=FORCE_OBJECTIVES,
        default=_DEFAULTS.force_objective,
        help="detached: MACE's own loss (--loss, --energy_weight, --forces_weight, ...) trains the "
        "model as without a head, and the head's evidential loss (NLL + lambda Reg), evaluated on "
        "detached forces and node features, trains the head only; nll: the papers' recipe, the "
        "evidential NLL is the force loss of the whole model (loss = force NLL + lambda Reg + "
        "w |E - E_ref|, w = --eip_energy_weight)",
    )
    group.add_argument(
        "--eip_energy_weight",
        type=float,
        default=_DEFAULTS.energy_weight,
        help="weight w of the energy MAE term with --eip_force_objective=nll: "
        "loss = force NLL + lambda Reg + w |E - E_ref|",
    )
    group.add_argument(
        "--eip_swa_energy_weight",
        type=float,
        default=None,
        help="energy weight w during stage two (--swa) with --eip_force_objective=nll; "
        "default: --eip_energy_weight",
    )
    group.add_argument(
        "--eip_per_atom_energy",
        action="store_true",
        default=False,
        help="use |E - E_ref| / N_atoms in the energy term",
    )
    group.add_argument(
        "--eip_hidden", type=int, default=_DEFAULTS.hidden, help="channel width of the head"
    )
    group.add_argument(
        "--eip_psi0",
        type=float,
        default=None,
        help="initial scale psi0 ((eV/A)^2) of the SPD matrix (e2ip, mve); default: the mean "
        "squared training force component",
    )
    group.add_argument(
        "--eip_nu_w_floor",
        type=float,
        default=_DEFAULTS.nu_w_floor,
        help="lower bound (> 4) of the NIW degrees of freedom (e2ip)",
    )
    group.add_argument(
        "--eip_max_log_scale",
        type=float,
        default=_DEFAULTS.max_log_scale,
        help="bound of the log-scale of the SPD matrix (e2ip, mve)",
    )
    group.add_argument(
        "--eip_geometric_features",
        choices=GEOMETRIC_FEATURES,
        default=_DEFAULTS.geometric_features,
        help="auto: on scalar-only models (--max_L=0, --hidden_irreps='Cx0e', or "
        "--num_interactions=1) the head builds its vector (1o) and l=2 features from the "
        "neighbour list and MACE's invariant node features; always: also on top of MACE's 1o "
        "features; never: read MACE's features only (scalar-only models are then refused)",
    )
    group.add_argument(
        "--eip_geometric_channels",
        type=int,
        default=_DEFAULTS.geometric_channels,
        help="number of geometric 1o and of 2e channels the head builds",
    )
    group.add_argument(
        "--eip_density_statistics",
        type=_str2bool,
        default=True,
        help="after training, fit per-element statistics of the head's invariant features on the "
        "training set: the epistemic evidence then shrinks with an atom's feature distance to the "
        "training atoms, and the model outputs forces_feature_distance (False: neither)",
    )
    group.add_argument(
        "--eip_density_strength",
        type=float,
        default=DEFAULT_STRENGTH,
        help="a of the evidence factor 1 / (1 + a r^(2p)), r the feature distance (RMS 1 over "
        "the training atoms); 0 keeps the evidence as trained",
    )
    group.add_argument(
        "--eip_density_power",
        type=float,
        default=DEFAULT_POWER,
        help="p of the evidence factor 1 / (1 + a r^(2p)) (1: epistemic variance linear in r^2)",
    )
    group.add_argument(
        "--eip_density_neighbours",
        type=int,
        default=None,
        help="after training, also store a random sample of up to this many training atoms per "
        f"element and add the distance to the nearest of them to the feature distance (default "
        f"{DEFAULT_NEIGHBOURS} with the feature statistics; 0: the Gaussian distance only)",
    )
    group.add_argument(
        "--eip_force_prior",
        type=float,
        default=DEFAULT_FORCE_PRIOR,
        help="after training, fit each element's RMS reference force component on the training "
        "set: far out of distribution sigma levels off at this many times it instead of growing "
        "without end (0: unbounded)",
    )
    group.add_argument(
        "--eip_output_range",
        type=_str2bool,
        default=True,
        help="after training, record the range of the head's learned outputs over the training "
        "atoms and clamp them to it, so that out of distribution only the feature distance "
        "grows the uncertainty (False: the head extrapolates them)",
    )
    group.add_argument(
        "--eip_recalibrate",
        choices=RECALIBRATION_CHOICES,
        default="nll",
        help="after training, fit one scale of the predictive distribution on the validation "
        "set by minimising its NLL or its calibration error CE (none: keep the head as trained)",
    )
    return parser


def _str2bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


def calibration_settings_from_args(args) -> CalibrationSettings:
    """What is fitted at the end of a ``--head`` run (``--eip_density_statistics``,
    ``--eip_density_strength``, ``--eip_density_power``, ``--eip_density_neighbours``,
    ``--eip_force_prior``, ``--eip_output_range``, ``--eip_recalibrate``); raises
    :class:`HeadArgumentError` naming the flag."""
    try:
        return CalibrationSettings(
            density=bool(getattr(args, "eip_density_statistics", True)),
            strength=float(getattr(args, "eip_density_strength", DEFAULT_STRENGTH)),
            power=float(getattr(args, "eip_density_power", DEFAULT_POWER)),
            recalibrate=getattr(args, "eip_recalibrate", "nll"),
            output_range=bool(getattr(args, "eip_output_range", True)),
            neighbours=_optional_int(getattr(args, "eip_density_neighbours", None)),
            force_prior=float(getattr(args, "eip_force_prior", DEFAULT_FORCE_PRIOR)),
        )
    except ValueError as err:
        text = str(err)
        flag = "--eip_density_strength"
        for word, name in (
            ("power", "--eip_density_power"),
            ("neighbours", "--eip_density_neighbours"),
            ("force prior", "--eip_force_prior"),
        ):
            if word in text:
                flag = name
        raise HeadArgumentError(f"{flag}: {err}") from None


def head_enabled(args) -> bool:
    """True when the run trains an evidential head."""
    return getattr(args, "head", "none") not in (None, "none")


# Flag names for HeadConfig fields, so that a ValueError from HeadConfig names the CLI flag.
_FLAG_OF_FIELD = {
    "kind": "--head",
    "quantile": "--eip_quantile",
    "lam": "--eip_lambda",
    "energy_weight": "--eip_energy_weight",
    "hidden": "--eip_hidden",
    "nu_w_floor": "--eip_nu_w_floor",
    "psi0": "--eip_psi0",
    "max_log_scale": "--eip_max_log_scale",
    "geometric_channels": "--eip_geometric_channels",
}


def head_config_from_args(args, energy_weight: float | None = None) -> HeadConfig:
    """The :class:`HeadConfig` of a run; raises :class:`HeadArgumentError` naming the flag."""
    kwargs = dict(
        kind=args.head,
        quantile=args.eip_quantile,
        lam=args.eip_lambda,
        energy_weight=args.eip_energy_weight if energy_weight is None else energy_weight,
        per_atom_energy=args.eip_per_atom_energy,
        hidden=args.eip_hidden,
        nu_w_floor=args.eip_nu_w_floor,
        max_log_scale=args.eip_max_log_scale,
        force_objective=getattr(args, "eip_force_objective", _DEFAULTS.force_objective),
        geometric_features=getattr(args, "eip_geometric_features", _DEFAULTS.geometric_features),
        geometric_channels=getattr(args, "eip_geometric_channels", _DEFAULTS.geometric_channels),
    )
    if args.eip_psi0 is not None:
        kwargs["psi0"] = args.eip_psi0
    try:
        return HeadConfig(**kwargs)
    except ValueError as err:
        msg = str(err)
        for field, flag in _FLAG_OF_FIELD.items():
            if msg.startswith(f"invalid {field}="):
                msg = f"{flag}: {msg}"
                break
        raise HeadArgumentError(msg) from None


def validate_args(args) -> None:
    """Check a ``--head`` run before any data is loaded (after MACE's own ``check_args``).

    Raises :class:`HeadArgumentError` (one line, naming the flag or file) for: an invalid
    hyperparameter, a model other than MACE/ScaleShiftMACE, node features without vectors
    (``--hidden_irreps`` with only scalars, or ``--num_interactions 1``) together with
    ``--eip_geometric_features=never``, cuEquivariance/OEQ acceleration, and a
    training/validation file without reference forces.
    """
    if not head_enabled(args):
        return
    head_config_from_args(args)
    calibration_settings_from_args(args)
    if args.eip_swa_energy_weight is not None and not args.eip_swa_energy_weight >= 0.0:
        raise HeadArgumentError(
            f"--eip_swa_energy_weight: invalid value {args.eip_swa_energy_weight!r}, must be >= 0"
        )
    if args.model not in SUPPORTED_MODELS:
        raise HeadArgumentError(
            f"--model={args.model}: --head={args.head} supports --model in {SUPPORTED_MODELS}"
        )
    _check_irreps(args)
    for flag in ("enable_cueq", "only_cueq", "enable_oeq"):
        if getattr(args, flag, False):
            raise HeadArgumentError(f"--{flag}: not supported with --head={args.head}")
    key = getattr(args, "forces_key", "REF_forces")
    for flag in ("train_file", "valid_file"):
        for path in _as_list(getattr(args, flag, None)):
            _check_forces_in_file(path, key, flag, args.head)


def _check_irreps(args) -> None:
    """Scalar-only node features are read through the head's geometric front end, unless
    ``--eip_geometric_features=never``."""
    from ..core._e3nn import o3

    if getattr(args, "eip_geometric_features", "auto") != "never":
        return
    irreps = o3.Irreps(str(args.hidden_irreps))
    if not any(ir.l == 1 and ir.p == -1 for _, ir in irreps):
        raise HeadArgumentError(
            f"--hidden_irreps='{irreps}': with --eip_geometric_features=never --head={args.head} "
            "reads MACE's vector (1o) node features; use l_max >= 1 (e.g. --max_L=1) or "
            "--eip_geometric_features=auto"
        )
    if int(args.num_interactions) < 2:
        raise HeadArgumentError(
            f"--num_interactions={args.num_interactions}: with --eip_geometric_features=never "
            f"--head={args.head} needs >= 2 layers (MACE's last layer carries scalars only); "
            "use --eip_geometric_features=auto"
        )


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _check_forces_in_file(path: str, key: str, flag: str, head: str) -> None:
    """Every frame of an ASE-readable file must carry finite reference forces under ``key``."""
    import os

    if not path.lower().endswith((".xyz", ".extxyz")):
        return  # h5/lmdb datasets are not inspected
    if not os.path.exists(path):  # MACE itself fails with a traceback deep in ase.io
        raise HeadArgumentError(f"--{flag} {path}: data file does not exist")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise HeadArgumentError(f"--{flag} {path}: data file is empty")
    if not os.path.isfile(path):
        raise HeadArgumentError(f"--{flag} {path}: is not a file")
    import ase.io
    import numpy as np

    from ..attach.labelled_data import frame_problem

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # noqa: BLE001 - report any parse error as one line
        raise HeadArgumentError(f"--{flag} {path}: cannot be read ({err})") from None
    for i, atoms in enumerate(frames):
        forces = atoms.arrays.get(key)
        if forces is None and atoms.calc is not None and key in ("forces",):
            forces = atoms.calc.results.get("forces")
        if forces is None:
            raise HeadArgumentError(
                f"--{flag} {path}: frame {i} has no reference forces '{key}' "
                f"(--head={head} trains on forces; set --forces_key)"
            )
        problem = frame_problem(atoms, key) if key in atoms.arrays else None
        if problem is None and not np.all(np.isfinite(forces)):
            problem = f"non-finite forces '{key}'"
        if problem:
            raise HeadArgumentError(f"--{flag} {path}: frame {i}: {problem}")
