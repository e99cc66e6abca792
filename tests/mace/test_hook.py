"""The lazy import hook: installed at start-up, imports nothing heavy, switchable, versioned."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from mace_helpers import cli_env, results


def _python(code: str, disable: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=cli_env(disable=disable),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_hook_installed_at_startup_without_heavy_imports():
    out = _ok(
        _python(
            """
            import sys
            print("@@", any(type(f).__name__ == "MaceHookFinder" for f in sys.meta_path))
            print("@@", sorted(m for m in ("torch", "mace", "e3nn", "numpy") if m in sys.modules))
            """
        )
    )
    assert results(out)[:2] == ["True", "[]"]


def test_hook_registers_run_train_and_eval_configs():
    out = _ok(
        _python(
            """
            import mace.cli.run_train as rt, mace.cli.eval_configs as ec, mace.tools as tools
            print("@@", rt.__eip_plugins_registered__, ec.__eip_plugins_registered__)
            args = tools.build_default_arg_parser().parse_args(
                ["--name=x", "--train_file=x.xyz", "--head=e2ip", "--eip_quantile=0.3"])
            print("@@", args.head, args.eip_quantile, args.eip_lambda)
            import eip_plugins.mace.registration as reg
            parser = tools.build_default_arg_parser
            assert reg.register(rt, source="hook") and tools.build_default_arg_parser is parser
            print("@@", "idempotent")
            """
        )
    )
    assert results(out)[:3] == ["hook hook", "e2ip 0.3 None", "idempotent"]


def test_disable_environment_variable():
    out = _ok(
        _python(
            """
            import sys
            print("@@", any(type(f).__name__ == "MaceHookFinder" for f in sys.meta_path))
            import mace.cli.run_train as rt, mace.tools as tools
            print("@@", hasattr(rt, "__eip_plugins_registered__"))
            print("@@", any("--head" == a for act in tools.build_default_arg_parser()._actions
                      for a in act.option_strings))
            """,
            disable=True,
        )
    )
    assert results(out)[:3] == ["False", "False", "False"]


def test_other_mace_version_is_refused_with_a_clear_warning():
    proc = _python(
        """
        import mace
        mace.__version__ = "0.3.99"
        import mace.cli.run_train as rt
        print("@@", hasattr(rt, "__eip_plugins_registered__"))
        """
    )
    assert results(_ok(proc))[0] == "False"
    assert "mace-torch 0.3.99 is not supported" in proc.stderr
    assert "0.3.16" in proc.stderr
