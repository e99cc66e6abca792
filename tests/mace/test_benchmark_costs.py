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


def test_without_distance_term_zeroes_the_distance_and_keeps_the_features():
    """The cost comparison's second model: r = 0 (evidence factor 1), the head's features and
    everything else as in the model it copies, which keeps its distances."""
    import torch

    from eip_plugins.core import FeatureStatistics, HeadConfig, build_head

    torch.manual_seed(0)
    head = build_head(HeadConfig(kind="e2ip", hidden=8), "4x0e + 2x1o").double()
    feats = torch.randn(50, head.invariants.feature_dim, dtype=torch.float64)
    stats = FeatureStatistics(1, head.density.dim)
    stats.update(head.invariants(feats), torch.zeros(50, dtype=torch.long))
    head.density.load_statistics(stats.finalize())
    model = torch.nn.Sequential(head)
    clone = common.without_distance_term(model)
    forces = torch.zeros(5, 3, dtype=torch.float64)
    new = 3.0 * feats[:5]
    params, distance_sq = model[0].forward_with_distance(new, forces)
    params_0, distance_sq_0 = clone[0].forward_with_distance(new, forces)
    assert (distance_sq > 0).all() and (distance_sq_0 == 0).all()
    assert (params.kappa < params_0.kappa).all()  # the distance lowers the evidence
    torch.testing.assert_close(params.psi, params_0.psi)


def test_finished_run_tools_make_a_relative_out_absolute(tmp_path, monkeypatch):
    """The finished-run tools run eip-calibrate / nequip-compile in the models' folders: a
    relative ``--out`` (as a user types it) must reach them as an absolute path."""
    (tmp_path / "runs" / "mace").mkdir(parents=True)
    (tmp_path / "runs" / "mace" / "results.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    parser = common.finished_run_parser("tool", "a finished-run tool")
    args = parser.parse_args(["--framework", "mace", "--out", "runs"])
    path = common.finished_run_results(parser, args)
    assert args.out == tmp_path / "runs" and args.out.is_absolute()
    assert path == tmp_path / "runs" / "mace" / "results.json"
    with pytest.raises(SystemExit):  # a run with no results: the parser's one-line error
        common.finished_run_results(
            parser, parser.parse_args(["--framework", "nequip", "--out", "runs"])
        )


def test_neighbours_table_reports_every_split_the_runs_have():
    """``examples.benchmark.neighbours``: the water box's splits beside the molecular ones (the
    neighbour distance can move them the other way), mean ± std over the runs."""
    from examples.benchmark import neighbours

    def run(shift, splits):
        metrics = {
            s: {k: 0.1 * i + shift for i, k in enumerate(neighbours.METRICS)} for s in splits
        }
        return dict.fromkeys(neighbours.labels("e2ip"), metrics)

    molecules = ["test_300K", "test_hot", "test_unseen"]
    with_water = neighbours.markdown([run(0.0, [*molecules, "water_300K", "water_hot"]),
                                      run(0.2, [*molecules, "water_300K", "water_hot"])])  # fmt: skip
    assert "spearman (300 K / 1200 K / unseen / water 300 K / water 600 K)" in with_water
    assert "0.10 ± 0.14 / 0.10 ± 0.14 / 0.10 ± 0.14 / 0.10 ± 0.14 / 0.10 ± 0.14" in with_water
    without = neighbours.markdown([run(0.0, molecules)])  # data made with --no-water
    assert "spearman (300 K / 1200 K / unseen) |" in without and "water" not in without
