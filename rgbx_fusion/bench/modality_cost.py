"""What each added modality costs a ``MultiModalSegmenter``: parameters, GFLOPs, latency.

``rgbx-fusion benchmark --modality-cost --config <stack>`` builds the configured
multi-modality network for the first 1, 2, ..., M aux modalities, once with one encoder
per aux modality (``aux_encoder: separate``) and once with one encoder shared by all
(``shared``), and measures each on the same inputs.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rgbx_fusion.bench.benchmark import network_init_args, timer
from rgbx_fusion.bench.flops import count_flops, count_parameters
from rgbx_fusion.errors import ConfigError

MODES = ("separate", "shared")


def multimodal_init_args(configs: Sequence[str | Path]) -> tuple[dict[str, Any], dict[str, int]]:
    """``model.network.init_args`` of a ``MultiModalSegmenter`` config stack (no initial
    weights) and its dataset's modalities (one channel each, from ``modality``).

    Raises:
        ConfigError: the stack's network is another class.
    """
    from rgbx_fusion.experiment import resolve

    args = network_init_args(configs, "MultiModalSegmenter", "--modality-cost")
    modality = resolve(configs).get("data.dataset.init_args.modality") or ""
    names = [m.strip() for m in str(modality).split(",") if m.strip()]
    return args, dict.fromkeys(names, 1)


def parse_modalities(text: str) -> dict[str, int]:
    """``"depth:1,thermal:1,events:3"`` → ``{"depth": 1, "thermal": 1, "events": 3}``."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, channels = part.partition(":")
        try:
            out[name.strip()] = int(channels or 1)
        except ValueError as exc:
            raise ConfigError(f"--modalities: expected name:channels, got {part!r}") from exc
    if not out:
        raise ConfigError(f"--modalities: no modality in {text!r}")
    return out


def build(
    init_args: Mapping[str, Any], num_classes: int, modalities: Mapping[str, int]
) -> nn.Module:
    """A ``MultiModalSegmenter`` from config ``init_args`` (jsonargparse, as the CLI)."""
    from jsonargparse import ArgumentParser

    from rgbx_fusion.models.multimodal import MultiModalSegmenter

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiModalSegmenter, "network")
    kwargs = {**init_args, "num_classes": num_classes, "modalities": dict(modalities)}
    net: nn.Module = parser.instantiate_classes(parser.parse_object({"network": kwargs})).network
    return net


@torch.no_grad()
def modality_cost(
    init_args: Mapping[str, Any],
    modalities: Mapping[str, int],
    num_classes: int,
    size: tuple[int, int],
    device: torch.device,
    warmup: int = 1,
    iters: int = 3,
    clock: str = "wall",
) -> list[dict[str, Any]]:
    """One row per (number of aux modalities, aux encoder mode): params, GFLOPs and the
    median forward latency at batch 1, every modality present."""
    timed = timer(clock, device)
    names = list(modalities)
    rows = []
    for k in range(1, len(names) + 1):
        mods = {n: modalities[n] for n in names[:k]}
        for mode in MODES:
            net = build({**init_args, "aux_encoder": mode}, num_classes, mods).to(device).eval()
            gen = torch.Generator().manual_seed(0)
            rgb = torch.randn(1, 3, *size, generator=gen).to(device)
            aux = torch.randn(1, sum(mods.values()), *size, generator=gen).to(device)

            def forward(net: nn.Module = net, rgb: Tensor = rgb, aux: Tensor = aux) -> None:
                net(rgb, aux)

            for _ in range(warmup):
                forward()
            times = [timed(forward) for _ in range(iters)]
            rows.append(
                {
                    "modalities": "+".join(mods),
                    "streams": k + 1,
                    "aux_encoder": mode,
                    "height": size[0],
                    "width": size[1],
                    "params": count_parameters(net),
                    "gflops": count_flops(net, rgb, aux) / 1e9,
                    "latency_ms": statistics.median(times) * 1e3,
                }
            )
    return rows
