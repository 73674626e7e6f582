"""Test-time augmentation: multi-scale and horizontal-flip inference.

The usual evaluation protocol of RGB-X segmentation papers (CMX, SegFormer,
mmseg's ``aug_test``): run the network on the inputs resized by every scale
(and on their mirror image), bring each output back to the input size and
average the class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from rgbx_fusion.errors import ConfigError

Network = Callable[..., Tensor]  # net(rgb, aux) or net(rgb, aux, present)


def parse_scales(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"0.5,0.75,1"`` or ``[0.5, 0.75, 1]`` → ``(0.5, 0.75, 1.0)``; ``None`` → ``(1.0,)``.

    Example:
        >>> parse_scales("0.5, 1,1.5")
        (0.5, 1.0, 1.5)
    """
    if text is None:
        return (1.0,)
    items = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        scales = tuple(float(s) for s in items if s != "")
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"eval scales must be positive numbers like 0.5,0.75,1,1.25,1.5, got {text!r}"
        ) from exc
    if not scales or any(not s > 0 for s in scales):
        raise ConfigError(f"eval scales must be positive numbers, got {text!r}")
    return scales


def describe_mode(scales: Sequence[float], flip: bool) -> str:
    """``"single-scale"``, ``"single-scale + flip"`` or ``"multi-scale 0.5,1,1.5 + flip"``."""
    if tuple(scales) == (1.0,):
        name = "single-scale"
    else:
        name = "multi-scale " + ",".join(f"{s:g}" for s in scales)
    return name + (" + flip" if flip else "")


def multiscale_probabilities(
    net: Network,
    rgb: Tensor,
    aux: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    present: Tensor | None = None,
) -> Tensor:
    """Class probabilities averaged over input scales and (optionally) horizontal flips.

    Both inputs are resized bilinearly (``align_corners=False``) to
    ``round(H·s) × round(W·s)``; each output's logits are resized back to
    ``H × W`` bilinearly, turned into probabilities by a softmax over classes and
    averaged with equal weights (flipped outputs are flipped back first).

    Args:
        net: ``net(rgb, aux) -> logits`` at input resolution.
        rgb: normalised RGB.
        aux: normalised aux.
        scales: input scales; ``(1.0,)`` without ``flip`` is a plain forward.
        flip: also run on the mirrored inputs.
        present: (B, M) modality presence of a multi-modality network (passed as is to
            every forward: presence does not change with scale or mirroring).

    Shape:
        rgb: (B, 3, H, W); aux: (B, Ca, H, W) -> (B, K, H, W), summing to 1 over K.
    """
    size = rgb.shape[-2:]
    total: Tensor | None = None
    count = 0
    for s in scales:
        hw = (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
        r, a = (rgb, aux) if hw == tuple(size) else (_resize(rgb, hw), _resize(aux, hw))
        for mirrored in (False, True) if flip else (False,):
            x_r, x_a = (r.flip(-1), a.flip(-1)) if mirrored else (r, a)
            logits = net(x_r, x_a) if present is None else net(x_r, x_a, present)
            if mirrored:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = _resize(logits, (size[0], size[1]))
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    if total is None:
        raise ConfigError("multiscale_probabilities needs at least one scale")
    return total / count


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
