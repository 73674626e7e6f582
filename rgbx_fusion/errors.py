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


class WeightsMismatchError(CheckpointError):
    """A weights file does not have exactly the keys and shapes of the model it is meant for.

    Attributes:
        missing: keys the model needs that the file lacks.
        unexpected: keys of the file the model has no place for.
        shapes: ``"key: expected (...), found (...)"`` for tensors of the wrong shape.
    """

    def __init__(
        self,
        what: str,
        missing: list[str],
        unexpected: list[str],
        shapes: list[str] | None = None,
        limit: int = 20,
    ) -> None:
        self.missing, self.unexpected, self.shapes = missing, unexpected, list(shapes or [])

        def listing(title: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
            body = "\n".join(f"    {k}" for k in items[:limit])
            return f"\n  {title} ({len(items)}):\n{body}{more}"

        super().__init__(
            f"{what} do not match the model; nothing was loaded."
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("wrong shapes", self.shapes)
            + "\n  Check the variant (--variant / the backbone name) and that the file is "
            "the one you meant."
        )


class ExportError(RGBXError, RuntimeError):
    """A network part cannot be exported, or the exported graph disagrees with PyTorch."""


class NonFiniteError(RGBXError, FloatingPointError):
    """A training loss or gradient became NaN or infinite (``model.nonfinite: stop``)."""


class DeviceMemoryError(RGBXError, RuntimeError):
    """The accelerator ran out of memory; the message suggests smaller settings."""
