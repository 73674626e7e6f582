from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rgbx_fusion.data.depth import (
    LossyDepthWarning,
    SuspiciousDepthWarning,
    decode_depth,
    encode_depth_png16,
)
from rgbx_fusion.errors import CorruptFileError, DepthFormatError


@pytest.fixture()
def depth_m() -> np.ndarray:
    rng = np.random.default_rng(0)
    d = rng.uniform(0.5, 6.0, size=(24, 32)).astype(np.float32)
    d[3:6, 4:9] = 0.0  # missing pixels
    return d


def test_png16_mm_round_trip(tmp_path: Path, depth_m: np.ndarray) -> None:
    encode_depth_png16(depth_m, tmp_path / "d.png", scale=1000.0)
    out = decode_depth(tmp_path / "d.png", "png16_mm")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, depth_m, atol=0.5e-3 + 1e-6)
    assert (out[3:6, 4:9] == 0).all()


def test_png16_01mm_round_trip(tmp_path: Path, depth_m: np.ndarray) -> None:
    encode_depth_png16(depth_m, tmp_path / "d.png", scale=10000.0)
    out = decode_depth(tmp_path / "d.png", "png16_0.1mm")
    np.testing.assert_allclose(out, depth_m, atol=0.5e-4 + 1e-6)


def test_npy_round_trip(tmp_path: Path, depth_m: np.ndarray) -> None:
    np.save(tmp_path / "d.npy", depth_m)
    np.testing.assert_array_equal(decode_depth(tmp_path / "d.npy", "npy_m"), depth_m)


def test_sun_rotated_round_trip(tmp_path: Path, depth_m: np.ndarray) -> None:
    mm = np.rint(depth_m * 1000).astype(np.uint32)
    rotated = ((mm << 3) | (mm >> 13)) & 0xFFFF  # how SUN RGB-D stores its depth
    Image.fromarray(rotated.astype(np.uint16)).save(tmp_path / "d.png")
    out = decode_depth(tmp_path / "d.png", "sun_rotated")
    np.testing.assert_allclose(out, mm / 1000.0, atol=1e-6)


def test_png8_minmax_warns_lossy(tmp_path: Path) -> None:
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "d.png")
    with pytest.warns(LossyDepthWarning):
        out = decode_depth(tmp_path / "d.png", "png8_minmax")
    assert out.max() == pytest.approx(1.0)


def test_8bit_where_16bit_expected_is_an_error(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / "d.png")
    with pytest.raises(DepthFormatError, match=r"d\.png.*16-bit"):
        decode_depth(tmp_path / "d.png", "png16_mm")


def test_npy_nan_and_millimetres_are_errors(tmp_path: Path, depth_m: np.ndarray) -> None:
    bad = depth_m.copy()
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DepthFormatError, match="NaN"):
        decode_depth(tmp_path / "nan.npy", "npy_m")
    np.save(tmp_path / "mm.npy", depth_m * 1000)
    with pytest.raises(DepthFormatError, match="millimetres"):
        decode_depth(tmp_path / "mm.npy", "npy_m")


def test_corrupt_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(CorruptFileError, match=r"d\.png"):
        decode_depth(tmp_path / "d.png", "png16_mm")


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DepthFormatError, match="depth_format"):
        decode_depth(tmp_path / "d.png", "png16_cm")


def test_suspicious_depth_warns(tmp_path: Path) -> None:
    encode_depth_png16(np.zeros((4, 4), np.float32), tmp_path / "zero.png")
    with pytest.warns(SuspiciousDepthWarning, match="missing everywhere"):
        decode_depth(tmp_path / "zero.png", "png16_mm")
    encode_depth_png16(np.full((4, 4), 30.0, np.float32), tmp_path / "far.png")
    with pytest.warns(SuspiciousDepthWarning, match="30.0 m"):
        decode_depth(tmp_path / "far.png", "png16_mm")
    encode_depth_png16(np.full((4, 4), 3.0, np.float32), tmp_path / "ok.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode_depth(tmp_path / "ok.png", "png16_mm")


def test_real_nyu_depth_npy(nyu_sample: Path) -> None:
    depth = decode_depth(nyu_sample / "Depth" / "0.npy", "npy_m")
    assert depth.shape == (480, 640)
    valid = depth[depth > 0]
    assert float(valid.min()) > 0.3 and float(valid.max()) < 10.0
