"""Uncertainty metrics in MACE's logs and error tables, and uncertainty fields in eval_configs.

Patch points (installed by :mod:`eip_plugins.mace.registration`); every wrapper passes straight
through to MACE unless the loss is an :class:`EvidentialLoss` / the model returns uncertainties:

- ``mace.tools.train.evaluate`` and ``mace.tools.tables_utils.evaluate``: run MACE's evaluate
  while the loss records per-atom sigma_i, |F_pred - F_ref| and NLL; add to MACE's metrics dict
  ``eip_nll_f`` (mean per-atom NLL of the reference force vector under the predictive
  distribution), ``eip_spearman_f`` (Spearman rank correlation of sigma_i and |F_pred - F_ref|)
  and ``eip_roc_auc_f`` (ROC-AUC of sigma_i for the 20 % largest errors, SPEC §3). They also land
  in MACE's results ``*.txt`` (one JSON line per evaluation).
- ``mace.tools.train.valid_err_log``: the per-epoch validation line gains
  ``NLL_F=..., Spearman_F=..., ROC_AUC_F=...`` after MACE's RMSE_E/RMSE_F.
- ``create_error_table`` (as imported by ``mace.cli.run_train``): the final TRAIN/VALID/TEST
  tables gain the columns ``NLL F``, ``Spearman F`` and ``ROC-AUC F``.
- ``mace.cli.eval_configs.get_model_output`` / ``run``: collect the uncertainty fields per batch
  and add them to the written extxyz with MACE's prefix (default ``MACE_``):
  arrays ``<prefix>forces_uncertainty`` (N,) eV/A, ``<prefix>forces_epistemic_cov`` and
  ``<prefix>forces_aleatoric_cov`` (N, 9), row-major 3x3 in (eV/A)^2,
  ``<prefix>forces_feature_distance`` (N,) (dimensionless, ~1 for training atoms); info
  ``<prefix>uncertainty`` (mean_i sigma_i) and ``<prefix>uncertainty_max`` (max_i sigma_i), eV/A,
  ``<prefix>feature_distance`` and ``<prefix>feature_distance_max`` (mean / max over atoms).
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager

import ase.data
import numpy as np
import torch

from ..core import keys
from ..core.metrics import roc_auc, spearman
from .loss import EvidentialLoss

METRIC_LABELS = {"eip_nll_f": "NLL_F", "eip_spearman_f": "Spearman_F", "eip_roc_auc_f": "ROC_AUC_F"}
TABLE_COLUMNS = {"eip_nll_f": "NLL F", "eip_spearman_f": "Spearman F", "eip_roc_auc_f": "ROC-AUC F"}


def uncertainty_metrics(records: dict) -> dict:
    """NLL, Spearman and ROC-AUC (floats) from recorded per-atom sigma, error and NLL."""
    if not records["sigma"]:
        return {}
    sigma = torch.cat(records["sigma"])
    error = torch.cat(records["error"])
    nll = torch.cat(records["nll"])
    if sigma.numel() < 5:
        return {"eip_nll_f": nll.mean().item()}
    return {
        "eip_nll_f": nll.mean().item(),
        "eip_spearman_f": spearman(sigma, error),
        "eip_roc_auc_f": roc_auc(sigma, error),
    }


def wrap_evaluate(evaluate):
    """MACE's ``evaluate(model, loss_fn, data_loader, output_args, device)`` plus the metrics."""
    if getattr(evaluate, "__eip_wrapped__", False):
        return evaluate

    @functools.wraps(evaluate)
    def evaluate_with_uncertainty(*args, **kwargs):
        loss_fn = kwargs["loss_fn"] if "loss_fn" in kwargs else args[1]
        if not isinstance(loss_fn, EvidentialLoss):
            return evaluate(*args, **kwargs)
        with loss_fn.recording() as records:
            avg_loss, aux = evaluate(*args, **kwargs)
        aux.update(uncertainty_metrics(records))
        return avg_loss, aux

    evaluate_with_uncertainty.__eip_wrapped__ = True
    return evaluate_with_uncertainty


def format_metrics(metrics) -> str | None:
    present = [k for k in METRIC_LABELS if isinstance(metrics.get(k), float)]
    if not present:
        return None
    return "".join(f", {METRIC_LABELS[k]}={metrics[k]:.4f}" for k in present)


class _AppendToValidationLine(logging.Filter):
    def __init__(self, suffix: str):
        super().__init__()
        self.suffix = suffix

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and "head:" in str(record.msg):
            record.msg = record.getMessage() + self.suffix
            record.args = ()
        return True


def wrap_valid_err_log(valid_err_log):
    """MACE's per-epoch validation line, extended by the uncertainty metrics when present."""
    if getattr(valid_err_log, "__eip_wrapped__", False):
        return valid_err_log

    @functools.wraps(valid_err_log)
    def valid_err_log_with_uncertainty(valid_loss, eval_metrics, *args, **kwargs):
        suffix = format_metrics(eval_metrics)
        if suffix is None:
            return valid_err_log(valid_loss, eval_metrics, *args, **kwargs)
        root = logging.getLogger()
        line_filter = _AppendToValidationLine(suffix)
        root.addFilter(line_filter)
        try:
            return valid_err_log(valid_loss, eval_metrics, *args, **kwargs)
        finally:
            root.removeFilter(line_filter)

    valid_err_log_with_uncertainty.__eip_wrapped__ = True
    return valid_err_log_with_uncertainty


