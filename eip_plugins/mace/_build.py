"""Build-time helper: ship ``eip_plugins_mace_hook.pth`` into site-packages.

Used through ``[tool.setuptools.cmdclass] build_py = "eip_plugins.mace._build.build_py"`` in
``pyproject.toml``; imports setuptools only (it runs inside the isolated build environment).

- Regular wheels (``pip install .``, ``pip wheel``): the ``.pth`` is written to the root of
  ``build_lib``, so it lands at the top level of the wheel and thus in site-packages.
- Editable wheels (``pip install -e .``, PEP 660): setuptools' editable strategies do not copy
  ``build_lib``; they do pack everything under the ``install_lib`` directory of the editable
  build (the unpacked wheel), so in editable mode the ``.pth`` is written there.
"""

from __future__ import annotations

import os

from setuptools.command.build_py import build_py as _build_py

PTH_NAME = "eip_plugins_mace_hook.pth"
# A .pth line starting with "import" is executed at start-up; bootstrap() never raises.
PTH_CONTENT = "import eip_plugins.mace.hook as _eip_hook; _eip_hook.bootstrap()\n"


class build_py(_build_py):  # noqa: N801 - setuptools command naming
    """setuptools' ``build_py`` plus the MACE import-hook ``.pth`` file."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = self.get_finalized_command("install").install_lib
        else:
            target_dir = self.build_lib
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, PTH_NAME)
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(PTH_CONTENT)
        self._eip_pth = target

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs
