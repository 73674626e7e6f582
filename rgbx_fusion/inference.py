"""Inference without the CLI: ``rgbx_fusion.load_model(ckpt)``.

A checkpoint written by ``rgbx-fusion fit`` (or ``rgbx-fusion import cmx``)
holds the network's configuration (``hyper_parameters["network"]``, a
``class_path`` + ``init_args``), its weights (``state_dict``, prefixed
``net.``) and the data module's aux normalisation. :func:`load_model` rebuilds
the network from that configuration, loads the weights strictly (with
``weights_only=True``) and returns it in eval mode together with the
normalisation it expects::

    model = rgbx_fusion.load_model("runs/.../best.ckpt")
    rgb, aux = model.preprocess(rgb_uint8_hwc, aux_hwc)   # (1, 3, H, W), (1, Ca, H, W)
    logits = model(rgb, aux)                             # (1, K, H, W)
    labels = model.predict(rgb_uint8_hwc, aux_hwc, scales=(0.75, 1, 1.25), flip=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from rgbx_fusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from rgbx_fusion.errors import CheckpointError, ConfigError
from rgbx_fusion.models.state_dict import check_keys
from rgbx_fusion.models.tta import multiscale_probabilities


def _network_parser() -> Any:
    from jsonargparse import ArgumentParser

    from rgbx_fusion.tasks.segmentation import NetworkFactory

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--network", type=NetworkFactory)
    return parser


def full_network_config(network: Mapping[str, Any]) -> dict[str, Any]:
    """``network`` (``class_path`` + some ``init_args``) with every argument written out.

    Arguments left out take the class's defaults (a class default becomes a
    ``class_path``), so merging the result into another config (as ``test
    --ckpt_path`` does) cannot pick up that config's values.
    """
    import importlib
    import inspect

    class_path = str(network["class_path"])
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    given = dict(network.get("init_args") or {})
    params = list(inspect.signature(cls).parameters.values())[2:]  # after num_classes, aux
    full: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in given:
            full[p.name] = given.pop(p.name)
        elif p.default is not inspect.Parameter.empty:
            full[p.name] = _plain(p.default)
    if given:
        raise ConfigError(f"{class_path} has no parameters {sorted(given)}")
    return {"class_path": class_path, "init_args": full}


def _plain(value: Any) -> Any:
    """A default as config data: classes as ``class_path``, tuples as lists."""
    if isinstance(value, type):
        return {"class_path": f"{value.__module__}.{value.__qualname__}"}
    if isinstance(value, tuple):
        return list(value)
    return value


def without_initial_weights(init_args: Mapping[str, Any]) -> dict[str, Any]:
    """Network ``init_args`` with backbone initialisations (timm download, local file) off.

    For networks whose weights come from elsewhere (a checkpoint's state dict) or do not matter
    (timing): fetching them again would only fail offline, or on another machine where the
    recorded file path does not exist.
    """
    init = dict(init_args)
    if "pretrained" in init:  # only where the network takes it (any class_path may load)
        init["pretrained"] = False
    init.pop("backbone_weights", None)
    return init


def build_network(
    network: Mapping[str, Any], num_classes: int, aux_channels: int | Mapping[str, int]
) -> nn.Module:
    """Build a network from its config (``class_path`` + ``init_args``), as the CLI does.

    ``aux_channels``: the aux channels, or for a multi-modality network its modalities
    (name → channels).

    Raises:
        ConfigError: the configuration does not describe a network.
    """
    parser = _network_parser()
    try:
        cfg = parser.parse_object({"network": dict(network)})
    except Exception as exc:  # jsonargparse raises its own ArgumentError
        raise ConfigError(
            f"cannot read the network configuration {dict(network)!r}: {exc}"
        ) from exc
    factory = parser.instantiate(cfg).network
    net: nn.Module = factory(
        num_classes, aux_channels if isinstance(aux_channels, int) else dict(aux_channels)
    )
    return net


class Preprocess:
    """The normalisation a loaded network expects, as a callable on raw images.

    Convention (the data module's :class:`~rgbx_fusion.data.transforms.Normalizer`):
    rgb uint8 → ``(x / 255 - rgb_mean) / rgb_std``; aux (dataset units: metres for
    depth, [0, 1] for HHA) → ``(x - aux_mean) / aux_std`` where any channel is
    non-zero, exactly 0 elsewhere (missing pixels).

    A multi-modality model (``modalities``: name → channels) normalises each modality's
    channels on their own, and :meth:`modalities_to_inputs` takes one image per modality.

    Attributes:
        rgb_mean, rgb_std, aux_mean, aux_std: per-channel statistics (all modalities'
            channels in order).

    Shape:
        rgb: (H, W, 3) uint8; aux: (H, W, Ca) or (H, W) float -> ((1, 3, H, W), (1, Ca, H, W))
    """

    def __init__(
        self,
        rgb_mean: Sequence[float],
        rgb_std: Sequence[float],
        aux_mean: Sequence[float],
        aux_std: Sequence[float],
        modalities: Mapping[str, int] | None = None,
    ) -> None:
        self.rgb_mean = tuple(float(v) for v in rgb_mean)
        self.rgb_std = tuple(float(v) for v in rgb_std)
        self.aux_mean = tuple(float(v) for v in aux_mean)
        self.aux_std = tuple(float(v) for v in aux_std)
        self.modalities = dict(modalities) if modalities else None
        groups = list(self.modalities.values()) if self.modalities else None
        self._normalizer = Normalizer(
            self.rgb_mean, self.rgb_std, self.aux_mean, self.aux_std, groups
        )

    def modalities_to_inputs(
        self,
        rgb: npt.ArrayLike | Tensor,
        aux: Mapping[str, npt.ArrayLike | Tensor | None],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised ``(rgb, aux, present)`` of a multi-modality model from one raw image
        per modality (H×W or H×W×C, dataset units); a modality left out or ``None`` is
        absent (``present`` false, its channels 0).

        Raises:
            ConfigError: the model has one aux input, a name it does not know, or an image
                of the wrong size or channel count (named).

        Shape:
            -> (1, 3, H, W), (1, ΣC, H, W), (1, M) bool
        """
        if self.modalities is None:
            raise ConfigError(
                "this model takes one aux image, not one per modality: pass aux as an array"
            )
        unknown = [k for k in aux if k not in self.modalities]
        if unknown:
            raise ConfigError(
                f"aux names {unknown}, which are not modalities of this model "
                f"{list(self.modalities)}"
            )
        rgb_np = np.asarray(rgb.cpu() if isinstance(rgb, Tensor) else rgb)
        planes, present = [], []
        for name, channels in self.modalities.items():
            value = aux.get(name)
            if value is None:
                planes.append(np.zeros((*rgb_np.shape[:2], channels), np.float32))
                present.append(False)
                continue
            arr = np.asarray(value.cpu() if isinstance(value, Tensor) else value, np.float32)
            arr = arr[..., None] if arr.ndim == 2 else arr
            if arr.shape != (*rgb_np.shape[:2], channels):
                raise ConfigError(
                    f"aux[{name!r}] must be H×W×{channels} matching rgb {rgb_np.shape[:2]}, "
                    f"got {arr.shape}"
                )
            planes.append(arr)
            present.append(True)
        x_rgb, x_aux = self(rgb_np, np.concatenate(planes, axis=-1))
        return x_rgb, x_aux, torch.tensor([present], dtype=torch.bool)

    def __call__(
        self, rgb: npt.ArrayLike | Tensor, aux: npt.ArrayLike | Tensor
    ) -> tuple[Tensor, Tensor]:
        rgb_np = np.asarray(rgb.cpu() if isinstance(rgb, Tensor) else rgb)
        aux_np = np.asarray(aux.cpu() if isinstance(aux, Tensor) else aux, dtype=np.float32)
        if aux_np.ndim == 2:
            aux_np = aux_np[..., None]
        if rgb_np.ndim != 3 or rgb_np.shape[2] != 3 or rgb_np.dtype != np.uint8:
            raise ConfigError(
                f"preprocess expects rgb as an H×W×3 uint8 array, got {rgb_np.dtype} {rgb_np.shape}"
            )
        if aux_np.shape[:2] != rgb_np.shape[:2] or aux_np.shape[2] != len(self.aux_mean):
            raise ConfigError(
                f"preprocess expects aux as H×W×{len(self.aux_mean)} matching rgb "
                f"{rgb_np.shape[:2]}, got {aux_np.shape}"
            )
        mask = np.zeros(rgb_np.shape[:2], dtype=np.int64)
        out = self._normalizer({"rgb": rgb_np, "aux": aux_np, "mask": mask, "meta": {}})
        return out["rgb"][None], out["aux"][None]

    def __repr__(self) -> str:
        return (
            f"Preprocess(rgb_mean={self.rgb_mean}, rgb_std={self.rgb_std}, "
            f"aux_mean={self.aux_mean}, aux_std={self.aux_std}"
            + (f", modalities={self.modalities})" if self.modalities else ")")
        )


class SegmentationModel(nn.Module):
    """A trained network with what is needed to use it: normalisation and class names.

    Attributes:
        net: the network, ``net(rgb, aux) -> logits`` (multi-modality:
            ``net(rgb, aux, present)``).
        modalities: name → channels of a multi-modality model, else ``None``.
        preprocess: :class:`Preprocess` of raw images into the network's inputs.
        class_names: one name per output class.
        ignore_index: label value the metrics ignored in training.
        source: where the weights came from (file name, and for imports the format).

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W), both normalised -> logits (B, K, H, W)
    """

    def __init__(
        self,
        net: nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str],
        ignore_index: int = 255,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.preprocess = preprocess
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.source = dict(source or {})
        self.modalities = preprocess.modalities

    def forward(self, rgb: Tensor, aux: Tensor, present: Tensor | None = None) -> Tensor:
        out: Tensor = self.net(rgb, aux) if present is None else self.net(rgb, aux, present)
        return out

    @torch.no_grad()
    def predict(
        self,
        rgb: npt.ArrayLike | Tensor,
        aux: npt.ArrayLike | Tensor | Mapping[str, npt.ArrayLike | Tensor | None],
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> Tensor:
        """Label map of raw images (see :class:`Preprocess`), optionally multi-scale + flip.

        A multi-modality model takes ``aux`` as a dict of one image per modality; the
        modalities left out (or ``None``) are absent.

        Shape:
            rgb: (H, W, 3) uint8; aux: (H, W, Ca) or {name: (H, W, C)} -> (H, W) int64
        """
        present = None
        if isinstance(aux, Mapping):
            x_rgb, x_aux, present = self.preprocess.modalities_to_inputs(rgb, aux)
        elif self.modalities is not None:
            raise ConfigError(
                f"this model takes one aux image per modality: pass aux as a dict with keys "
                f"from {list(self.modalities)}"
            )
        else:
            x_rgb, x_aux = self.preprocess(rgb, aux)
        device = next(self.parameters()).device
        probs = multiscale_probabilities(
            self,
            x_rgb.to(device),
            x_aux.to(device),
            scales,
            flip,
            None if present is None else present.to(device),
        )
        return probs.argmax(1)[0].cpu()


def load_model(ckpt: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModel:
    """Rebuild a checkpoint's network, load its weights and return it ready for inference.

    Args:
        ckpt: a checkpoint of ``rgbx-fusion fit`` or ``rgbx-fusion import``.
        map_location: device of the returned model.

    Returns:
        A :class:`SegmentationModel` in eval mode: ``model(rgb, aux) -> logits``
        on normalised tensors, ``model.preprocess`` for raw images.

    Raises:
        CheckpointError: unreadable file, no network configuration in it.
        WeightsMismatchError: the weights do not fit the configured network.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle / zip errors have no common base class
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({exc})") from exc
    hp = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    if not isinstance(hp, Mapping) or not isinstance(hp.get("network"), Mapping):
        raise CheckpointError(
            f"{path} holds no network configuration (hyper_parameters['network']): load_model "
            "needs a checkpoint written by 'rgbx-fusion fit' or 'rgbx-fusion import'"
        )
    num_classes, aux_channels = int(hp["num_classes"]), int(hp.get("aux_channels", 1))
    modalities = hp.get("modalities") or None
    network = hp["network"]
    network = {**network, "init_args": without_initial_weights(network.get("init_args") or {})}
    net = build_network(network, num_classes, modalities or aux_channels)
    weights = {k[4:]: v for k, v in payload.get("state_dict", {}).items() if k.startswith("net.")}
    target = net.state_dict()
    check_keys({k: v.shape for k, v in target.items()}, weights, f"weights in {path}")
    net.load_state_dict(weights, strict=True)
    net.to(map_location).eval()
    dm_state = payload.get("RGBXDataModule") or {}
    dm_hp = payload.get("datamodule_hyper_parameters") or {}
    aux_mean = dm_state.get("aux_mean") or dm_hp.get("aux_mean")
    aux_std = dm_state.get("aux_std") or dm_hp.get("aux_std")
    if aux_mean is None or aux_std is None:
        raise CheckpointError(
            f"{path} does not record the aux normalisation (the data module's aux_mean / "
            "aux_std); it was not written by a fit run of this toolkit"
        )
    preprocess = Preprocess(
        dm_hp.get("rgb_mean", IMAGENET_MEAN),
        dm_hp.get("rgb_std", IMAGENET_STD),
        aux_mean,
        aux_std,
        modalities,
    )
    names = hp.get("class_names") or [f"class_{i}" for i in range(num_classes)]
    source = {"file": path.name, **dict(payload.get("rgbx_fusion_source") or {})}
    model = SegmentationModel(net, preprocess, names, int(hp.get("ignore_index", 255)), source)
    return model.eval()


__all__ = [
    "Preprocess",
    "SegmentationModel",
    "build_network",
    "full_network_config",
    "load_model",
    "without_initial_weights",
]
