"""rgbx-fusion: RGB-X semantic segmentation with explicit alignment and fusion.

The public surface is small on purpose: models live in :mod:`rgbx_fusion.models`,
data in :mod:`rgbx_fusion.data`, training in :mod:`rgbx_fusion.tasks` and the
command line in :mod:`rgbx_fusion.cli`. :func:`load_model` (from
:mod:`rgbx_fusion.inference`) runs any checkpoint without the CLI.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("rgbx-fusion")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    # torch and timm load only when the model API is used, not on `import rgbx_fusion`.
    if name == "load_model":
        from rgbx_fusion.inference import load_model

        return load_model
    raise AttributeError(f"module 'rgbx_fusion' has no attribute {name!r}")
