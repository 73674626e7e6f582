"""Speed and memory of a configured network, with its overhead over plain fusion.

Three networks are measured in the same run, on the same random inputs:

* **model**: the network exactly as configured;
* **plain**: the same network with every aligner and rectifier removed, add
  fusion at every stage and no feedback (the reference the overhead is
  measured against, as in CMX's "identity rectification and add fusion");
* **backbones**: the bare dual encoder (both streams, no fusion, no decoder).

``overhead = model / plain − 1`` for time, parameters and FLOPs. Timings are
medians over ``iters`` runs after ``warmup`` runs, interleaved over the three
networks (:func:`measure_group`) so that the ratios hold on a shared machine.
Memory is the peak of one inference and the first training step (activations,
gradients and AdamW state) above the weights and inputs: CUDA's peak allocation,
or the peak of tensor storage on CPU (:mod:`rgbx_fusion.bench.memory`). On
CUDA, :func:`largest_batch` finds the largest training batch that fits in
memory (doubling, then bisection). A :class:`~rgbx_fusion.bench.speed.Speed`
sets the precision and the memory layout of every network and input.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.bench.flops import count_flops, count_parameters
from rgbx_fusion.bench.memory import peak_memory_mb
from rgbx_fusion.bench.speed import DEFAULT_SPEED, Speed
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.tasks.optim import adamw

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
    peak_memory_mb: float  # allocated above the weights and inputs
    max_train_batch: int | None = None  # CUDA only, at the first resolution
    #: the timed repeats, in order (JSON only): inference ms, training step seconds
    latency_repeats_ms: list[float] = field(default_factory=list)
    step_repeats_s: list[float] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward(
    net: nn.Module, rgb: Tensor, aux: Tensor, autocast: AbstractContextManager[Any] | None = None
) -> Tensor:
    with autocast or nullcontext():
        out = net(rgb, aux)
        if isinstance(out, tuple):  # the bare dual encoder returns both pyramids
            return torch.stack([t.float().mean() for pyramid in out for t in pyramid]).sum()
        return out


def _train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    rgb: Tensor,
    aux: Tensor,
    speed: Speed = DEFAULT_SPEED,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    out = _forward(net, rgb, aux, speed.autocast(rgb.device))
    loss = out.float().mean() if out.dim() == 0 else F.softmax(out.float(), 1).amax(1).mean()
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


#: ``wall``: elapsed time. ``cpu``: CPU time of this process (all its threads), which
#: on a machine shared with other jobs leaves out the time they take the cores away.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def timer(clock: str, device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """``timed(fn)``: seconds ``fn()`` takes on ``clock`` (see :data:`CLOCKS`)."""
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ConfigError("clock 'cpu' measures CPU work only; use 'wall' on an accelerator")
    now = CLOCKS[clock]

    def timed(fn: Callable[[], Any]) -> float:
        start = now()
        fn()
        _sync(device)
        return now() - start

    return timed


def measure_group(
    builders: Mapping[str, Builder],
    size: tuple[int, int],
    batch: int,
    aux_channels: int,
    device: torch.device,
    warmup: int = 2,
    iters: int = 5,
    clock: str = "wall",
    speed: Speed = DEFAULT_SPEED,
) -> list[Measurement]:
    """Latency (eval, no grad), training throughput (fwd + bwd + AdamW step) and memory
    of several networks on the same inputs, run as ``speed`` says (FLOPs are counted
    in float32 without autocast: the same operations, whatever their precision).

    Peak memory is taken first, one network at a time (one inference and the first
    training step each, see :func:`~rgbx_fusion.bench.memory.peak_memory_mb`). The
    timings are interleaved: every repeat runs one inference of each network, then
    one training step of each, in reverse order on odd repeats, so that a change of
    machine load during the run affects every network alike. Medians over ``iters``
    repeats after ``warmup``, on ``clock`` (see :data:`CLOCKS`). Training uses at least
    two samples (``max(batch, 2)``): BatchNorm after a global pooling cannot train on one.
    """
    timed = timer(clock, device)
    speed.check(device)
    h, w = size
    rgb = speed.layout(torch.randn(batch, 3, h, w, device=device))
    aux = speed.layout(torch.randn(batch, aux_channels, h, w, device=device))
    # Training needs two samples where BatchNorm follows a global pooling (iAFF, SE heads).
    train_batch = max(batch, 2)
    rgb_t = speed.layout(torch.randn(train_batch, 3, h, w, device=device))
    aux_t = speed.layout(torch.randn(train_batch, aux_channels, h, w, device=device))
    nets = {variant: speed.prepare(build().to(device)) for variant, build in builders.items()}
    opts = {v: adamw(net.parameters(), lr=1e-4) for v, net in nets.items()}
    scalers = {v: speed.scaler(device) for v in nets}
    train = {
        v: partial(_train_step, net, opts[v], rgb_t, aux_t, speed, scalers[v])
        for v, net in nets.items()
    }

    def infer(net: nn.Module) -> Tensor:
        with torch.no_grad():
            return _forward(net.eval(), rgb, aux, speed.autocast(device))

    memory: dict[str, float] = {}
    for v, net in nets.items():

        def first_steps(net: nn.Module = net, step: Callable[[], None] = train[v]) -> None:
            infer(net)
            net.train()
            step()

        memory[v] = peak_memory_mb(first_steps, device)
    latency: dict[str, list[float]] = {v: [] for v in nets}
    step: dict[str, list[float]] = {v: [] for v in nets}
    order = list(nets)
    for repeat in range(warmup + iters):
        variants = order if repeat % 2 == 0 else order[::-1]
        for v in variants:
            t = timed(partial(infer, nets[v]))
            if repeat >= warmup:
                latency[v].append(t)
        for v in variants:
            nets[v].train()
            t = timed(train[v])
            if repeat >= warmup:
                step[v].append(t)
    return [
        Measurement(
            v,
            h,
            w,
            batch,
            count_parameters(net),
            count_flops(net, rgb[:1], aux[:1]) / 1e9,
            statistics.median(latency[v]) * 1e3,
            train_batch / statistics.median(step[v]),
            memory[v],
            latency_repeats_ms=[t * 1e3 for t in latency[v]],
            step_repeats_s=list(step[v]),
        )
        for v, net in nets.items()
    ]


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
    """:func:`measure_group` of one network."""
    return measure_group({variant: build}, size, batch, aux_channels, device, warmup, iters)[0]


def search_largest(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """Largest ``n`` in ``[1, limit]`` with ``fits(n)`` (assumed monotone), 0 if none.

    Doubles from 1 until ``fits`` fails or ``limit`` is reached, then bisects
    between the last success and the first failure.
    """
    good, bad, n = 0, limit + 1, 1
    while n <= limit:
        if not fits(n):
            bad = n
            break
        good, n = n, 2 * n
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def largest_batch(
    build: Builder,
    size: tuple[int, int],
    aux_channels: int,
    device: torch.device,
    limit: int = 4096,
    speed: Speed = DEFAULT_SPEED,
) -> int | None:
    """Largest training batch (fwd + bwd + AdamW step, run as ``speed`` says) that fits
    on a CUDA device.

    ``None`` on other devices (CPU memory is not a fixed budget). A batch fits when
    two training steps run without :class:`torch.OutOfMemoryError`.
    """
    if device.type != "cuda":
        return None
    h, w = size
    net = speed.prepare(build().to(device)).train()
    opt = adamw(net.parameters(), lr=1e-4)
    scaler = speed.scaler(device)

    def fits(batch: int) -> bool:
        try:
            rgb = speed.layout(torch.randn(batch, 3, h, w, device=device))
            aux = speed.layout(torch.randn(batch, aux_channels, h, w, device=device))
            for _ in range(2):
                _train_step(net, opt, rgb, aux, speed, scaler)
            del rgb, aux
            _sync(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    return search_largest(fits, limit)


def network_builders(
    init_args: dict[str, Any], num_classes: int, aux_channels: int
) -> dict[str, Builder]:
    """Builders of the configured, plain and backbones-only networks from ``init_args``.

    Each builder makes a new network (with new random weights) on every call.
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RGBXSegmenter, "network")
    args = {**init_args, "num_classes": num_classes, "aux_channels": aux_channels}

    def build(kwargs: dict[str, Any]) -> nn.Module:
        net: nn.Module = parser.instantiate_classes(
            parser.parse_object({"network": kwargs})
        ).network
        return net

    # Every call builds a new network; the first one, built here, is handed out first.
    first = [build(args)]
    mid = first[0].fusion_stage == "mid"

    def model() -> nn.Module:
        return first.pop() if first else build(args)

    def plain() -> nn.Module:
        drop = ("align", "input_align", "rectify", "fusion", "feedback")
        kwargs = {k: v for k, v in args.items() if k not in drop}
        kwargs["fusion"] = {"class_path": "rgbx_fusion.models.fusion.simple.AddFusion"}
        return build(kwargs)

    def backbones() -> nn.Module:
        net = plain()
        if net.fusion_stage != "mid":
            raise ConfigError("the backbones-only variant needs fusion_stage: mid")
        encoder: nn.Module = net.encoder  # type: ignore[assignment]
        return encoder

    builders: dict[str, Builder] = {"model": model, "plain": plain}
    if mid:
        builders["backbones"] = backbones
    return builders


