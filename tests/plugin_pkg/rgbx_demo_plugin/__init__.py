"""A third-party dataset plugin: rooms exported in the generic folder layout.

The class fixes what a real plugin would know about its data (class names,
depth encoding) so that a config only needs ``class_path`` and ``root``.
"""

from __future__ import annotations

from pathlib import Path

from rgbx_fusion.data.sets.folder import FolderRGBX

CLASSES = (
    "floor",
    "wall",
    "cabinet",
    "panel",
    "poster",
    "niche",
    "cushion_red",
    "cushion_green",
)


class DemoRooms(FolderRGBX):
    """RGB-D rooms: ``rgb/``, ``depth/`` (uint16 mm), ``labels/`` and ``splits/``.

    Args:
        split: split name (``train``, ``val``, ``test``).
        root: dataset root.
    """

    def __init__(self, split: str = "train", root: str | Path = "datasets/demo_rooms") -> None:
        super().__init__(
            split=split, root=root, modality="depth", depth_format="png16_mm", classes=CLASSES
        )
