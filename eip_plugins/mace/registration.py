"""The one registration function shared by the runtime hook and the upstream ``mace.plugins`` patch.

:func:`register` receives a freshly executed MACE CLI module and wraps a few of its names. It is
called either by the import hook (:mod:`eip_plugins.mace.hook`, for an unmodified mace-torch
0.3.16) or by MACE itself through the ``mace.plugins`` entry-point group once
``patches/mace-plugins-0.3.16.diff`` is applied. It is idempotent and a no-op when
``EIP_PLUGINS_DISABLE=1`` or when the MACE version is not the tested one.

Patch points, all pass-through unless ``--head`` is set (i.e. ``--head none`` is plain MACE):

``mace.cli.run_train``
    - ``mace.tools.build_default_arg_parser``: adds ``--head`` and ``--eip_*``
      (:mod:`.arguments`).
    - ``mace.tools.check_args``: validates them after MACE's own checks, before any data is read;
      a bad input exits with one ``mace_run_train: error: ...`` line.
    - ``get_loss_fn`` / ``get_swa``: the evidential loss (:mod:`.loss`) for stage one and two.
    - ``configure_model``: wraps MACE's model in :class:`.model.EvidentialMACE`, psi0 from data
      (on a forked RNG, with the train loader's generator restored: the head takes no random
      numbers from the run).
    - ``mace.tools.train.take_step`` / ``take_step_lbfgs``: with the ``detached`` objective the
      head's and the model's gradients are clipped as two groups (:mod:`.clipping`), so that
      the model trains exactly as without a head.
    - ``get_params_options``: adds the head's parameters to the optimizer (group ``eip_head``).
    - ``mace.tools.train``: once training has finished, every model MACE loads back for saving
      (``checkpoint_handler.load_latest``, stage one and two) gets its feature statistics and
      recalibration scale fitted (:mod:`.calibration`) before the ``.model`` and its compiled
      twin are written (``--eip_density_statistics``, ``--eip_recalibrate``).
    - ``extract_config_mace_model``: describes the backbone (+ head) in the compiled model's
      ``config.yaml`` instead of an error entry.
    - ``jit`` (e3nn's): a failed TorchScript compilation of a model with a head is logged (MACE
      itself ignores it silently).
    - ``create_error_table`` and ``mace.tools.train.evaluate`` / ``valid_err_log`` /
      ``mace.tools.tables_utils.evaluate``: uncertainty metrics (:mod:`.evaluation`).
``mace.cli.eval_configs``
    - ``get_model_output`` / ``run``: writes the uncertainty fields (:mod:`.evaluation`).
"""

from __future__ import annotations

import functools
import logging
import sys
import weakref

from ..switches import DISABLE_ENV, plugins_disabled

SUPPORTED_MACE_VERSION = "0.3.16"
_MARK = "__eip_plugins_registered__"

# Per-run state (the loss is built before the model) keyed by id() of MACE's argparse namespace,
# which is unhashable; the weak reference guards against a recycled id.
_RUN_STATE: dict = {}


def disabled() -> bool:
    """True when ``EIP_PLUGINS_DISABLE`` is set to a true value (1, true, yes, on)."""
    return plugins_disabled()


def mace_version_supported() -> bool:
    import mace

    version = getattr(mace, "__version__", "unknown")
    if version == SUPPORTED_MACE_VERSION:
        return True
    message = (
        f"eip-plugins: mace-torch {version} is not supported (the MACE adapter is written and "
        f"tested against mace-torch=={SUPPORTED_MACE_VERSION}); MACE runs unmodified and "
        f"--head is not available. Set {DISABLE_ENV}=1 to silence this warning."
    )
    print(message, file=sys.stderr)
    logging.getLogger(__name__).warning(message)
    return False


def register(module, source: str = "entry_point") -> bool:
    """Install the plugin into a MACE CLI module (``mace.cli.run_train``/``eval_configs``).

    Args:
        module: the module object, already executed.
        source: ``"hook"`` or ``"entry_point"`` (recorded on the module).

    Returns:
        True if the module is (now or already) registered.
    """
    if getattr(module, _MARK, None):
        return True
    if disabled() or not mace_version_supported():
        return False
    spec = getattr(module, "__spec__", None)  # "__main__" under `python -m`: use the spec's name
    name = spec.name if spec is not None else getattr(module, "__name__", "")
    if name.endswith("cli.run_train"):
        _register_run_train(module)
    elif name.endswith("cli.eval_configs"):
        _register_eval_configs(module)
    else:
        return False
    setattr(module, _MARK, source)
    return True


