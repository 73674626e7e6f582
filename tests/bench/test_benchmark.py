from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from bench_cli import benchmark_report

from rgbx_fusion.bench.benchmark import (
    Measurement,
    largest_batch,
    measure,
    network_builders,
    network_init_args,
    overhead,
    paired_ratio,
    search_largest,
)

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


def test_every_build_is_a_new_network() -> None:
    builders = network_builders({"backbone": "resnet10t"}, num_classes=3, aux_channels=1)
    for build in builders.values():
        a, b = build(), build()
        assert a is not b
        assert not {id(p) for p in a.parameters()} & {id(p) for p in b.parameters()}


def test_measure_and_overhead() -> None:
    builders = network_builders({"backbone": "resnet18"}, num_classes=3, aux_channels=1)
    rows = [
        measure(v, b, (32, 48), 1, 1, torch.device("cpu"), warmup=1, iters=1)
        for v, b in builders.items()
    ]
    assert [r.variant for r in rows] == ["model", "plain", "backbones"]
    for r in rows:
        assert r.params > 0 and r.gflops > 0 and r.latency_ms > 0 and r.train_images_per_s > 0
        # tensor memory of the first training step: at least the AdamW state (2 per weight)
        assert r.peak_memory_mb * 2**20 >= 2 * 4 * r.params
    o = overhead(rows)
    assert o["params"] == pytest.approx(0.0) and o["gflops"] == pytest.approx(0.0)


def test_measure_at_batch_one_trains_global_pooling_batchnorm() -> None:
    """iAFF has BatchNorm after a global pooling: one sample cannot train it."""
    fusion = {"class_path": "rgbx_fusion.models.fusion.channel_attention.iAFFFusion"}
    args = {"backbone": "resnet10t", "fusion": fusion}
    build = network_builders(args, num_classes=3, aux_channels=1)["model"]
    row = measure("iaff", build, (32, 48), 1, 1, torch.device("cpu"), warmup=0, iters=1)
    assert row.batch == 1 and row.latency_ms > 0 and row.train_images_per_s > 0


def test_benchmark_command_writes_json_and_csv(tmp_path: Path) -> None:
    report = benchmark_report(
        tmp_path,
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
    )
    assert len(report["rows"]) == 3 and report["overhead"][0]["params"] > 0
    assert report["max_train_batch"]["model"] is None  # CPU: no fixed memory budget
    assert all(len(r["step_repeats_s"]) == 1 for r in report["rows"])  # the raw repeats
    assert "train_step_paired" in report["overhead"][0]
    csv_text = (tmp_path / "benchmark.csv").read_text()
    assert csv_text.startswith("variant,") and "repeats" not in csv_text


def row(variant: str, steps: list[float], latencies: list[float]) -> Measurement:
    return Measurement(
        variant,
        8,
        8,
        2,
        10,
        1.0,
        statistics.median(latencies),
        2 / statistics.median(steps),
        1.0,
        latency_repeats_ms=latencies,
        step_repeats_s=steps,
    )


def test_paired_overhead_is_the_median_of_per_repeat_ratios() -> None:
    # The machine is twice as slow in the last two repeats, and the model's third
    # repeat is disturbed. The medians then come from different load levels (model
    # 1.30 s, plain 1.02 s: +27%); the per-repeat ratios keep the model's 5%.
    model = row("model", [1.05, 1.04, 1.30, 2.10, 2.12], [10.0, 10.0, 10.0, 20.0, 20.0])
    plain = row("plain", [1.00, 1.00, 1.02, 2.00, 2.00], [10.0, 10.0, 10.0, 20.0, 20.0])
    o = overhead([model, plain])
    assert o["train_step"] == pytest.approx(1.30 / 1.02 - 1)
    assert o["train_step_paired"] == pytest.approx(0.05)
    assert o["latency_paired"] == pytest.approx(0.0)
    assert paired_ratio([1.0, 2.0], [1.0]) is None and paired_ratio([], []) is None
    without = overhead([Measurement("model", 8, 8, 2, 10, 1.0, 1.0, 1.0, 1.0), plain])
    assert "train_step_paired" not in without and "train_step" in without


@pytest.mark.parametrize(("fits_up_to", "limit"), [(0, 64), (1, 64), (37, 64), (64, 64), (100, 77)])
def test_search_largest_finds_the_boundary(fits_up_to: int, limit: int) -> None:
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= fits_up_to

    assert search_largest(fits, limit) == min(fits_up_to, limit)
    assert len(tried) <= 2 * limit.bit_length() + 1


def test_largest_batch_is_not_searched_on_cpu() -> None:
    def build() -> torch.nn.Module:
        raise AssertionError("no network is built on CPU")

    assert largest_batch(build, (32, 32), 1, torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_largest_batch_on_cuda() -> None:
    builders = network_builders({"backbone": "resnet10t"}, num_classes=3, aux_channels=1)
    assert largest_batch(builders["model"], (32, 32), 1, torch.device("cuda"), limit=8) == 8


def test_recipes_with_weight_files_build_offline() -> None:
    args = network_init_args(CONFIGS / "nyudv2_cmx_b2.yaml")
    assert args["pretrained"] is False and "backbone_weights" not in args
    assert args["backbone"] == "mit_b2"


def test_benchmark_hha_reports_ms_per_image(tmp_path: Path) -> None:
    rows = benchmark_report(
        tmp_path, "hha", "--hha", "--resolutions", "48x64", "--batch", "1,2", "--iters", "1"
    )["rows"]
    cases = [(r["height"], r["width"], r["batch"], r["missing_fraction"]) for r in rows]
    assert cases == [(48, 64, b, f) for b in (1, 2) for f in (0.0, 0.1)]
    assert all(r["ms_per_image"] > 0 for r in rows)
