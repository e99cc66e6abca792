"""NequIP adapter: evidential force uncertainty (eIP, e2IP, MVE heads) for NequIP models.

Imported by ``import nequip`` through the ``nequip.extension`` entry point (``init_always``); the
import only registers the output fields and the ``ase_uq`` compile target, and makes
``nequip-compile`` and ``nequip-package build`` end bad input with one line
(:mod:`.compile_errors`). Everything else is
loaded on first attribute access:

- :func:`EvidentialNequIPGNNModel` -- model builder (``training_module.model._target_``);
- :func:`EvidentialAllegroModel` -- the same for ``allegro.model.AllegroModel``
  (``pip install "eip-plugins[allegro]"``);
- :func:`EvidentialHeadOnModel` -- a head on any builder's model (written by ``eip-attach``);
- :func:`EvidentialLoss` -- ``training_module.loss``;
- :func:`EvidentialMetrics` -- ``val_metrics`` / ``test_metrics``;
- :class:`NequIPUQCalculator` -- ASE calculator with uncertainties;
- :class:`UncertaintyCalibration` -- ``trainer.callbacks`` entry that fits the head's feature
  statistics and recalibration scale into the checkpoints when training ends;
- :class:`DetachedHeadClipping` -- ``trainer.callbacks`` entry: Lightning's gradient clipping
  clips a detached head apart from the model;
- :class:`OneLineErrors` -- ``hydra.callbacks`` entry: bad data files and config values end
  ``nequip-train`` with one line.
"""

import importlib

try:
    from . import _fields, compile_errors
    from .compile_targets import register as _register_compile_targets

    _fields.register()
    _register_compile_targets()
    compile_errors.install()
except ModuleNotFoundError as err:
    if (err.name or "").split(".")[0] != "nequip":
        raise
    raise ImportError(
        "eip_plugins.nequip needs NequIP, which is not installed in this environment: "
        'pip install "eip-plugins[nequip]" (nequip>=0.19,<0.20; it cannot share an environment '
        "with mace-torch, which pins e3nn 0.4.4 -- use .venv-nequip)"
    ) from err

_LAZY = {
    "EvidentialNequIPGNNModel": ".model",
    "EvidentialPresetNequIPGNNModel": ".model",
    "EvidentialAllegroModel": ".model",
    "EdgeFeatureTap": ".head_module",
    "EvidentialHeadOnModel": ".model",
    "attach_evidential_head": ".model",
    "EvidentialHeadOutput": ".head_module",
    "NodeFeatureTap": ".head_module",
    "EvidentialLoss": ".loss",
    "EvidentialMetrics": ".metrics",
    "NequIPUQCalculator": ".calculator",
    "UncertaintyCalibration": ".calibration",
    "DetachedHeadClipping": ".clipping",
    "OneLineErrors": ".hydra_errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