# -- mace_run_train ---------------------------------------------------------------------------------
def _register_run_train(run_train) -> None:
    import importlib

    import mace.tools

    from . import clipping, evaluation

    # ``mace.tools.train`` is shadowed by the function ``train`` on the package: use the modules.
    train_module = importlib.import_module("mace.tools.train")
    tables = importlib.import_module("mace.tools.tables_utils")

    tools = mace.tools
    tools.build_default_arg_parser = _wrap_parser(tools.build_default_arg_parser)
    tools.check_args = _wrap_check_args(tools.check_args)
    tools.train = _wrap_train(tools.train)
    run_train.get_loss_fn = _wrap_get_loss_fn(run_train.get_loss_fn)
    run_train.get_swa = _wrap_get_swa(run_train.get_swa)
    run_train.configure_model = _wrap_configure_model(run_train.configure_model)
    run_train.get_params_options = _wrap_get_params_options(run_train.get_params_options)
    run_train.extract_config_mace_model = _wrap_extract_config(run_train.extract_config_mace_model)
    if not isinstance(run_train.jit, _ReportingJit):
        run_train.jit = _ReportingJit(run_train.jit)
    train_module.evaluate = evaluation.wrap_evaluate(train_module.evaluate)
    train_module.take_step = clipping.wrap_step(train_module.take_step)
    train_module.take_step_lbfgs = clipping.wrap_step(train_module.take_step_lbfgs)
    train_module.valid_err_log = evaluation.wrap_valid_err_log(train_module.valid_err_log)
    tables.evaluate = evaluation.wrap_evaluate(tables.evaluate)
    run_train.create_error_table = evaluation.wrap_create_error_table(
        run_train.create_error_table, tables
    )


def _wrapped(original, wrapper):
    functools.update_wrapper(wrapper, original)
    wrapper.__eip_wrapped__ = True
    return wrapper


def _wrap_parser(build_default_arg_parser):
    if getattr(build_default_arg_parser, "__eip_wrapped__", False):
        return build_default_arg_parser

    def build_parser(*args, **kwargs):
        from .arguments import add_head_arguments

        return add_head_arguments(build_default_arg_parser(*args, **kwargs))

    return _wrapped(build_default_arg_parser, build_parser)


def _wrap_check_args(check_args):
    if getattr(check_args, "__eip_wrapped__", False):
        return check_args

    def check_args_and_head(args):
        from .arguments import HeadArgumentError, validate_args

        out = check_args(args)
        try:
            validate_args(out[0])
        except HeadArgumentError as err:
            raise SystemExit(f"mace_run_train: error: {err}") from None
        return out

    return _wrapped(check_args, check_args_and_head)


def _state(args) -> dict:
    entry = _RUN_STATE.get(id(args))
    if entry is None or entry[0]() is not args:
        entry = (weakref.ref(args), {})
        _RUN_STATE[id(args)] = entry
    return entry[1]


def _wrap_get_loss_fn(get_loss_fn):
    if getattr(get_loss_fn, "__eip_wrapped__", False):
        return get_loss_fn

    def get_evidential_loss_fn(args, *rest, **kwargs):
        from .arguments import head_config_from_args, head_enabled
        from .loss import EvidentialLoss

        if not head_enabled(args):
            return get_loss_fn(args, *rest, **kwargs)
        from .arguments import calibration_settings_from_args

        config = head_config_from_args(args)
        if config.force_objective == "detached":
            loss = EvidentialLoss(config, mean_loss=get_loss_fn(args, *rest, **kwargs))
            logging.info(
                f"--head={args.head}: MACE's loss (--loss={args.loss}) trains the model, the "
                f"evidential loss the head (--eip_force_objective=detached; --eip_energy_weight "
                f"is not used); the loss is {loss}"
            )
        else:
            loss = EvidentialLoss(config)
            logging.info(
                f"--head={args.head} --eip_force_objective=nll: MACE's --loss={args.loss}, "
                f"--energy_weight={args.energy_weight} and --forces_weight={args.forces_weight} "
                f"are not used; the loss is {loss}"
            )
        loss.calibration = calibration_settings_from_args(args)
        _state(args)["loss"] = loss
        return loss

    return _wrapped(get_loss_fn, get_evidential_loss_fn)


def _wrap_train(train):
    if getattr(train, "__eip_wrapped__", False):
        return train

    def train_then_calibrate(*args, **kwargs):
        from .calibration import calibrate_on_final_load
        from .loss import EvidentialLoss

        out = train(*args, **kwargs)
        loss_fn = kwargs.get("loss_fn")
        if isinstance(loss_fn, EvidentialLoss):
            calibrate_on_final_load(
                kwargs["checkpoint_handler"],
                kwargs["train_loader"],
                kwargs["valid_loaders"],
                kwargs.get("device"),
                loss_fn.calibration,
            )
        return out

    return _wrapped(train, train_then_calibrate)


