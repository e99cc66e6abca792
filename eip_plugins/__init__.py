"""eip-plugins: single-model evidential force uncertainty (eIP, e2IP) for MACE and NequIP.

The framework-agnostic maths lives in :mod:`eip_plugins.core`; :mod:`eip_plugins.mace` and
:mod:`eip_plugins.nequip` translate it into each framework. Importing this package imports
neither framework.
"""

__version__ = "0.1.0"
