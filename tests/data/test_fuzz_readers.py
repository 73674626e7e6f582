"""Fuzzed readers: broken files give the toolkit's typed errors, never a crash or a hang.

Hypothesis feeds every file reader random bytes, truncated valid files and
valid files of the wrong dtype / shape / channel count; the dataset layouts
(NYUDv2, SUN RGB-D, MFNet, PST900, folder) get corrupted rgb and label files,
read directly and through a DataLoader worker. Whatever a reader does not
reject must come back with the promised type. Example counts are kept small
(see ``EXAMPLES``): the suite tries ``len(READERS) * 3 * EXAMPLES`` file cases
plus ``len(LAYOUTS) * 2 * LAYOUT_EXAMPLES`` dataset cases.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_silent_corruptions import LAYOUTS as PAIRED_LAYOUTS

from rgbx_fusion.data.depth import DECODERS, decode_depth
from rgbx_fusion.data.sets.folder import (
    FolderRGBX,
    read_json_object,
    read_label,
    read_rgb,
    read_split,
    read_thermal,
)
from rgbx_fusion.data.sets.paired import (
    read_depth,
    read_unit_image,
    read_void_zero_label,
    split_names,
)
from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic
from rgbx_fusion.errors import RGBXError

EXAMPLES = 20
LAYOUT_EXAMPLES = 10
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _is_image(out: Any, ndim: int, dtype: Any) -> bool:
    return isinstance(out, np.ndarray) and out.ndim == ndim and out.dtype == dtype


# name → (file suffix, reader, check of a successful result)
READERS: dict[str, tuple[str, Callable[[Path], Any], Callable[[Any], bool]]] = {
    **{
        f"depth:{fmt}": (
            ".npy" if fmt == "npy_m" else ".png",
            lambda p, fmt=fmt: decode_depth(p, fmt),
            lambda out: _is_image(out, 2, np.float32) and bool(np.isfinite(out).all()),
        )
        for fmt in DECODERS
    },
    "paired_depth:png16_mm": (
        ".png",
        lambda p: read_depth(p, "png16_mm"),
        lambda out: _is_image(out, 2, np.float32),
    ),
    "rgb": (".png", read_rgb, lambda out: _is_image(out, 3, np.uint8) and out.shape[2] == 3),
    "rgb:jpg": (".jpg", read_rgb, lambda out: _is_image(out, 3, np.uint8)),
    "label": (".png", lambda p: read_label(p, 8, 255), lambda out: _is_image(out, 2, np.int64)),
    "label:void_zero": (
        ".png",
        lambda p: read_void_zero_label(p, 40),
        lambda out: _is_image(out, 2, np.int64),
    ),
    "thermal": (".png", read_thermal, lambda out: _is_image(out, 2, np.float32)),
    "hha": (".png", lambda p: read_unit_image(p, 3), lambda out: _is_image(out, 3, np.float32)),
    "json": (".json", read_json_object, lambda out: isinstance(out, dict)),
    "split": (".txt", read_split, lambda out: isinstance(out, list) and len(out) > 0),
    "split:paired": (".txt", split_names, lambda out: all(isinstance(n, str) for n in out)),
}


def _check(name: str, path: Path) -> None:
    """Run reader ``name`` on ``path``: a typed error or a result of the promised type."""
    _, read, ok = READERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lossy / suspicious-depth warnings are fine
        try:
            out = read(path)
        except RGBXError:
            return
    assert ok(out), f"{name} returned {type(out).__name__} {getattr(out, 'shape', out)!r}"


# ---- file contents ------------------------------------------------------------------------
PNG_MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]  # what PNG stores


@st.composite
def valid_files(draw: st.DrawFn, suffix: str) -> bytes:
    """A well-formed file of a random dtype, shape and channel count for ``suffix``."""
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if suffix == ".npy":
        dtype = draw(st.sampled_from(["uint8", "uint16", "int32", "float32", "float64", "bool"]))
        shape = draw(st.sampled_from([(h, w), (h, w, 1), (h, w, 3), (h,), (h, w, 2, 1)]))
        arr = (rng.random(shape) * draw(st.sampled_from([1.0, 10.0, 5000.0]))).astype(dtype)
        if draw(st.booleans()) and arr.dtype.kind == "f":
            arr.flat[0] = draw(st.sampled_from([np.nan, np.inf, -1.0]))
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()
    if suffix in (".json", ".txt"):
        value = draw(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                ),
                max_leaves=6,
            )
        )
        import json

        return json.dumps(value).encode() if suffix == ".json" else str(value).encode()
    mode = draw(st.sampled_from(PNG_MODES if suffix == ".png" else ["L", "RGB"]))
    if mode == "I;16":
        image = Image.fromarray((rng.random((h, w)) * 65535).astype(np.uint16))
    else:
        image = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="JPEG" if suffix == ".jpg" else "PNG")
    return buf.getvalue()


def _write(tmp_path: Path, suffix: str, data: bytes) -> Path:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", READERS)
@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(name: str, data: bytes, tmp_path: Path) -> None:
    _check(name, _write(tmp_path, READERS[name][0], data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", READERS)
@FUZZ
@given(data=st.data())
def test_truncated_files(name: str, data: st.DataObject, tmp_path: Path) -> None:
    whole = data.draw(valid_files(READERS[name][0]))
    cut = data.draw(st.integers(0, max(0, len(whole) - 1)))
    _check(name, _write(tmp_path, READERS[name][0], whole[:cut]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", READERS)
@FUZZ
@given(data=st.data())
def test_wrong_dtypes_and_shapes(name: str, data: st.DataObject, tmp_path: Path) -> None:
    _check(name, _write(tmp_path, READERS[name][0], data.draw(valid_files(READERS[name][0]))))


# ---- whole datasets -----------------------------------------------------------------------
def _write_folder(root: Path) -> Path:
    return prepare_synthetic(
        root,
        SyntheticSpec(num_train=2, num_val=1, num_test=1, height=24, width=32),
        workers=1,
        progress=False,
    )


def _first_train(root: Path) -> str:
    return (root / "splits" / "train.txt").read_text().split()[0]


LAYOUTS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any], dict[str, Any]]] = {
    name: (write, lambda r, read=read: read(r), {"rgb": rgb, "label": label})
    for name, (write, read, rgb, label) in PAIRED_LAYOUTS.items()
}
LAYOUTS["folder"] = (
    _write_folder,
    lambda r: FolderRGBX("train", r)[0],
    {
        "rgb": lambda r: r / "rgb" / f"{_first_train(r)}.png",
        "label": lambda r: r / "labels" / f"{_first_train(r)}.png",
    },
)


@pytest.fixture(scope="module")
def layout_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: write(tmp_path_factory.mktemp(name)) for name, (write, _, _) in LAYOUTS.items()}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("role", ["rgb", "label"])
@pytest.mark.parametrize("name", LAYOUTS)
@settings(FUZZ, max_examples=LAYOUT_EXAMPLES)
@given(data=st.data())
def test_dataset_with_a_broken_file(
    name: str, role: str, data: st.DataObject, layout_roots: dict[str, Path]
) -> None:
    _, read, paths = LAYOUTS[name]
    root = layout_roots[name]
    path = paths[role](root)
    original = path.read_bytes()
    broken = data.draw(
        st.one_of(
            st.binary(max_size=256),
            st.integers(0, len(original) - 1).map(lambda n: original[:n]),
            valid_files(path.suffix.lower() if path.suffix.lower() != ".jpeg" else ".jpg"),
        )
    )
    try:
        path.write_bytes(broken)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                sample = read(root)
            except RGBXError:
                return
        assert sample["rgb"].dtype == np.uint8 and sample["rgb"].shape[2] == 3
        assert sample["mask"].dtype == np.int64
        assert sample["mask"].shape == sample["rgb"].shape[:2] == sample["aux"].shape[:2]
    finally:
        path.write_bytes(original)


@pytest.mark.timeout(60)
def test_broken_file_in_a_loader_worker_raises_the_typed_error(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "folder")
    rgb = root / "rgb" / f"{_first_train(root)}.png"
    rgb.write_bytes(rgb.read_bytes()[:40])  # truncated
    dataset = FolderRGBX("train", root)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=1, timeout=30, collate_fn=lambda b: b
    )
    with pytest.raises(RGBXError, match=rgb.name):
        for _ in loader:
            pass
