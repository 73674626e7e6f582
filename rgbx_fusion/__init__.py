"""rgbx-fusion: RGB-X semantic segmentation with explicit alignment and fusion.

The public surface is small on purpose: models live in :mod:`rgbx_fusion.models`,
data in :mod:`rgbx_fusion.data`, training in :mod:`rgbx_fusion.tasks` and the
command line in :mod:`rgbx_fusion.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rgbx-fusion")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
