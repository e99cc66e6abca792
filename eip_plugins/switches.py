"""Environment switches of eip-plugins (read at each use; no framework, no torch)."""

from __future__ import annotations

import os

DISABLE_ENV = "EIP_PLUGINS_DISABLE"  # 1: the frameworks behave exactly as without the package
FULL_ERRORS_ENV = "EIP_FULL_ERRORS"  # 1: keep the traceback behind a one-line error


def switched_on(name: str) -> bool:
    """True when the environment variable ``name`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def plugins_disabled() -> bool:
    """``EIP_PLUGINS_DISABLE`` is on."""
    return switched_on(DISABLE_ENV)
