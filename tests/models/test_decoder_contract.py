"""Contract suite: every DECODERS entry keeps the DecoderBase promises."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import rgbx_fusion.models.decoders as decoder_pkg
from rgbx_fusion.models.decoders import DECODERS, DecoderBase

IN_CHANNELS = (8, 16, 24, 32)


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_all_subclasses(sub)}
    return found


def test_registry_covers_every_decoder_in_the_package() -> None:
    for info in pkgutil.walk_packages(decoder_pkg.__path__, decoder_pkg.__name__ + "."):
        importlib.import_module(info.name)
    here = {
        cls
        for cls in _all_subclasses(DecoderBase)
        if cls.__module__.startswith(decoder_pkg.__name__) and not cls.__name__.startswith("_")
    }
    assert here - set(DECODERS.values()) == set(), "add these to DECODERS"
    for cls in DECODERS.values():
        assert issubclass(cls, DecoderBase)
        assert cls.__name__ in decoder_pkg.__all__
        assert cls.summary and "\n" not in cls.summary


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_output_at_the_finest_level_batch_one_non_square(name: str) -> None:
    torch.manual_seed(0)
    decoder = DECODERS[name](IN_CHANNELS, channels=24).eval()
    assert decoder.in_channels == IN_CHANNELS and decoder.out_channels == 24
    sizes = [(-(-36 // 2**i), -(-52 // 2**i)) for i in range(4)]  # 36×52 … 5×7
    feats = [torch.randn(1, c, h, w) for c, (h, w) in zip(IN_CHANNELS, sizes, strict=True)]
    with torch.no_grad():
        out = decoder(feats)
    assert out.shape == (1, 24, 36, 52)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_no_levels_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="at least one feature level"):
        DECODERS[name]([])
