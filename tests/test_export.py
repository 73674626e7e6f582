"""Export of whole networks to ONNX and torch.export: the catalogue, parity, typed failures."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from rgbx_fusion.errors import ExportError
from rgbx_fusion.export import FORMATS, export_network
from rgbx_fusion.models.align import ALIGNERS, AffineAlign, FlowAlign
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.decoders.mlp import MLPDecoder
from rgbx_fusion.models.fusion import (
    FUSIONS,
    AddFusion,
    CMXFusion,
    CrossAttentionFusion,
    FeatureRectify,
    FusionBase,
    SEFusion,
    iAFFFusion,
)
from rgbx_fusion.models.segmenter import RGBXSegmenter

SIZE = (64, 64)
STAGES = 4  # resnet18 feature levels at strides 4, 8, 16, 32


def network(decoder: Any = None, **options: Any) -> RGBXSegmenter:
    """A small seeded network whose all-zero parameters are perturbed.

    Zero-initialised gates and flow heads (identity at initialisation) would hide the
    branch behind them, so the parity check could not see it.
    """
    torch.manual_seed(0)
    decoder = decoder or partial(FPNDecoder, channels=16)
    net = RGBXSegmenter(4, 1, decoder=decoder, **options)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)
    return net.eval()


def _chunks(items: list[Any]) -> list[list[Any]]:
    """Catalogue entries grouped one per stage, so that one export covers four of them."""
    return [items[i : i + STAGES] for i in range(0, len(items), STAGES)]


def _pad(group: list[Any]) -> list[Any]:
    return group + [None] * (STAGES - len(group))


FEATURE_ALIGNERS = [cls for name, cls in ALIGNERS.items() if name != "reproject"]
REPRESENTATIVE: dict[str, dict[str, Any]] = {
    "mid-add-se-iaff-crossattn+flow-affine": {
        "fusion": [AddFusion, SEFusion, iAFFFusion, CrossAttentionFusion],
        "align": [FlowAlign, AffineAlign, None, None],
    },
    "mid-cmx-rectify-feedback": {
        "fusion": CMXFusion,
        "rectify": FeatureRectify,
        "feedback": True,
    },
    "mid-cmx-mlp-decoder": {
        "fusion": CMXFusion,
        "rectify": FeatureRectify,
        "feedback": True,
        "decoder": partial(MLPDecoder, channels=16),
    },
    "early": {"fusion_stage": "early", "fusion": None},
    "late": {"fusion_stage": "late", "late_fusion": "conv", "fusion": None},
}
CATALOGUE: dict[str, dict[str, Any]] = {
    **{
        "fusions-" + "-".join(c.__name__ for c in group): {"fusion": _pad(group)}
        for group in _chunks(list(FUSIONS.values()))
    },
    **{
        "aligners-" + "-".join(c.__name__ for c in group): {"align": _pad(group)}
        for group in _chunks(FEATURE_ALIGNERS)
    },
    "input-reprojection": {"input_align": ALIGNERS["reproject"]},
}


def _covered(configs: dict[str, dict[str, Any]]) -> set[type]:
    found: set[type] = set()
    for options in configs.values():
        for key in ("fusion", "align", "input_align"):
            value = options.get(key)
            found.update(v for v in (value if isinstance(value, list) else [value]) if v)
    return found


def test_the_export_catalogue_covers_every_fusion_and_aligner() -> None:
    assert _covered(CATALOGUE) == set(FUSIONS.values()) | set(ALIGNERS.values())


# The MLP decoder's ONNX export repeats the CMX one's operators (its torch.export test
# runs in the default suite): slow.
SLOW_ONNX = {"mid-cmx-mlp-decoder"}


@pytest.mark.export
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ONNX else n for n in REPRESENTATIVE],
)
def test_representative_networks_export_to_onnx_with_parity(name: str, tmp_path: Path) -> None:
    net = network(**REPRESENTATIVE[name])
    report = export_network(net, tmp_path / "net.onnx", "onnx", SIZE, 1, dynamic_batch=True)
    assert report.max_abs_diff <= 1e-3
    assert report.parity_batches == [1, 3]
    assert (tmp_path / "net.onnx").is_file()
    assert not (tmp_path / "net.onnx.data").exists(), "weights belong inside the one file"


@pytest.mark.export
def test_mlp_decoder_network_exports_with_torch_export(tmp_path: Path) -> None:
    # The MLP decoder builds its per-level maps from the weights inside forward.
    net = network(**REPRESENTATIVE["mid-cmx-mlp-decoder"])
    report = export_network(net, tmp_path / "net.pt2", "torch_export", SIZE, 1, dynamic_batch=True)
    assert report.max_abs_diff <= 1e-3


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_fusion_and_aligner_exports_with_torch_export(name: str, tmp_path: Path) -> None:
    net = network(**CATALOGUE[name])
    report = export_network(net, tmp_path / "net.pt2", "torch_export", SIZE, 1, dynamic_batch=True)
    assert report.max_abs_diff <= 1e-3


@pytest.mark.slow
@pytest.mark.export
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_fusion_and_aligner_exports_to_onnx(name: str, tmp_path: Path) -> None:
    net = network(**CATALOGUE[name])
    report = export_network(net, tmp_path / "net.onnx", "onnx", SIZE, 1)
    assert report.max_abs_diff <= 1e-3


class DataDependentFusion(FusionBase):
    """Branches in Python on a tensor value: no graph can hold that.

    Shape:
        x_rgb, x_aux: (B, C, H, W) -> (B, C, H, W)
    """

    summary = "test double: data-dependent control flow"

    def forward(self, x_rgb: Tensor, x_aux: Tensor) -> Tensor:
        if float(x_aux.mean()) > 0:
            return x_rgb + x_aux
        return x_rgb


@pytest.mark.export
@pytest.mark.parametrize(
    "fmt", [pytest.param(f, marks=pytest.mark.slow) if f == "onnx" else f for f in FORMATS]
)
def test_a_part_that_cannot_export_is_named_in_a_typed_error(fmt: str, tmp_path: Path) -> None:
    net = network(fusion=[AddFusion, None, DataDependentFusion, None])
    with pytest.raises(ExportError, match=r"fusions\.2: DataDependentFusion") as exc:
        export_network(net, tmp_path / "net", fmt, (32, 32), 1)
    assert "fusions.0" not in str(exc.value), "exportable parts are not blamed"


def test_unknown_format_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="tflite"):
        export_network(network(), tmp_path / "net", "tflite", (32, 32), 1)


def test_parity_beyond_the_tolerance_is_a_typed_error(tmp_path: Path) -> None:
    net = network(fusion_stage="early", fusion=None)
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        export_network(net, tmp_path / "net.pt2", "torch_export", (32, 32), 1, tolerance=-1.0)
