"""Speed and memory of a configured network, with its overhead over plain fusion.

Three networks are measured in the same run, on the same random inputs:

* **model**: the network exactly as configured;
* **plain**: the same network with every aligner and rectifier removed, add
  fusion at every stage and no feedback (the reference the overhead is
  measured against, as in CMX's "identity rectification and add fusion");
* **backbones**: the bare dual encoder (both streams, no fusion, no decoder).

``overhead = model / plain − 1`` for time, parameters and FLOPs. Timings are
medians over ``iters`` runs after ``warmup`` runs; memory is CUDA's peak
allocation, or the process's peak resident memory on CPU (reset per measurement
where Linux allows it).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from rgbx_fusion.bench.flops import count_flops, count_parameters
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.segmenter import RGBXSegmenter

Builder = Callable[[], nn.Module]


@dataclass
class Measurement:
    """One network at one resolution and batch size."""

    variant: str
    height: int
    width: int
    batch: int
    params: int
    gflops: float
    latency_ms: float
    train_images_per_s: float
    peak_memory_mb: float  # above what was in use before the measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak(device: torch.device) -> float:
    """Reset the peak counter; return the memory in use now (MB), the baseline."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):  # writing 5 resets VmHWM (peak RSS) on Linux
        Path("/proc/self/clear_refs").write_text("5")
    return _proc_status_mb("VmRSS") or 0.0


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM") or 0.0


def _median_time(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _forward(net: nn.Module, rgb: Tensor, aux: Tensor) -> Tensor:
    out = net(rgb, aux)
    if isinstance(out, tuple):  # the bare dual encoder returns both pyramids
        return torch.stack([t.float().mean() for pyramid in out for t in pyramid]).sum()
    return out


def measure(
    variant: str,
    build: Builder,
    size: tuple[int, int],
    batch: int,
    aux_channels: int,
    device: torch.device,
    warmup: int = 2,
    iters: int = 5,
) -> Measurement:
    """Latency (eval, no grad), training throughput (fwd + bwd + AdamW step) and memory."""
    h, w = size
    net = build().to(device)
    rgb = torch.randn(batch, 3, h, w, device=device)
    aux = torch.randn(batch, aux_channels, h, w, device=device)
    params = count_parameters(net)
    gflops = count_flops(net, rgb[:1], aux[:1]) / 1e9
    net.eval()
    baseline = _reset_peak(device)
    with torch.no_grad():
        latency = _median_time(lambda: _forward(net, rgb, aux), device, warmup, iters)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        out = _forward(net, rgb, aux)
        loss = out.float().mean() if out.dim() == 0 else F.softmax(out, 1).amax(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_time = _median_time(step, device, warmup, iters)
    return Measurement(
        variant,
        h,
        w,
        batch,
        params,
        gflops,
        latency * 1e3,
        batch / step_time,
        _peak_mb(device) - baseline,
    )


def network_builders(
    init_args: dict[str, Any], num_classes: int, aux_channels: int
) -> dict[str, Builder]:
    """Builders of the configured, plain and backbones-only networks from ``init_args``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RGBXSegmenter, "network")
    args = {**init_args, "num_classes": num_classes, "aux_channels": aux_channels}
    cfg = parser.instantiate_classes(parser.parse_object({"network": args}))
    model = cfg.network

    def plain() -> nn.Module:
        drop = ("align", "input_align", "rectify", "fusion", "feedback")
        kwargs = {k: v for k, v in args.items() if k not in drop}
        kwargs["fusion"] = {"class_path": "rgbx_fusion.models.fusion.simple.AddFusion"}
        net: nn.Module = parser.instantiate_classes(
            parser.parse_object({"network": kwargs})
        ).network
        return net

    def backbones() -> nn.Module:
        net = plain()
        if net.fusion_stage != "mid":
            raise ConfigError("the backbones-only variant needs fusion_stage: mid")
        encoder: nn.Module = net.encoder  # type: ignore[assignment]
        return encoder

    builders: dict[str, Builder] = {"model": lambda: model, "plain": plain}
    if model.fusion_stage == "mid":
        builders["backbones"] = backbones
    return builders


def network_init_args(config: str | Path) -> dict[str, Any]:
    """``model.network.init_args`` of a training config (only RGBXSegmenter is supported)."""
    data = yaml.safe_load(Path(config).read_text())
    network = (data.get("model") or {}).get("network") or {}
    cls = network.get("class_path", "rgbx_fusion.models.segmenter.RGBXSegmenter")
    if not str(cls).endswith("RGBXSegmenter"):
        raise ConfigError(f"{config}: benchmark supports RGBXSegmenter networks, found {cls}")
    return dict(network.get("init_args") or {})


def overhead(rows: Sequence[Measurement]) -> dict[str, float]:
    """``model / plain − 1`` for latency, training step time, parameters and FLOPs."""
    by = {r.variant: r for r in rows}
    if "model" not in by or "plain" not in by:
        return {}
    m, p = by["model"], by["plain"]
    return {
        "latency": m.latency_ms / p.latency_ms - 1,
        "train_step": p.train_images_per_s / m.train_images_per_s - 1,
        "params": m.params / max(p.params, 1) - 1,
        "gflops": m.gflops / max(p.gflops, 1e-12) - 1,
    }


def as_dicts(rows: Sequence[Measurement]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
