"""Deployment export of a trained network: ONNX or ``torch.export``, with a parity check.

``rgbx-fusion export --ckpt best.ckpt --format onnx --size 480x640 --dynamic-batch`` writes
``best.onnx`` (one file, weights inside) and ``best.onnx.json`` (inputs, normalisation,
class names, measured parity), then runs the exported graph (onnxruntime, or the reloaded
``ExportedProgram`` for ``torch_export``) next to eager PyTorch on the same random inputs and
prints the largest absolute logit difference.

Convention:
    The exported graph is the network alone: inputs ``rgb`` (B, 3, H, W) and ``aux``
    (B, Ca, H, W), both already normalised as in training (rgb: ``(x / 255 − mean) / std``;
    aux: ``(x − aux_mean) / aux_std`` on valid pixels, missing pixels exactly 0), output
    ``logits`` (B, K, H, W). The normalisation constants are written to the JSON file.

    A multi-modality network (``MultiModalSegmenter``) takes one input per modality
    instead of ``aux``, named after it (``depth`` (B, 1, H, W), ``thermal`` ...), and
    ``present`` (B, M) bool, which modalities each sample holds (an absent modality's
    input is never read). Its parity check runs every presence pattern: all present,
    each modality absent, none present.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from rgbx_fusion.errors import ExportError

FORMATS = ("onnx", "torch_export")
SUFFIXES = {"onnx": ".onnx", "torch_export": ".pt2"}
INPUT_NAMES = ("rgb", "aux")
OUTPUT_NAME = "logits"
#: The largest max-abs logit difference between the export and eager PyTorch that passes.
TOLERANCE = 1e-3
#: Used when neither ``--size`` nor the run's ``config.yaml`` gives an input size.
DEFAULT_SIZE = (480, 640)


@dataclass
class ExportReport:
    """What an export wrote and how closely it matches eager PyTorch."""

    path: str
    format: str
    height: int
    width: int
    aux_channels: int
    num_classes: int
    dynamic_batch: bool
    export_seconds: float
    max_abs_diff: float
    parity_batches: list[int]
    tolerance: float
    normalization: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    inputs: dict[str, list[int | str]] = field(default_factory=dict)


@dataclass
class TrainedNetwork:
    """A network rebuilt from a checkpoint, with what deployment needs to feed it."""

    net: nn.Module
    num_classes: int
    aux_channels: int
    class_names: list[str]
    normalization: dict[str, Any]
    eval_size: tuple[int, int] | None
    modalities: dict[str, int] | None = None


class PerModalityInputs(nn.Module):
    """A multi-modality network as a graph of one input per modality and the presence mask.

    Shape:
        rgb: (B, 3, H, W); inputs: one (B, C_m, H, W) per modality in order, then present
        (B, M) bool -> logits (B, K, H, W)
    """

    def __init__(self, net: nn.Module, modalities: Mapping[str, int]) -> None:
        super().__init__()
        self.net = net
        self.names = tuple(modalities)
        self.num_classes = getattr(net, "num_classes", 0)

    def forward(self, rgb: Tensor, *inputs: Tensor) -> Tensor:
        *aux, present = inputs
        out: Tensor = self.net(rgb, dict(zip(self.names, aux, strict=True)), present)
        return out


def load_trained_network(ckpt: str | Path) -> TrainedNetwork:
    """Rebuild the network of a checkpoint (see :func:`rgbx_fusion.load_model`), in eval mode.

    Normalisation comes from the checkpoint; the evaluation size from the run's
    ``config.yaml`` next to ``checkpoints/`` when there is one.
    """
    from rgbx_fusion.inference import load_model

    model = load_model(ckpt)
    pre = model.preprocess
    data = _run_config(Path(ckpt)).get("data") or {}
    eval_size = data.get("eval_size")
    return TrainedNetwork(
        net=model.net.eval(),
        num_classes=model.num_classes,
        aux_channels=len(pre.aux_mean),
        class_names=list(model.class_names),
        normalization={
            "rgb_scale": 1 / 255,
            "rgb_mean": list(pre.rgb_mean),
            "rgb_std": list(pre.rgb_std),
            "aux_mean": list(pre.aux_mean),
            "aux_std": list(pre.aux_std),
            **({"modalities": dict(model.modalities)} if model.modalities else {}),
        },
        eval_size=(int(eval_size[0]), int(eval_size[1])) if eval_size else None,
        modalities=model.modalities,
    )


def _run_config(ckpt: Path) -> dict[str, Any]:
    """The resolved ``config.yaml`` of the run that wrote ``ckpt`` (``{}`` if absent)."""
    for folder in (ckpt.parent.parent, ckpt.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            loaded = yaml.safe_load(candidate.read_text())
            return loaded if isinstance(loaded, dict) else {}
    return {}


def example_inputs(
    batch: int, aux_channels: int, size: tuple[int, int], seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Seeded normalised-looking inputs: rgb and aux ~ N(0, 1).

    Shape:
        -> rgb (batch, 3, H, W), aux (batch, aux_channels, H, W)
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    return (
        torch.randn(batch, 3, h, w, generator=gen),
        torch.randn(batch, aux_channels, h, w, generator=gen),
    )


def modality_inputs(
    batch: int, modalities: Mapping[str, int], size: tuple[int, int], seed: int = 0
) -> tuple[Tensor, ...]:
    """Seeded inputs of :class:`PerModalityInputs`, every modality present.

    Shape:
        -> rgb (batch, 3, H, W), one (batch, C_m, H, W) per modality, present (batch, M)
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    rgb = torch.randn(batch, 3, h, w, generator=gen)
    aux = [torch.randn(batch, c, h, w, generator=gen) for c in modalities.values()]
    return (rgb, *aux, torch.ones(batch, len(modalities), dtype=torch.bool))


