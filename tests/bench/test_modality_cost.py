"""``benchmark --modality-cost``: separate vs shared aux encoders for 1..M modalities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rgbx_fusion.bench.modality_cost import modality_cost, multimodal_init_args, parse_modalities
from rgbx_fusion.cli import main
from rgbx_fusion.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "synthetic"


def test_separate_encoders_grow_with_each_modality_and_a_shared_one_does_not() -> None:
    init_args, modalities = multimodal_init_args([CONFIGS / "base.yaml", CONFIGS / "rgbdt.yaml"])
    assert modalities == {"depth": 1, "thermal": 1}
    init_args = {
        **init_args,
        "backbone": "resnet10t",
        "decoder": {
            "class_path": "rgbx_fusion.models.decoders.fpn.FPNDecoder",
            "init_args": {"channels": 16},
        },
    }
    rows = modality_cost(
        init_args,
        parse_modalities("depth:1,thermal:1,events:3"),
        5,
        (32, 32),
        torch.device("cpu"),
        warmup=0,
        iters=1,
    )
    got = {(r["streams"], r["aux_encoder"]): r for r in rows}
    assert sorted(got) == [(k, m) for k in (2, 3, 4) for m in ("separate", "shared")]
    sep = [got[(k, "separate")]["params"] for k in (2, 3, 4)]
    shared = [got[(k, "shared")]["params"] for k in (2, 3, 4)]
    encoder = sep[1] - sep[0]  # one more aux encoder (1-channel stem)
    assert encoder > 0 and sep[2] - sep[1] > encoder  # the 3-channel stem is larger
    # the shared encoder: only a 1×1 stem per modality is added
    assert 0 < shared[1] - shared[0] < encoder / 100
    assert all(
        got[(k + 1, m)]["gflops"] > got[(k, m)]["gflops"]
        for k in (2, 3)
        for m in ("separate", "shared")
    )
    assert all(r["latency_ms"] > 0 for r in rows)


def test_modality_cost_needs_a_multi_modality_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--modality-cost supports MultiModalSegmenter"):
        multimodal_init_args([CONFIGS / "base.yaml"])
    with pytest.raises(ConfigError, match="name:channels"):
        parse_modalities("depth:x")
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--modality-cost", "--config", str(CONFIGS / "base.yaml")])
    assert exc.value.code != 0
    assert "supports MultiModalSegmenter" in capsys.readouterr().err
