"""HHA against the reference HHA of a real NYU frame and against closed-form scenes."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from rgbx_fusion.cli import main
from rgbx_fusion.data.depth import encode_depth_png16
from rgbx_fusion.data.hha_folder import precompute_hha
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.geometry.encodings import AUX_ENCODINGS, EncodeAux
from rgbx_fusion.geometry.hha import (
    HHA,
    depth_to_hha,
    estimate_gravity,
    gravity_rotation,
    matlab_uint8,
    square_support_normals,
)
from rgbx_fusion.types import Sample

# NYU toolbox intrinsics are for MATLAB's 1-based pixels; the toolkit's K is 0-based.
NYU_K_MATLAB = ((518.8579, 0.0, 325.5824), (0.0, 519.4696, 253.7362), (0.0, 0.0, 1.0))
NYU_K = torch.tensor(NYU_K_MATLAB) - torch.tensor([[0, 0, 1.0], [0, 0, 1.0], [0, 0, 0]])


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core CI machine two threads thrash (≈10× slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _intrinsics(h: int, w: int, f: float = 60.0) -> Tensor:
    return torch.tensor([[f, 0.0, (w - 1) / 2], [0.0, f * 1.01, (h - 1) / 2], [0.0, 0.0, 1.0]])


def _room(h: int, w: int, K: Tensor, gravity: Tensor) -> tuple[Tensor, Tensor]:
    """Depth (float64, metres) of floor 1.5 m below, ceiling 0.9 m above, wall 4 m ahead.

    Returns the depth and a label map: 0 floor, 1 wall, 2 ceiling.
    """
    g = gravity.double() / gravity.double().norm()
    K = K.double()
    v, u = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    ray = torch.stack(((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)), -1)
    ahead = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ahead = (ahead - (ahead @ g) * g) / (ahead - (ahead @ g) * g).norm()
    down, fwd = ray @ g, ray @ ahead
    inf = torch.full_like(down, math.inf)
    t = torch.stack(
        (
            torch.where(down > 0, 1.5 / down, inf),
            torch.where(fwd > 0, 4.0 / fwd, inf),
            torch.where(down < 0, -0.9 / down, inf),
        )
    )
    depth, label = t.min(0)
    return depth, label


def _interior(label: Tensor, k: int, r: int) -> Tensor:
    """Pixels of class ``k`` whose (2r+1)² window holds only class ``k`` (and no border)."""
    same = (label == k).double()[None, None]
    full = torch.nn.functional.conv2d(
        same, torch.ones(1, 1, 2 * r + 1, 2 * r + 1).double(), padding=r
    )
    return full[0, 0] == (2 * r + 1) ** 2


GRAVITY = torch.tensor(
    [math.sin(math.radians(6)), math.cos(math.radians(20)), math.sin(math.radians(20))]
)


def test_tilted_camera_room_exact_hha() -> None:
    h, w = 90, 120
    K = _intrinsics(h, w)
    depth, label = _room(h, w, K, GRAVITY)
    g = GRAVITY.double() / GRAVITY.double().norm()
    est = estimate_gravity(square_support_normals(depth, K, 10))[0].double()
    # Normals straddling plane junctions bias the estimate slightly (0.36° here, 0.07° at
    # 240×320): the reference algorithm does the same.
    assert math.degrees(math.acos(min(1.0, float(est @ g)))) < 1.0
    hha = depth_to_hha(depth.float(), K)[0].long()
    # Height: -(g·P) in cm above the lowest point (below -90 cm, so no -130 cm fallback).
    v, u = torch.meshgrid(torch.arange(h).double(), torch.arange(w).double(), indexing="ij")
    ray = torch.stack(((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)), -1)
    height = -(ray * depth[..., None] * 100) @ est
    height = height - height.min()
    assert (hha[1] - height.round().clamp(0, 255)).abs().max() <= 1
    true_height = -(ray * depth[..., None] * 100) @ g + 150.0
    assert (hha[1] - true_height.clamp(0, 255)).abs().max() <= 4  # 0.36° over 4 m ≈ 2.5 cm
    wall = label == 1
    order = torch.argsort(true_height[wall])
    deciles = torch.stack([c.double().mean() for c in hha[1][wall][order].chunk(10)])
    assert bool((deciles.diff() > 5).all())  # grows with height
    disparity = (31000 / (depth * 100).clamp_min(100)).round().clamp(max=255)
    assert (hha[0] - disparity).abs().max() <= 1
    # Angle: floor normals along gravity (0° → 38), wall 90° → 128, ceiling 180° → 218.
    for k, code in ((0, 38), (1, 128), (2, 218)):
        inside = _interior(label, k, 3)
        assert inside.sum() > 50
        assert (hha[2][inside] - code).abs().max() <= 1, k


def test_normals_equal_direct_normal_equations() -> None:
    """The local-offset solve equals the reference ``adj(AᵀA) Aᵀb`` in global coordinates."""
    h, w, r = 9, 11, 2
    K = _intrinsics(h, w, 8.0).double()
    depth = 1.0 + torch.rand(h, w, dtype=torch.float64)
    depth[4, 5] = 0.0
    ours = square_support_normals(depth, K, r, dtype=torch.float64)[0]
    for i in range(h):
        for j in range(w):
            ata, atb = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            for y in range(max(0, i - r), min(h, i + r + 1)):
                for x in range(max(0, j - r), min(w, j + r + 1)):
                    if depth[y, x] > 0:
                        row = torch.stack(
                            ((x - K[0, 2]) / K[0, 0], (y - K[1, 2]) / K[1, 1], K[2, 2])
                        )
                        ata += torch.outer(row, row)
                        atb += row / (100 * depth[y, x])
            n = torch.linalg.solve(ata, atb)
            ray = torch.stack(((j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], K[2, 2]))
            n = n / n.norm() * (1 if n @ ray * depth[i, j] >= 0 else -1)
            if depth[i, j] == 0:
                n = n * (1 if n[2] >= 0 else -1)
            torch.testing.assert_close(ours[:, i, j], n, rtol=0, atol=1e-9)


def assert_same_hha(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal 8-bit HHA, but for float32 rounding across code paths: the summation order of
    a batched or strip-wise fit depends on the CPU's vector width, which can move a value
    across a quantisation step (one level, on at most 0.1 % of the pixels)."""
    diff = (actual.int() - expected.int()).abs()
    assert int(diff.max()) <= 1, int(diff.max())
    assert int((diff > 0).sum()) <= max(1, diff.numel() // 1000), int((diff > 0).sum())


def test_batched_equals_single_and_module() -> None:
    K1, K2 = _intrinsics(40, 56), _intrinsics(40, 56, 70.0)
    d1, _ = _room(40, 56, K1, GRAVITY)
    d2, _ = _room(40, 56, K2, torch.tensor([0.0, 1.0, 0.3]))
    d2[10:20, 10:30] = 0.0
    batch = depth_to_hha(torch.stack((d1, d2)).float(), torch.stack((K1, K2)))
    assert batch.shape == (2, 3, 40, 56) and batch.dtype == torch.uint8
    assert_same_hha(batch[0], depth_to_hha(d1.float(), K1)[0])
    assert_same_hha(batch[1], depth_to_hha(d2.float(), K2)[0])
    assert torch.equal(HHA(K1)(d1.float()), depth_to_hha(d1.float(), K1))


def test_missing_depth_follows_reference() -> None:
    depth = torch.full((40, 50), 2.0)
    depth[10:30, 15:35] = 0.0  # holes wider than the 7×7 support: no normal there
    hha = depth_to_hha(depth, _intrinsics(40, 50))[0]
    assert int(hha[0, 20, 25]) == 255  # 31000 / max(0, 100) = 310 → saturated
    assert int(hha[2, 20, 25]) == 218  # NaN normal → 180° → 180 + 38
    hole_filled = depth.clone()
    hole_filled[10:30, 15:35] = 2.0
    a = depth_to_hha(hole_filled, _intrinsics(40, 50), missing=depth == 0)[0]
    assert int(a[0, 20, 25]) == 155 and int(a[2, 20, 25]) == 218


def test_matlab_uint8_and_rotation() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 254.5, 255.5, float("nan"), float("inf"), -3.0, 7.49])
    assert matlab_uint8(x).tolist() == [1, 2, 3, 0, 255, 255, 0, 255, 0, 7]
    g = torch.nn.functional.normalize(torch.tensor([[0.2, 0.9, -0.3]]), dim=-1)
    rot = gravity_rotation(g)
    torch.testing.assert_close(rot[0] @ torch.tensor([0.0, 1.0, 0.0]), g[0])
    torch.testing.assert_close(rot[0] @ rot[0].T, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.equal(gravity_rotation(torch.tensor([[1e-4, 1.0, 0.0]])), torch.eye(3)[None])


def _jpeg(arr: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)  # the reference file's settings
    return np.asarray(Image.open(buf)).astype(np.float32)


def test_real_nyu_frame_matches_reference_hha(nyu_sample: Path) -> None:
    """Per-channel mean |ours − reference| on the real frame, in grey levels.

    The reference ``HHA/0.jpg`` is a quality-95, 4:2:0 JPEG of the MATLAB output, channels
    (R, G, B) = (disparity, height, angle). Measured: raw MAD 0.86 / 0.56 / 2.59; JPEG alone
    costs about as much (ours vs JPEG(ours): 0.87 / 0.56 / 2.75: the angle channel carries
    fine texture and sits mostly in the subsampled chroma). After putting ours through the
    same JPEG: 0.31 / 0.33 / 1.18. What is left is plausibly the reference's raw-depth
    missing mask, which the sample does not ship. Thresholds = measured + small margin.
    """
    depth = torch.from_numpy(np.load(nyu_sample / "Depth" / "0.npy"))
    ref = np.asarray(Image.open(nyu_sample / "HHA" / "0.jpg")).astype(np.float32)
    ours = depth_to_hha(depth, NYU_K)[0].permute(1, 2, 0).numpy()
    raw_mad = np.abs(ours.astype(np.float32) - ref).mean((0, 1))
    jpeg_mad = np.abs(_jpeg(ours) - ref).mean((0, 1))
    assert (raw_mad <= [1.0, 0.7, 2.8]).all(), raw_mad
    assert (jpeg_mad <= [0.45, 0.45, 1.35]).all(), jpeg_mad


def test_encodings_and_transform() -> None:
    depth = torch.full((1, 1, 24, 32), 2.0)
    depth[..., :4, :4] = 0.0
    K = _intrinsics(24, 32)
    for name, enc in AUX_ENCODINGS.items():
        out = enc.fn(depth, K)
        assert out.shape == (1, enc.channels, 24, 32), name
        assert bool((out[..., :4, :4] == 0).all()), name
    sample = Sample(
        rgb=np.zeros((24, 32, 3), np.uint8),
        aux=depth[0].permute(1, 2, 0).numpy(),
        mask=np.zeros((24, 32), np.int64),
        meta={"name": "a", "K": K.tolist()},
    )
    encoded = EncodeAux("hha")(sample)["aux"]
    assert encoded.shape == (24, 32, 3) and encoded.dtype == np.float32
    assert encoded.min() >= 0.0 and encoded.max() <= 1.0
    with pytest.raises(ConfigError):
        EncodeAux("hha")(Sample(**{**sample, "meta": {"name": "a"}}))
    with pytest.raises(ConfigError):
        EncodeAux("nope")


def test_hha_command_writes_and_resumes(tmp_path: Path) -> None:
    K = _intrinsics(30, 40)
    (tmp_path / "depth").mkdir()
    for i in range(3):
        encode_depth_png16(np.full((30, 40), 1.0 + i, np.float32), tmp_path / "depth" / f"{i}.png")
    (tmp_path / "dataset.json").write_text(
        json.dumps({"depth_format": "png16_mm", "K": K.tolist()})
    )
    with pytest.raises(SystemExit) as exc:
        main(["hha", "--root", str(tmp_path), "--no-progress"])
    assert exc.value.code == 0
    out = np.asarray(Image.open(tmp_path / "hha" / "1.png"))
    expected = depth_to_hha(torch.full((30, 40), 2.0), K)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, expected)
    again = precompute_hha(tmp_path, progress=False)
    assert (again.written, again.skipped) == (0, 3)
    with pytest.raises(ConfigError):
        precompute_hha(tmp_path, out_dir="other", K=[[1.0]], progress=False)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    K = _intrinsics(60, 80)
    depth, _ = _room(60, 80, K, GRAVITY)
    cpu = depth_to_hha(depth.float(), K)
    cuda = depth_to_hha(depth.float().cuda(), K.cuda()).cpu()
    assert (cpu.int() - cuda.int()).abs().max() <= 1
    assert (cpu != cuda).float().mean() < 1e-3


