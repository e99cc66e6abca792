"""Hydra search path: ``nequip-train -cn config_with_eip`` from any folder.

Outside :mod:`eip_plugins.nequip` on purpose: Hydra imports its plugins in every Hydra
application, and this module must not import NequIP (or fail where it is absent).

``nequip-train`` looks for ``-cn NAME`` in the current folder (its ``config_path`` is the working
directory) and then along Hydra's search path. :class:`EipConfigSearchPath` appends the folder of
configs shipped inside this package, so the primary config path (the user's folder, or
``-cp "$(pwd)/my_configs"``) still wins: a user's own ``config_with_eip.yaml`` shadows ours.

Hydra finds it as the ``hydra_plugins.eip_plugins_nequip`` module (its discovery of installed
plugins; editable installs included).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

#: the folder of configs shipped with eip-plugins (``config_with_eip.yaml``)
CONFIG_DIR = Path(__file__).resolve().parent / "nequip" / "configs"
PROVIDER = "eip-plugins"


class EipConfigSearchPath(SearchPathPlugin):
    """Appends ``eip_plugins/nequip/configs`` to Hydra's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.provider == PROVIDER for element in search_path.get_path()):
            search_path.append(provider=PROVIDER, path=f"file://{CONFIG_DIR}")