def network_init_args(
    configs: Sequence[str | Path], network_class: str = "RGBXSegmenter", mode: str = "benchmark"
) -> dict[str, Any]:
    """``model.network.init_args`` of a training config stack whose network is
    ``network_class`` (a :class:`ConfigError` naming ``mode`` otherwise).

    Backbone initialisations are switched off (``pretrained: false``, no ``backbone_weights``):
    timing does not depend on the weights, and the benchmark runs offline.
    """
    from rgbx_fusion.experiment import resolve
    from rgbx_fusion.inference import without_initial_weights

    network = resolve(configs).get("model.network")
    cls = str(getattr(network, "class_path", ""))
    if not cls.endswith(network_class):
        raise ConfigError(
            f"{' + '.join(map(str, configs))}: {mode} supports {network_class} "
            f"networks, found {cls or network!r}"
        )
    init_args = network.get("init_args")
    return without_initial_weights(init_args.as_dict() if init_args is not None else {})


def paired_ratio(model: Sequence[float], plain: Sequence[float]) -> float | None:
    """Median over repeats of ``model_i / plain_i`` − 1, or ``None`` without paired repeats.

    The variants run back to back in every repeat, so each ratio compares timings
    taken under the same machine load; on a machine whose speed drifts between
    repeats this varies less than the ratio of the two medians.
    """
    if not model or len(model) != len(plain) or min(plain) <= 0:
        return None
    return statistics.median(a / b for a, b in zip(model, plain, strict=True)) - 1


def overhead(rows: Sequence[Measurement]) -> dict[str, float]:
    """``model / plain − 1`` for latency, training step time, parameters and FLOPs.

    ``latency`` and ``train_step`` compare the medians; ``latency_paired`` and
    ``train_step_paired`` (present when both rows carry their repeats) are
    :func:`paired_ratio` of the repeats.
    """
    by = {r.variant: r for r in rows}
    if "model" not in by or "plain" not in by:
        return {}
    m, p = by["model"], by["plain"]
    out = {
        "latency": m.latency_ms / p.latency_ms - 1,
        "train_step": p.train_images_per_s / m.train_images_per_s - 1,
        "params": m.params / max(p.params, 1) - 1,
        "gflops": m.gflops / max(p.gflops, 1e-12) - 1,
    }
    for key, a, b in (
        ("latency_paired", m.latency_repeats_ms, p.latency_repeats_ms),
        ("train_step_paired", m.step_repeats_s, p.step_repeats_s),
    ):
        ratio = paired_ratio(a, b)
        if ratio is not None:
            out[key] = ratio
    return out


def as_dicts(rows: Sequence[Measurement]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
