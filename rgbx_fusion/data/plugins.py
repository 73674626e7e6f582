"""Dataset discovery: the built-in readers plus classes registered by installed packages.

A third-party package makes its dataset known by declaring an entry point in
the group ``rgbx_fusion.datasets``, e.g. in its ``pyproject.toml``::

    [project.entry-points."rgbx_fusion.datasets"]
    my_rooms = "my_package.rooms:MyRooms"

The class must follow the dataset contract (first constructor parameter
``split``, items are :class:`~rgbx_fusion.types.Sample`). Configs name it by
``class_path`` like any other dataset; the registry is for listings.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

ENTRY_POINT_GROUP = "rgbx_fusion.datasets"


class PluginWarning(UserWarning):
    """A dataset entry point could not be loaded or is not a dataset class."""


def builtin_datasets() -> dict[str, type[Any]]:
    """Name → class of the readers shipped with rgbx-fusion."""
    from rgbx_fusion.data.sets.folder import FolderRGBX
    from rgbx_fusion.data.sets.images import ImageFolderRGBX
    from rgbx_fusion.data.sets.mfnet import MFNet
    from rgbx_fusion.data.sets.nyudv2 import NYUDv2
    from rgbx_fusion.data.sets.pst900 import PST900
    from rgbx_fusion.data.sets.sunrgbd import SUNRGBD
    from rgbx_fusion.data.sets.synthetic import SyntheticRGBX

    return {
        "folder": FolderRGBX,
        "synthetic": SyntheticRGBX,
        "nyudv2": NYUDv2,
        "sunrgbd": SUNRGBD,
        "mfnet": MFNet,
        "pst900": PST900,
        "images": ImageFolderRGBX,
    }


def _load(entry: EntryPoint) -> type[Any] | None:
    where = f"entry point {entry.name!r} = {entry.value!r} (group {ENTRY_POINT_GROUP!r})"
    try:
        obj = entry.load()
    except Exception as exc:  # a broken plugin must not break the toolkit
        warnings.warn(f"{where} failed to load: {exc!r}", PluginWarning, stacklevel=3)
        return None
    if not isinstance(obj, type):
        warnings.warn(
            f"{where} is a {type(obj).__name__}, not a dataset class", PluginWarning, stacklevel=3
        )
        return None
    return obj


def dataset_registry() -> dict[str, type[Any]]:
    """Name → dataset class: the built-ins, then every loadable entry point.

    A plugin that fails to import, or names something other than a class,
    is skipped with a :class:`PluginWarning` naming the entry point. A plugin
    cannot take a name already taken (warned too).

    >>> sorted(dataset_registry())[:3]
    ['folder', 'mfnet', 'nyudv2']
    """
    builtins = builtin_datasets()
    registry = dict(builtins)
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if entry.name in registry:
            owner = "a built-in dataset" if entry.name in builtins else "another plugin"
            warnings.warn(
                f"entry point {entry.name!r} = {entry.value!r} (group {ENTRY_POINT_GROUP!r}) "
                f"uses the name of {owner} and is ignored",
                PluginWarning,
                stacklevel=2,
            )
            continue
        cls = _load(entry)
        if cls is not None:
            registry[entry.name] = cls
    return registry
