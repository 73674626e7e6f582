"""Typed exceptions.

Every error says what was expected, what was found (file, shape, dtype, value
range) and, where there is one, how to fix it. Catch :class:`RGBXError` to
handle all of them.
"""

from __future__ import annotations

from pathlib import Path


class RGBXError(Exception):
    """Base class of every error raised on purpose by rgbx-fusion."""


class ConfigError(RGBXError, ValueError):
    """A configuration value or a combination of values cannot work."""


class DatasetError(RGBXError):
    """A dataset on disk does not match the layout it was declared to have."""

    def __init__(
        self,
        path: str | Path | None,
        expected: str | None = None,
        found: str | None = None,
        fix: str = "",
    ) -> None:
        if expected is None and found is None:
            # A single ready-made message: lets DataLoader workers re-raise the same type.
            self.path, self.expected, self.found, self.fix = None, "", "", ""
            super().__init__(str(path))
            return
        self.path = None if path is None else Path(path)
        self.expected = expected or ""
        self.found = found or ""
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        msg = f"{where}expected {expected}, found {found}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class MissingFileError(DatasetError, FileNotFoundError):
    """A split file, or a file listed in one, does not exist."""


class CorruptFileError(DatasetError):
    """A file exists but cannot be decoded (truncated, wrong format, ...)."""


class ShapeMismatchError(DatasetError):
    """Images of one sample do not share the same height and width."""


class LabelRangeError(DatasetError):
    """A label map holds values outside ``[0, num_classes) ∪ {ignore_index}``."""


class DepthFormatError(DatasetError):
    """Depth values contradict the declared on-disk depth encoding."""


class OfflineWeightsError(RGBXError, RuntimeError):
    """Pretrained weights were requested but cannot be downloaded here."""


class CheckpointError(RGBXError, RuntimeError):
    """A checkpoint does not fit the model it is loaded into."""