def presence_patterns(count: int) -> list[list[bool]]:
    """All present, each modality absent alone, none present (the parity check's rows)."""
    rows = [[True] * count]
    rows += [[j != i for j in range(count)] for i in range(count)]
    return rows + ([[False] * count] if count > 1 else [])


def input_names(modalities: Mapping[str, int] | None) -> list[str]:
    """The graph's input names: ``rgb, aux`` or ``rgb``, one per modality, ``present``."""
    return ["rgb", *modalities, "present"] if modalities else list(INPUT_NAMES)


def _dynamic_shapes(dynamic_batch: bool, inputs: int = 2) -> Any:
    if not dynamic_batch:
        return None
    batch = torch.export.Dim("batch", min=1, max=1024)
    if inputs == 2:
        return {name: {0: batch} for name in INPUT_NAMES}
    return ({0: batch}, tuple({0: batch} for _ in range(inputs - 1)))  # rgb, *inputs


@contextlib.contextmanager
def _quiet() -> Any:
    """Hide the exporters' progress lines, log records and advisory warnings.

    Failures still surface as exceptions; the logs would repeat them as graph dumps.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _export_torch(
    net: nn.Module, args: tuple[Tensor, ...], path: Path | None, dynamic: bool, **_: Any
) -> torch.export.ExportedProgram:
    with _quiet():
        program = torch.export.export(net, args, dynamic_shapes=_dynamic_shapes(dynamic, len(args)))
        if path is not None:
            torch.export.save(program, path)
    return program


def _export_onnx(
    net: nn.Module,
    args: tuple[Tensor, ...],
    path: Path | None,
    dynamic: bool,
    opset: int | None = None,
    names: Sequence[str] | None = None,
) -> Any:
    large = sum(p.numel() * p.element_size() for p in net.parameters()) > 1.8 * 2**30
    with _quiet():
        program = torch.onnx.export(
            net,
            args,
            dynamo=True,
            input_names=list(names or INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=_dynamic_shapes(dynamic, len(args)),
            opset_version=opset,
            verbose=False,
        )
        if program is None:  # pragma: no cover - only the legacy exporter returns None
            raise ExportError("torch.onnx.export returned no program")
        if path is not None:  # one file unless protobuf's 2 GB limit forces external data
            program.save(str(path), external_data=large)
    return program


EXPORTERS: dict[str, Callable[..., Any]] = {"onnx": _export_onnx, "torch_export": _export_torch}


def export_network(
    net: nn.Module,
    path: str | Path,
    fmt: str,
    size: tuple[int, int],
    aux_channels: int,
    dynamic_batch: bool = False,
    batch: int = 1,
    opset: int | None = None,
    tolerance: float = TOLERANCE,
    modalities: Mapping[str, int] | None = None,
) -> ExportReport:
    """Export ``net`` (``(rgb, aux) -> logits``) and check it against eager PyTorch.

    Args:
        net: the network, in eval mode.
        path: output file (``.onnx`` or ``.pt2``).
        fmt: ``"onnx"`` or ``"torch_export"``.
        size: input ``(height, width)``; fixed in the exported graph.
        aux_channels: channels of the aux input.
        dynamic_batch: export with a symbolic batch dimension (checked at two batch sizes).
        batch: batch size of a static export.
        opset: ONNX opset (``None``: the exporter's default).
        tolerance: largest max-abs logit difference that passes.
        modalities: name → channels of a multi-modality network: the graph takes one
            input per modality and ``present`` (see the module doc).

    Returns:
        The report; raises :class:`~rgbx_fusion.errors.ExportError` naming the parts that
        cannot be exported, or when the parity check fails.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    graph = net if not modalities else PerModalityInputs(net, modalities).eval()
    names = input_names(modalities)
    # A symbolic batch needs an example batch > 1 (sizes 0 and 1 are specialised).
    trace_batch = 2 if dynamic_batch else batch
    args = (
        modality_inputs(trace_batch, modalities, size)
        if modalities
        else example_inputs(trace_batch, aux_channels, size)
    )
    start = time.perf_counter()
    try:
        with torch.no_grad():
            EXPORTERS[fmt](graph, args, out, dynamic_batch, opset=opset, names=names)
    except ExportError:
        raise
    except Exception as exc:
        raise _diagnose(graph, args, fmt, exc) from exc
    seconds = time.perf_counter() - start
    batches = [1, 3] if dynamic_batch else [batch]
    diff = parity(graph, out, fmt, batches, aux_channels, size, modalities)
    if not diff <= tolerance:
        raise ExportError(
            f"{out}: the {fmt} export disagrees with PyTorch: max |Δlogit| = {diff:.3g} > "
            f"{tolerance:g}"
        )
    return ExportReport(
        path=str(out),
        format=fmt,
        height=size[0],
        width=size[1],
        aux_channels=aux_channels,
        num_classes=int(getattr(net, "num_classes", 0)),
        dynamic_batch=dynamic_batch,
        export_seconds=seconds,
        max_abs_diff=diff,
        parity_batches=batches,
        tolerance=tolerance,
        inputs=_input_shapes("batch" if dynamic_batch else batch, aux_channels, size, modalities),
    )


def _input_shapes(
    batch: int | str, aux_channels: int, size: tuple[int, int], modalities: Mapping[str, int] | None
) -> dict[str, list[int | str]]:
    """Each graph input's shape (``present``: (B, M) bool)."""
    channels = dict(modalities) if modalities else {"aux": aux_channels}
    shapes: dict[str, list[int | str]] = {"rgb": [batch, 3, *size]}
    shapes.update({name: [batch, c, *size] for name, c in channels.items()})
    if modalities:
        shapes["present"] = [batch, len(modalities)]
    return shapes


@torch.no_grad()
def parity(
    net: nn.Module,
    path: Path,
    fmt: str,
    batches: Sequence[int],
    aux_channels: int,
    size: tuple[int, int],
    modalities: Mapping[str, int] | None = None,
) -> float:
    """Max abs logit difference between the saved export and eager ``net`` over ``batches``
    (and, for a multi-modality network, over :func:`presence_patterns`)."""
    names = input_names(modalities)
    run = _runner(path, fmt, names)
    worst = 0.0
    for i, b in enumerate(batches):
        cases: list[tuple[Tensor, ...]]
        if not modalities:
            cases = [example_inputs(b, aux_channels, size, seed=100 + i)]
        else:
            *inputs, _ = modality_inputs(b, modalities, size, seed=100 + i)
            cases = [
                (*inputs, torch.tensor([row] * b, dtype=torch.bool))
                for row in presence_patterns(len(modalities))
            ]
        for args in cases:
            ref = net(*args)
            got = run(*args)
            if got.shape != ref.shape:
                raise ExportError(
                    f"{path}: exported output shape {tuple(got.shape)} differs from "
                    f"PyTorch's {tuple(ref.shape)} at batch {b}"
                )
            worst = max(worst, float((got - ref).abs().max()))
    return worst


def _runner(path: Path, fmt: str, names: Sequence[str] = INPUT_NAMES) -> Callable[..., Tensor]:
    if fmt == "torch_export":
        module = torch.export.load(path).module()
        return lambda *args: module(*args)
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - installed with the export extra
        raise ExportError(
            "the ONNX parity check needs onnxruntime: pip install 'rgbx-fusion[export]'"
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(*args: Tensor) -> Tensor:
        feeds = {name: t.numpy() for name, t in zip(names, args, strict=True)}
        return torch.from_numpy(session.run([OUTPUT_NAME], feeds)[0])

    return run


def _parts(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The swappable parts of a network: aligners, rectifiers, fusions, decoders."""
    from rgbx_fusion.models.align.base import AlignBase
    from rgbx_fusion.models.fusion.base import FusionBase, RectifyBase
    from rgbx_fusion.models.topologies.late import LateFusion

    kinds = (AlignBase, FusionBase, RectifyBase, LateFusion)
    return [
        (name, m)
        for name, m in net.named_modules()
        if name
        and (isinstance(m, kinds) or type(m).__module__.startswith("rgbx_fusion.models.decoders"))
    ]


def _diagnose(net: nn.Module, args: tuple[Tensor, ...], fmt: str, error: Exception) -> ExportError:
    """Export every part alone on the inputs it saw, to name the ones that fail."""
    captured: dict[str, tuple[Tensor, ...]] = {}
    hooks = []
    for name, module in _parts(net):

        def keep(_: nn.Module, inputs: tuple[Any, ...], name: str = name) -> None:
            captured.setdefault(name, tuple(inputs))

        hooks.append(module.register_forward_pre_hook(keep))
    try:
        with torch.no_grad():
            net(*args)
    except Exception:  # the eager pass itself fails: report the export error as it is
        captured.clear()
    finally:
        for hook in hooks:
            hook.remove()
    failing: list[tuple[str, str]] = []
    for name, module in _parts(net):
        if name not in captured or any(name.startswith(f + ".") for f, _ in failing):
            continue
        try:
            with torch.no_grad():
                EXPORTERS[fmt](module, captured[name], None, False)
        except Exception as exc:
            failing.append((name, f"{type(module).__name__} ({_first_line(exc)})"))
    first = _first_line(error)
    if not failing:
        return ExportError(f"{type(net).__name__} cannot be exported to {fmt}: {first}")
    named = "; ".join(f"{name}: {what}" for name, what in failing)
    return ExportError(
        f"{type(net).__name__} cannot be exported to {fmt}; the parts that fail alone are "
        f"{named}. Replace them by an exportable operator (see `rgbx-fusion list fusions`) "
        "or make their forward free of data-dependent Python control flow"
    )


def _first_line(exc: BaseException) -> str:
    """First line of the innermost cause (the exporters wrap the useful message)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:240]}" if lines else type(exc).__name__
