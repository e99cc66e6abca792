"""The benchmark's training-cost ratios over independent runs (issue 12): every run's epoch-time
ratio to its own plain model, their median, and the cost table's cell."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `examples` is imported from the repository root
    sys.path.insert(0, str(REPO))

from examples.benchmark import common, report  # noqa: E402


def _costs(plain: float, head: float, members=(1.0, 1.0, 1.0)) -> dict:
    row = lambda s: {"epoch_s": s, "epoch_wall_s": s, "wall_s": 10 * s, "epochs": 10}  # noqa: E731
    costs = {"plain_0": row(plain), "e2ip": row(head)}
    costs.update({f"plain_{k + 1}": row(m) for k, m in enumerate(members)})
    return costs


def test_epoch_ratios_of_every_run_and_their_median():
    runs = [_costs(2.0, 2.4), _costs(1.0, 1.5), _costs(4.0, 4.4)]
    per_run = [common.training_costs(c, ["e2ip"], 4) for c in runs]
    training = per_run[0]
    common.add_ratios_over_runs(training, per_run)
    assert training["e2ip"]["epoch_ratio_per_run"] == pytest.approx([1.2, 1.5, 1.1])
    assert training["e2ip"]["epoch_ratio_median"] == pytest.approx(1.2)
    assert training["e2ip"]["epoch_ratio_to_plain"] == pytest.approx(1.2)  # the first run's
    assert training["plain"]["epoch_ratio_per_run"] == [1.0, 1.0, 1.0]
    # the ensemble trains its 4 members: (2 + 1 + 1 + 1) / 2 in the first run
    assert training["ensemble"]["epoch_ratio_per_run"][0] == pytest.approx(2.5)
    assert report._ratio_over_runs(training["e2ip"]) == "1.20 (1.10–1.50)"
    assert report._ratio_over_runs({"epoch_ratio_to_plain": 1.234}) == "1.23"
