"""``patches/mace-plugins-0.3.16.diff``: applies cleanly to the installed MACE, and the plugin then
registers through the ``mace.plugins`` entry point (the import hook stands aside)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import mace
import pytest
from mace_helpers import REPO, cli_env, results

PATCH = REPO / "patches" / "mace-plugins-0.3.16.diff"


@pytest.fixture(scope="module")
def patched_mace(tmp_path_factory):
    """A copy of the installed mace package with the patch applied (``git apply``)."""
    assert mace.__version__ == "0.3.16"
    root = tmp_path_factory.mktemp("patched")
    shutil.copytree(
        next(iter(mace.__path__)), root / "mace", ignore=shutil.ignore_patterns("__pycache__")
    )
    for args in (["--check"], []):
        proc = subprocess.run(
            ["git", "apply", *args, "-p1", "--whitespace=nowarn", str(PATCH)],
            cwd=root,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    return root


def _python(code, root, disable=False):
    env = cli_env(disable=disable, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_patch_applies_cleanly(patched_mace):
    plugins = patched_mace / "mace" / "tools" / "plugins.py"
    assert plugins.is_file()
    for script in ("run_train.py", "eval_configs.py"):
        text = (patched_mace / "mace" / "cli" / script).read_text()
        assert "load_plugins(sys.modules[__name__])" in text


def test_plugin_registers_through_entry_point(patched_mace):
    proc = _python(
        f"""
        import mace, mace.cli.run_train as rt, mace.cli.eval_configs as ec
        print("@@", mace.__file__.startswith({str(patched_mace)!r}))
        print("@@", rt.__eip_plugins_registered__, ec.__eip_plugins_registered__)
        """,
        patched_mace,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(proc.stdout)[:2] == ["True", "entry_point entry_point"]


def test_disable_switch_also_applies_to_entry_point(patched_mace):
    proc = _python(
        """
        import mace.cli.run_train as rt
        print("@@", hasattr(rt, "__eip_plugins_registered__"))
        """,
        patched_mace,
        disable=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert results(proc.stdout)[0] == "False"


@pytest.mark.slow
def test_training_setup_through_patched_mace(patched_mace, data, tmp_path):
    """``mace_run_train --head=e2ip --dry_run`` builds loss, model and optimizer via the patch."""
    argv = [
        "mace_run_train",
        "--name=patched",
        f"--train_file={data['tiny_train']}",
        f"--valid_file={data['tiny_valid']}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        "--E0s=average",
        "--model=MACE",
        "--hidden_irreps=8x0e+8x1o",
        "--r_max=4.0",
        "--max_ell=1",
        "--batch_size=5",
        "--device=cpu",
        "--head=e2ip",
        "--dry_run",
        f"--log_dir={tmp_path}",
    ]
    proc = _python(
        f"""
        import sys
        import mace.cli.run_train as rt
        assert rt.__eip_plugins_registered__ == "entry_point"
        sys.argv = {argv!r}
        rt.main()
        """,
        patched_mace,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "patched_run-123.log").read_text()
    assert "eip head e2ip reads MACE node features" in log
    assert "EvidentialLoss(head=e2ip" in log
    assert "DRY RUN mode enabled" in log
