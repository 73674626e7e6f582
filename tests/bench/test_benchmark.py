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
    measure_group,
    network_builders,
    network_init_args,
    overhead,
    paired_ratio,
    search_largest,
)
from rgbx_fusion.bench.speed import Speed
from rgbx_fusion.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_variants_differ_only_in_fusion_and_alignment() -> None:
    args = network_init_args(
        [CONFIGS / "synthetic" / "base.yaml", CONFIGS / "synthetic" / "mid_cmx.yaml"]
    )
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
        str(CONFIGS / "synthetic" / "base.yaml"),
        "--config",
        str(CONFIGS / "synthetic" / "mid_se.yaml"),
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


def test_speed_runs_every_network_in_its_precision_and_layout() -> None:
    builders = network_builders({"backbone": "resnet10t"}, num_classes=3, aux_channels=1)
    seen: dict[str, set[tuple[torch.dtype, bool, bool]]] = {}

    def watched(variant: str) -> torch.nn.Module:
        net = builders[variant]()
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))

        def hook(module: torch.nn.Module, args: tuple[torch.Tensor], out: torch.Tensor) -> None:
            cl = args[0].is_contiguous(memory_format=torch.channels_last)
            seen.setdefault(variant, set()).add((out.dtype, cl, module.training))

        conv.register_forward_hook(hook)
        return net

    speed = Speed("bf16-mixed", channels_last=True)
    group = {v: (lambda v=v: watched(v)) for v in ("model", "plain")}
    rows = measure_group(group, (32, 48), 1, 1, torch.device("cpu"), 0, 1, speed=speed)
    assert [r.variant for r in rows] == ["model", "plain"]
    # inference and training steps in bf16 on channels_last inputs; FLOPs counted in float32
    timed = {(torch.bfloat16, True, False), (torch.bfloat16, True, True)}
    assert seen == {v: timed | {(torch.float32, True, False)} for v in group}
    assert all(r.gflops > 0 and r.train_images_per_s > 0 for r in rows)


def test_speed_rejects_what_it_cannot_run() -> None:
    with pytest.raises(ConfigError, match="bf16-true"):
        Speed("bf16-true")
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA"):
        Speed("16-mixed").check(torch.device("cpu"))


def test_benchmark_command_records_precision_and_layout(tmp_path: Path) -> None:
    report = benchmark_report(
        tmp_path,
        "benchmark",
        "--config",
        str(CONFIGS / "synthetic" / "base.yaml"),
        "--resolutions",
        "32x48",
        "--precision",
        "bf16-mixed",
        "--channels-last",
        "--warmup",
        "0",
        "--iters",
        "1",
    )
    assert report["precision"] == "bf16-mixed" and report["channels_last"] is True


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda(precision: str) -> None:
    builders = network_builders({"backbone": "resnet10t"}, num_classes=3, aux_channels=1)
    speed = Speed(precision, channels_last=True)
    rows = measure_group(builders, (64, 96), 8, 1, torch.device("cuda"), 1, 2, speed=speed)
    assert all(r.train_images_per_s > 0 and r.peak_memory_mb > 0 for r in rows)
    assert largest_batch(builders["model"], (32, 32), 1, torch.device("cuda"), 8, speed) == 8


def test_recipes_with_weight_files_build_offline() -> None:
    args = network_init_args([CONFIGS / "nyudv2" / "base.yaml", CONFIGS / "nyudv2" / "cmx_b2.yaml"])
    assert args["pretrained"] is False and "backbone_weights" not in args
    assert args["backbone"] == "mit_b2"


def test_benchmark_hha_reports_ms_per_image(tmp_path: Path) -> None:
    rows = benchmark_report(
        tmp_path, "hha", "--hha", "--resolutions", "48x64", "--batch", "1,2", "--iters", "1"
    )["rows"]
    cases = [(r["height"], r["width"], r["batch"], r["missing_fraction"]) for r in rows]
    assert cases == [(48, 64, b, f) for b in (1, 2) for f in (0.0, 0.1)]
    assert all(r["ms_per_image"] > 0 for r in rows)
