from __future__ import annotations

from pathlib import Path

import torch
from bench_cli import benchmark_report

from rgbx_fusion.bench.memory import TensorMemory
from rgbx_fusion.bench.scaling import ELEMENTWISE, attention_operators, measure_scaling
from rgbx_fusion.models.fusion import FUSIONS, RECTIFIERS, NonLocalFusion


def test_tensor_memory_counts_new_storages_until_freed() -> None:
    x = torch.randn(256, 256)  # 256 KiB, allocated before: not counted
    with TensorMemory() as mem:
        y = x * 2  # +256 KiB
        z = y + 1  # +256 KiB
        del y  # -256 KiB
        z.add_(1)  # in place: nothing new
        view = z.view(-1)  # a view: nothing new
        w = view * 3  # +256 KiB
    assert mem.peak == 2 * 256 * 1024 and mem.current == 2 * 256 * 1024
    del w


def test_tensor_memory_sees_the_backward_pass() -> None:
    layer = torch.nn.Linear(64, 64, bias=False)
    with TensorMemory() as mem:
        layer(torch.randn(8, 64)).sum().backward()
    assert mem.peak >= 64 * 64 * 4  # at least the weight gradient


def test_every_non_elementwise_operator_is_measured() -> None:
    names = set(attention_operators())
    assert names == (set(FUSIONS) | set(RECTIFIERS)) - set(ELEMENTWISE)
    assert {"cross_attention", "non_local", "cmx", "rectify"} <= names


def test_non_local_memory_grows_linearly() -> None:
    # The N × N attention matrix would make memory per pixel grow 4× from 8×8 to 16×16.
    rows = measure_scaling(
        "non_local", NonLocalFusion, [(8, 8), (16, 16)], 16, 2, warmup=0, iters=1
    )
    assert rows[0].memory_per_pixel_ratio == 1.0
    assert rows[1].memory_per_pixel_ratio < 1.5
    assert all(r.forward_ms > 0 and r.train_ms > 0 for r in rows)


def test_scaling_command_writes_json_and_csv(tmp_path: Path) -> None:
    report = benchmark_report(
        tmp_path,
        "scaling",
        "--scaling",
        "--operators",
        "se,rectify",
        "--scaling-images",
        "32x32,64x64,128x128",
        "--scaling-channels",
        "16",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--clock",
        "cpu",
    )
    assert [(r["operator"], r["height"]) for r in report["rows"]] == [
        ("se", 4),
        ("se", 8),
        ("se", 16),
        ("rectify", 4),
        ("rectify", 8),
        ("rectify", 16),
    ]
    assert (tmp_path / "scaling.csv").read_text().startswith("operator,")
    assert report["clock"] == "cpu" and report["rows"][0]["train_ms"] > 0