@pytest.mark.slow
def test_hha_command_worker_processes(tmp_path: Path) -> None:
    K = _intrinsics(20, 24)
    (tmp_path / "depth").mkdir()
    for i in range(4):
        np.save(tmp_path / "depth" / f"{i}.npy", np.full((20, 24), 1.0 + i, np.float32))
    report = precompute_hha(tmp_path, workers=2, depth_format="npy_m", K=K.tolist(), progress=False)
    assert report.written == 4 and len(list((tmp_path / "hha").glob("*.png"))) == 4


def _plain_gravity(normals: Tensor) -> Tensor:
    """The reference ``getYDir`` loop: every pixel re-classified at every iteration, float64."""
    n = normals.flatten(1).double()
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    for angle, count in ((45.0, 5), (15.0, 5)):
        cos_t, sin_t = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        for _ in range(count):
            sim = (y @ n).abs()
            w = (sim < sin_t).double() - (sim > cos_t).double()
            new = torch.linalg.eigh((n * w) @ n.T)[1][:, 0]
            y = new if float(new @ y) >= 0 else -new
    return y


@pytest.mark.parametrize("tilt", [(0.0, 1.0, 0.0), (0.1, 0.9, 0.4), (-0.3, 0.8, -0.2)])
def test_banded_gravity_equals_plain_iterations(tilt: tuple[float, float, float]) -> None:
    """Candidates-only re-classification gives the estimate of the full reference loop."""
    K = _intrinsics(120, 160)
    depth, _ = _room(120, 160, K, torch.tensor(tilt))
    depth = depth * (
        1 + 0.01 * torch.randn(depth.shape, generator=torch.Generator().manual_seed(0))
    )
    normals = square_support_normals(depth.float(), K, 10)
    ours = estimate_gravity(normals)[0].double()
    torch.testing.assert_close(ours, _plain_gravity(normals[0]), atol=1e-6, rtol=0)


def test_hole_free_shortcut_and_strips_do_not_change_hha(monkeypatch: pytest.MonkeyPatch) -> None:
    """Profile-based mask moments (no missing depth) and the strip size leave HHA unchanged."""
    import rgbx_fusion.geometry.plane_fit as hha_module

    K = _intrinsics(90, 120)
    depth, _ = _room(90, 120, K, GRAVITY)
    depth = depth.float()
    holes = depth.clone()
    holes[40:44, 50:60] = 0.0  # one strip takes the general path
    fast = [depth_to_hha(d, K) for d in (depth, holes)]
    normals = square_support_normals(depth, K, 10)
    monkeypatch.setattr(hha_module, "_all_valid", lambda mask: False)
    # unit normals in float32; the two paths sum the window moments in different orders
    torch.testing.assert_close(square_support_normals(depth, K, 10), normals, atol=1e-5, rtol=0)
    for strip_pixels in (hha_module.STRIP_PIXELS, 1 << 30, 120 * 7):  # default, one, 7 rows
        monkeypatch.setattr(hha_module, "STRIP_PIXELS", strip_pixels)
        for d, expected in zip((depth, holes), fast, strict=True):
            assert torch.equal(depth_to_hha(d, K), expected)