def wrap_create_error_table(create_error_table, tables_module):
    """MACE's final error table plus one column per uncertainty metric."""
    if getattr(create_error_table, "__eip_wrapped__", False):
        return create_error_table

    @functools.wraps(create_error_table)
    def create_error_table_with_uncertainty(*args, **kwargs):
        loss_fn = kwargs["loss_fn"] if "loss_fn" in kwargs else args[3]
        if not isinstance(loss_fn, EvidentialLoss):
            return create_error_table(*args, **kwargs)
        collected = []
        evaluate = tables_module.evaluate

        def collecting_evaluate(*a, **k):
            avg_loss, aux = evaluate(*a, **k)
            collected.append(aux)
            return avg_loss, aux

        tables_module.evaluate = collecting_evaluate
        try:
            table = create_error_table(*args, **kwargs)
        finally:
            tables_module.evaluate = evaluate
        if len(collected) == len(table.rows):
            for key, column in TABLE_COLUMNS.items():
                values = [aux.get(key) for aux in collected]
                table.add_column(
                    column, [f"{v:8.3f}" if isinstance(v, float) else "None" for v in values]
                )
        return table

    create_error_table_with_uncertainty.__eip_wrapped__ = True
    return create_error_table_with_uncertainty


# -- mace_eval_configs --------------------------------------------------------------------------
_PER_ATOM = (*keys.PER_ATOM_UNCERTAINTY_KEYS, keys.FORCES_FEATURE_DISTANCE)
_PER_STRUCTURE = (*keys.PER_STRUCTURE_UNCERTAINTY_KEYS, *keys.PER_STRUCTURE_DISTANCE_KEYS)


class _Collected:
    def __init__(self):
        self.per_atom = {k: [] for k in _PER_ATOM}
        self.per_structure = {k: [] for k in _PER_STRUCTURE}

    def add(self, output: dict, ptr: torch.Tensor) -> None:
        bounds = ptr.detach().cpu().numpy()
        for key, chunks in self.per_atom.items():
            values = output[key].detach().cpu().double().numpy()
            chunks.extend(values[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1))
        for key, chunks in self.per_structure.items():
            chunks.extend(output[key].detach().cpu().double().numpy().tolist())

    def __len__(self) -> int:
        return len(self.per_structure[keys.UNCERTAINTY])


_SINK: list[_Collected] = []


@contextmanager
def _collecting():
    sink = _Collected()
    _SINK.append(sink)
    try:
        yield sink
    finally:
        _SINK.remove(sink)


def wrap_get_model_output(get_model_output):
    """eval_configs' ``get_model_output``; records the uncertainty fields of each batch."""
    if getattr(get_model_output, "__eip_wrapped__", False):
        return get_model_output

    @functools.wraps(get_model_output)
    def get_model_output_with_uncertainty(model, batch, *args, **kwargs):
        output = get_model_output(model, batch, *args, **kwargs)
        if _SINK and output.get(keys.FORCES_UNCERTAINTY) is not None:
            _SINK[-1].add(output, batch["ptr"])
        return output

    get_model_output_with_uncertainty.__eip_wrapped__ = True
    return get_model_output_with_uncertainty


def wrap_eval_run(run):
    """eval_configs' ``run(args)``; afterwards adds the uncertainty fields to ``args.output``."""
    if getattr(run, "__eip_wrapped__", False):
        return run

    @functools.wraps(run)
    def run_with_uncertainty(args):
        _check_inputs(args)
        with _collecting() as collected:
            result = run(args)
        if len(collected):
            write_uncertainty(args.output, collected, getattr(args, "info_prefix", "MACE_"))
        return result

    run_with_uncertainty.__eip_wrapped__ = True
    return run_with_uncertainty


def _check_inputs(args) -> None:
    """Before eval_configs runs: a model file that cannot be loaded stops with one line; for a
    model with a head, so does a ``--configs`` file that cannot be read, has non-finite
    positions or unknown elements, and the model is evaluated in its own dtype
    (``--default_dtype`` defaults to float64, which fails deep in e3nn on a float32 model)."""
    from ..attach.labelled_data import frame_problem, read_structures
    from .calculator import has_evidential_head, load_model

    try:
        model = load_model(args.model)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"mace_eval_configs: error: {err}") from err
    if not has_evidential_head(model):
        return  # a plain model: MACE's behaviour, unchanged
    known = {int(z) for z in model.atomic_numbers}
    try:
        for i, atoms in enumerate(read_structures(args.configs)):
            problem = frame_problem(atoms, forces_key="")
            unknown = sorted(set(atoms.numbers.tolist()) - known)
            if unknown:
                names = [ase.data.chemical_symbols[z] for z in unknown]
                problem = f"contains element(s) {names} the model was not trained on"
            if problem:
                raise ValueError(f"{args.configs}: structure {i}: {problem}")
    except ValueError as err:
        raise SystemExit(f"mace_eval_configs: error: {err}") from err
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != args.default_dtype:
        logging.warning(
            f"{args.model} is a {dtype} model: evaluating it in {dtype}, not "
            f"--default_dtype={args.default_dtype}"
        )
        args.default_dtype = dtype


def write_uncertainty(path: str, collected: _Collected, prefix: str) -> None:
    """Add the collected fields to the extxyz file ``path`` written by eval_configs."""
    import ase.io

    frames = ase.io.read(path, index=":", format="extxyz")
    if len(frames) != len(collected):
        raise RuntimeError(
            f"eip-plugins: {path} has {len(frames)} structures but {len(collected)} were evaluated"
        )
    for i, atoms in enumerate(frames):
        n = len(atoms)
        for key, values in collected.per_atom.items():
            shape = (n, 9) if key.endswith("_cov") else (n,)  # 3x3 row-major
            atoms.arrays[prefix + key] = np.asarray(values[i]).reshape(shape)
        for key, values in collected.per_structure.items():
            atoms.info[prefix + key] = float(values[i])
    ase.io.write(path, frames, format="extxyz")
