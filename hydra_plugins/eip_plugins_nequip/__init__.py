"""Hydra plugin of eip-plugins: the configs shipped with the NequIP adapter on the search path
(``nequip-train -cn config_with_eip`` from any folder). See
:mod:`eip_plugins.hydra_search_path`."""

from eip_plugins.hydra_search_path import EipConfigSearchPath

__all__ = ["EipConfigSearchPath"]