def _wrap_configure_model(configure_model):
    if getattr(configure_model, "__eip_wrapped__", False):
        return configure_model

    def configure_evidential_model(args, train_loader, *rest, **kwargs):
        import torch

        from .arguments import head_config_from_args, head_enabled
        from .model import mean_squared_force, wrap_model

        model, output_args = configure_model(args, train_loader, *rest, **kwargs)
        if not head_enabled(args):
            return model, output_args
        config = head_config_from_args(args)
        # the head takes no random numbers from the run: its initialisation and the pass over
        # the training set for psi0 (a shuffled loader draws a seed) happen on a forked RNG, so
        # that MACE shuffles, initialises and trains exactly as in a plain run of the same seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(args.seed))
            psi0 = args.eip_psi0
            if psi0 is None and args.head in ("e2ip", "mve"):
                psi0 = mean_squared_force(train_loader)
                logging.info(
                    f"eip head: psi0 = <F_c^2> over the training set = {psi0:.6g} (eV/A)^2"
                )
            model = wrap_model(model, config, psi0)
        state = _state(args)
        state["head"] = model.head
        if "loss" in state:
            state["loss"].attach(model.head)
        geometric = ""
        if model.head.geometry is not None:
            geometric = (
                f", plus {model.head.geometry.channels}x1o + {model.head.geometry.channels}x2e "
                "geometric features it builds from MACE's neighbour list"
            )
        logging.info(
            f"eip head {args.head} reads MACE node features of irreps {model.node_feats_irreps}"
            f"{geometric}; {sum(p.numel() for p in model.head.parameters())} head parameters"
        )
        return model, output_args

    return _wrapped(configure_model, configure_evidential_model)


def _wrap_get_params_options(get_params_options):
    if getattr(get_params_options, "__eip_wrapped__", False):
        return get_params_options

    def get_params_options_with_head(args, model, *rest, **kwargs):
        options = get_params_options(args, model, *rest, **kwargs)
        head = getattr(model, "head", None) if "head" in getattr(model, "_modules", {}) else None
        if head is not None:
            options["params"].append(
                {"name": "eip_head", "params": list(head.parameters()), "weight_decay": 0.0}
            )
        return options

    return _wrapped(get_params_options, get_params_options_with_head)


def _wrap_get_swa(get_swa):
    if getattr(get_swa, "__eip_wrapped__", False):
        return get_swa

    def get_swa_evidential(args, model, *rest, **kwargs):
        from .arguments import head_config_from_args, head_enabled
        from .loss import EvidentialLoss

        swa, swas = get_swa(args, model, *rest, **kwargs)
        if head_enabled(args) and swa is not None:
            weight = args.eip_swa_energy_weight
            config = head_config_from_args(args, energy_weight=weight)
            mace_loss = swa.loss_fn if config.force_objective == "detached" else None
            swa.loss_fn = EvidentialLoss(config, mean_loss=mace_loss).attach(model.head)
            logging.info(f"Stage Two evidential loss: {swa.loss_fn}")
        return swa, swas

    return _wrapped(get_swa, get_swa_evidential)


def _wrap_extract_config(extract_config_mace_model):
    if getattr(extract_config_mace_model, "__eip_wrapped__", False):
        return extract_config_mace_model

    def extract_config(model, *rest, **kwargs):
        import json

        if "head" in getattr(model, "_modules", {}) and hasattr(model, "eip_head_config"):
            config = extract_config_mace_model(model.model, *rest, **kwargs)
            config["eip_head"] = json.loads(model.eip_head_config)
            return config
        return extract_config_mace_model(model, *rest, **kwargs)

    return _wrapped(extract_config_mace_model, extract_config)


class _ReportingJit:
    """``e3nn.util.jit`` as seen by run_train: MACE swallows compilation errors silently; for a
    model with a head the error is logged before it is re-raised (to MACE's ``except``)."""

    def __init__(self, jit):
        self._jit = jit

    def compile(self, module, *args, **kwargs):
        try:
            return self._jit.compile(module, *args, **kwargs)
        except Exception as err:
            if hasattr(module, "eip_head_config"):
                first = str(err).strip().splitlines()[:1]
                logging.warning(
                    f"eip-plugins: TorchScript compilation failed, no *_compiled.model is written: "
                    f"{type(err).__name__}: {first[0] if first else ''}"
                )
            raise

    def __getattr__(self, name):
        return getattr(self._jit, name)


# -- mace_eval_configs ---------------------------------------------------------------------------------
def _register_eval_configs(eval_configs) -> None:
    from . import evaluation

    eval_configs.get_model_output = evaluation.wrap_get_model_output(eval_configs.get_model_output)
    eval_configs.run = evaluation.wrap_eval_run(eval_configs.run)
