"""Suite-wide guard: a framework suite that collects nothing or skips anything fails the run.

``make test`` runs ``tests/core`` with ``tests/mace`` in the MACE environment and ``tests/core``
with ``tests/nequip`` in the NequIP environment. If a framework suite was requested on the command
line, it must contribute at least one test and none of its tests may be skipped: a skipped
framework suite is not a pass.
"""

from pathlib import Path

import pytest

FRAMEWORK_SUITES = ("mace", "nequip")
_HERE = Path(__file__).parent
_skipped: dict[str, list[str]] = {s: [] for s in FRAMEWORK_SUITES}
_collected: dict[str, int] = {s: 0 for s in FRAMEWORK_SUITES}


def _suite_of(path) -> str | None:
    try:
        rel = Path(path).resolve().relative_to(_HERE.resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts and rel.parts[0] in FRAMEWORK_SUITES else None


def _requested(config) -> set[str]:
    wanted = set()
    for arg in config.args:
        suite = _suite_of(str(arg).split("::")[0])
        if suite:
            wanted.add(suite)
    return wanted


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        suite = _suite_of(item.fspath)
        if suite:
            _collected[suite] += 1


def pytest_runtest_logreport(report):
    suite = _suite_of(report.fspath)
    if suite and report.skipped:
        _skipped[suite].append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if session.config.option.collectonly or session.config.getoption("-k", default=None):
        return
    problems = []
    for suite in _requested(session.config):
        if _collected[suite] == 0:
            problems.append(f"the {suite} suite collected no test")
        if _skipped[suite]:
            problems.append(
                f"the {suite} suite skipped {len(_skipped[suite])} test(s): "
                + ", ".join(_skipped[suite][:5])
            )
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for p in problems:
            if reporter:
                reporter.write_line(f"FRAMEWORK SUITE FAILURE: {p}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
