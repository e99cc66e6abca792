"""UDD acceptance on the shipped demo model (MACE + e2ip trained by `make demo`'s recipe).

A 2 000-step UDD run with the default bias stays finite with a bounded temperature and reaches a
higher mean uncertainty and a higher configurational entropy than plain MD from the same start
and seed.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from eip_plugins.core.udd import UDDConfig
from eip_plugins.dynamics import MDSettings, run_md, trajectory_entropies
from eip_plugins.mace import MACEUQCalculator

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "examples" / "models" / "ethanol_e2ip.model"


@pytest.fixture(scope="module")
def md_and_udd():
    start = ase.io.read(REPO / "examples" / "data" / "ethanol_test_300K.xyz", 0)
    settings = MDSettings(steps=2000, temperature_K=300.0, record_every=10, seed=1)
    runs = {}
    for label, udd in (("MD", None), ("UDD", UDDConfig())):
        calc = MACEUQCalculator(model_paths=str(DEMO_MODEL), default_dtype="float64", udd=udd)
        runs[label] = run_md(start, calc, settings, progress=False)
    return runs


def test_udd_is_stable(md_and_udd):
    udd = md_and_udd["UDD"]
    assert udd.stable and len(udd.frames) == 201
    for column in ("energy", "temperature_K", "uncertainty", "bias_energy"):
        assert np.isfinite(udd.log[column]).all(), column
    assert udd.log["temperature_K"].max() < 3000.0
    assert np.isfinite(np.stack([f.positions for f in udd.frames])).all()
    assert (udd.log["bias_energy"] < 0).all()


def test_udd_explores_more_than_md(md_and_udd):
    md, udd = md_and_udd["MD"], md_and_udd["UDD"]
    assert udd.log["uncertainty"].mean() > md.log["uncertainty"].mean()
    s_md, s_udd = trajectory_entropies([md.frames, udd.frames])
    assert s_udd > s_md
