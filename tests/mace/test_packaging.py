"""The start-up ``.pth`` file ships with regular and editable installs (setuptools backend)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from mace_helpers import REPO, cli_env

from eip_plugins.mace._build import PTH_CONTENT, PTH_NAME


def _run(cmd, cwd=REPO):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wheel_pth(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        assert PTH_NAME in zf.namelist(), zf.namelist()  # top level = site-packages
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "eip_plugins.mace.registration:register" in zf.read(entry_points).decode()
        return zf.read(PTH_NAME).decode()


def test_regular_wheel_ships_pth_and_pip_installs_it(tmp_path):
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            ".",
        ]
    )
    (wheel,) = tmp_path.glob("eip_plugins-*.whl")
    assert _wheel_pth(wheel) == PTH_CONTENT
    with zipfile.ZipFile(wheel) as zf:  # nequip-train -cn config_with_eip from any folder
        assert "eip_plugins/nequip/configs/config_with_eip.yaml" in zf.namelist()
        assert "hydra_plugins/eip_plugins_nequip/__init__.py" in zf.namelist()
        assert "hydra_plugins/__init__.py" not in zf.namelist()  # a namespace shared by plugins
    target = tmp_path / "target"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel])
    assert (target / PTH_NAME).read_text() == PTH_CONTENT


def test_editable_wheel_ships_pth(tmp_path):
    code = (
        "import sys; from setuptools import build_meta as b; "
        f"print(b.build_editable({str(tmp_path)!r}))"
    )
    name = _run([sys.executable, "-c", code]).stdout.strip().splitlines()[-1]
    wheel = tmp_path / name
    assert _wheel_pth(wheel) == PTH_CONTENT
    with zipfile.ZipFile(wheel) as zf:
        assert any(n.startswith("__editable__") for n in zf.namelist())


def test_pth_present_in_this_environment():
    site = Path(sysconfig.get_paths()["purelib"])
    assert (site / PTH_NAME).read_text() == PTH_CONTENT
