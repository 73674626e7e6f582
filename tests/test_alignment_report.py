"""Alignment report: images of what the aligners did, and ``predict --dump_alignment``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_overrides import run_stage, small_cli_args
from PIL import Image

from rgbx_fusion.alignment_report import (
    alignment_misfit,
    endpoint_error,
    flow_from_matrix,
    flow_to_color,
    write_alignment_images,
)
from rgbx_fusion.experiment import build
from rgbx_fusion.models.align import ALIGNERS, AffineAlign, DeformableAlign, FlowAlign
from rgbx_fusion.models.align.flow import warp_by_flow

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _scene(h: int = 64, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random rectangles: each region has a colour and an unrelated depth (two modalities)."""
    rng = np.random.default_rng(seed)
    regions = np.zeros((h, w), np.int64)
    for k in range(1, 12):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        regions[y : y + rng.integers(8, 28), x : x + rng.integers(8, 32)] = k
    colours = rng.integers(0, 256, (12, 3)).astype(np.uint8)
    depths = rng.uniform(1.0, 5.0, 12).astype(np.float32)
    return colours[regions], depths[regions]


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``out(x, y) = image(x - dx, y - dy)``, zero where that falls outside."""
    h, w = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def test_known_shift_images_and_misfit_drops(tmp_path: Path) -> None:
    h, w, dx, dy = 64, 80, 5, -3
    rgb, depth = _scene(h, w)
    aux = _shift(depth, dx, dy)[None]  # aux(p) = depth(p - s): the aligner must sample at p + s
    align = AffineAlign(mode="free")
    align.set_matrix(torch.tensor([[1, 0, 2 * dx / w], [0, 1, 2 * dy / h], [0, 0, 1.0]]))
    _, after = align(torch.zeros(1, 3, h, w), torch.from_numpy(aux)[None])
    flow = align.last_displacement()
    assert flow is not None and flow.shape == (1, 2, h, w)
    torch.testing.assert_close(flow[0, :, h // 2, w // 2], torch.tensor([dx, dy], dtype=flow.dtype))

    stats = write_alignment_images(
        tmp_path, "s", rgb, aux, after[0].detach().numpy(), flow[0].numpy()
    )
    for kind in ("checker", "overlay", "flow"):
        assert (tmp_path / f"s_{kind}.png").is_file()
    checker = np.asarray(Image.open(tmp_path / "s_checker.png"))
    assert checker.shape == (h, 2 * w + 2, 3)  # before | after
    flow_img = np.asarray(Image.open(tmp_path / "s_flow.png"))
    assert flow_img.shape[1] == w and flow_img.shape[0] > h  # legend strip below
    assert stats["max_px"] == pytest.approx(np.hypot(dx, dy), rel=1e-4)
    assert stats["misfit_after"] < stats["misfit_before"] - 0.1
    # the aligned aux is the registered depth where both are defined
    assert alignment_misfit(rgb, depth[None]) < stats["misfit_before"] - 0.1


def test_flow_colours_follow_direction() -> None:
    flow = np.zeros((2, 4, 8), np.float32)
    flow[0, :, :4] = 3.0  # right → red
    flow[1, :, 4:] = -3.0  # up → hue 90° (yellow-green)
    color, top = flow_to_color(flow)
    assert top == 3.0
    np.testing.assert_array_equal(color[0, 0], [255, 0, 0])
    r, g, b = color[0, 7].astype(int)
    assert g == 255 and b == 0 and 100 < r < 150
    white, _ = flow_to_color(np.zeros((2, 2, 2), np.float32))
    assert (white == 255).all()


def test_flow_from_matrix_undoes_the_generator_warp() -> None:
    h, w = 24, 32
    matrix = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    flow = flow_from_matrix(matrix, (h, w))
    torch.testing.assert_close(flow[0, :, 5, 5], torch.tensor([3.0, -2.0]))
    half = flow_from_matrix(matrix, (h, w), (h // 2, w // 2))
    torch.testing.assert_close(half[0, :, 3, 3], torch.tensor([1.5, -1.0]))
    assert endpoint_error(flow, flow).abs().max() < 1e-6
    image = torch.rand(1, 1, h, w)
    moved = warp_by_flow(image, -flow)  # the generator's warp of a registered image
    back = warp_by_flow(moved, flow)
    torch.testing.assert_close(back[..., 4:-4, 6:-6], image[..., 4:-4, 6:-6])


@pytest.mark.parametrize("name", sorted(ALIGNERS))
def test_every_aligner_exposes_last_displacement(name: str) -> None:
    cls = ALIGNERS[name]
    channels = 1 if getattr(cls, "input_level", False) else 4
    align = cls(channels, 1) if name == "reproject" else cls(channels, channels)
    assert align.last_displacement() is None
    rgb, aux = (
        torch.randn(2, channels, 10, 12),
        torch.rand(2, 1 if name == "reproject" else 4, 10, 12),
    )
    align(rgb, aux)
    flow = align.last_displacement()
    if name in ("identity", "reproject"):
        assert flow is None
        return
    assert flow is not None and flow.shape == (2, 2, 10, 12) and not flow.requires_grad
    assert flow.abs().max() == 0  # identity at initialisation


def test_deformable_and_flow_displacements_are_in_x_y_order() -> None:
    deform = DeformableAlign(2, 2, offset_groups=1)
    with torch.no_grad():  # every tap: dy = 1, dx = 2
        deform.dcn.offset_bias[: 2 * 9].copy_(torch.tensor([1.0, 2.0]).repeat(9))
    deform(torch.randn(1, 2, 6, 7), torch.randn(1, 2, 6, 7))
    flow = deform.last_displacement()
    assert flow is not None
    torch.testing.assert_close(flow[0, :, 3, 3], torch.tensor([2.0, 1.0]))
    free = FlowAlign(2, 2, mode="free")
    free(torch.randn(3, 2, 6, 7), torch.randn(3, 2, 6, 7))
    assert free.last_displacement() is not None
    assert free.last_displacement().shape == (3, 2, 6, 7)  # type: ignore[union-attr]


def test_predict_dump_alignment_writes_images(tiny_depth_root: Path, tmp_path: Path) -> None:
    layers = [CONFIGS / "synthetic" / f"{n}.yaml" for n in ("base", "misaligned", "flow_align")]
    args = [
        *[a for layer in layers for a in ("--config", str(layer))],
        *small_cli_args(tiny_depth_root, tmp_path),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
    ]
    cli = build(args=args)
    cli.trainer.fit(cli.task, datamodule=cli.datamodule)
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    saved = ckpt.parent.parent / "config.yaml"
    assert yaml.safe_load(saved.read_text())["model"]["network"]["init_args"]["input_align"]
    out = tmp_path / "pred"
    run_stage(
        [
            "predict",
            "--config",
            str(saved),
            "--data.num_workers=0",
            f"--ckpt_path={ckpt}",
            f"--output_dir={out}",
            "--dump_alignment=true",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    names = [f"{i:05d}" for i in range(16, 20)]  # the tiny test split
    for name in names:
        for kind in ("checker", "overlay", "flow"):
            assert (out / "alignment" / f"{name}_{kind}.png").is_file(), (name, kind)
    checker = np.asarray(Image.open(out / "alignment" / f"{names[0]}_checker.png"))
    assert checker.shape == (48, 2 * 64 + 2, 3)
    summary = json.loads((out / "alignment" / "summary.json").read_text())
    assert sorted(summary) == names
    assert {"misfit_before", "misfit_after", "max_px", "mean_px"} <= set(summary[names[0]]["input"])
    assert len(list((out / "labels").glob("*.png"))) == 4  # the usual outputs are still there
