from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rgbx_fusion.bench.benchmark import measure, network_builders, network_init_args, overhead
from rgbx_fusion.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_variants_differ_only_in_fusion_and_alignment() -> None:
    args = network_init_args(CONFIGS / "synthetic_mid_cmx.yaml")
    builders = network_builders(args, num_classes=5, aux_channels=1)
    model, plain, backbones = (builders[k]() for k in ("model", "plain", "backbones"))
    assert model.feedback and not plain.feedback
    assert not any(type(r).__name__ == "FeatureRectify" for r in plain.rectifiers)
    assert all(type(f).__name__ == "AddFusion" for f in plain.fusions)
    # same encoder and decoder shapes: the difference is the fusion/alignment parts
    n_enc = sum(p.numel() for p in backbones.parameters())
    assert n_enc == sum(p.numel() for p in model.encoder.parameters())
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())


def test_measure_and_overhead() -> None:
    builders = network_builders({"backbone": "resnet18"}, num_classes=3, aux_channels=1)
    rows = [
        measure(v, b, (32, 48), 1, 1, torch.device("cpu"), warmup=1, iters=1)
        for v, b in builders.items()
    ]
    assert [r.variant for r in rows] == ["model", "plain", "backbones"]
    for r in rows:
        assert r.params > 0 and r.gflops > 0 and r.latency_ms > 0 and r.train_images_per_s > 0
    o = overhead(rows)
    assert o["params"] == pytest.approx(0.0) and o["gflops"] == pytest.approx(0.0)


def test_benchmark_command_writes_json_and_csv(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "benchmark",
                "--config",
                str(CONFIGS / "synthetic_mid_se.yaml"),
                "--resolutions",
                "32x48",
                "--batch",
                "1",
                "--warmup",
                "1",
                "--iters",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp_path),
            ]
        )
    assert exc.value.code == 0
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert len(report["rows"]) == 3 and report["overhead"][0]["params"] > 0
    assert (tmp_path / "benchmark.csv").read_text().startswith("variant,")
