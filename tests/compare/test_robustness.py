"""Input perturbations of the robustness sweep."""

from __future__ import annotations

import pytest
import torch

from rgbx_fusion.compare.robustness import (
    PERTURBATIONS,
    _cached,
    holes,
    is_clean,
    perturb,
    rotate_aux,
    shift_aux,
)

MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "rgb": torch.randn(2, 3, 8, 12, generator=g),
        "aux": torch.randn(2, 1, 8, 12, generator=g),
    }


def test_shift_moves_aux_right_and_fills_zeros() -> None:
    aux = torch.arange(12.0).view(1, 1, 1, 12)
    out = shift_aux(aux, 3)
    assert out[0, 0, 0, :3].eq(0).all()
    assert torch.equal(out[0, 0, 0, 3:], aux[0, 0, 0, :9])
    assert torch.equal(shift_aux(aux, -2)[0, 0, 0, :10], aux[0, 0, 0, 2:])
    assert shift_aux(aux, 0) is aux
    assert shift_aux(aux, 20).eq(0).all()


def test_holes_zero_about_the_requested_share() -> None:
    aux = torch.ones(16, 1, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = holes(aux, 0.5, g)
    assert 0.4 < out.eq(0).float().mean().item() < 0.6
    assert holes(aux, 1.0, g).eq(0).all()
    assert holes(aux, 0.0, g) is aux


@pytest.mark.parametrize("kind", sorted(PERTURBATIONS))
def test_clean_level_is_the_identity(kind: str) -> None:
    batch = _batch()
    clean = PERTURBATIONS[kind][0]
    assert is_clean(kind, clean) and not any(is_clean(kind, x) for x in PERTURBATIONS[kind][1:])
    rgb, aux = perturb(batch, kind, clean, MEAN, STD, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rgb, batch["rgb"])
    torch.testing.assert_close(aux, batch["aux"])


def test_darkening_scales_intensities_and_keeps_aux() -> None:
    batch = _batch()
    rgb, aux = perturb(batch, "rgb_dark_factor", 0.25, MEAN, STD, torch.Generator())
    m, s = MEAN.view(1, 3, 1, 1), STD.view(1, 3, 1, 1)
    torch.testing.assert_close(rgb * s + m, (batch["rgb"] * s + m) * 0.25)
    assert aux is batch["aux"]


def test_noise_is_reproducible_and_unknown_kinds_fail() -> None:
    batch = _batch()
    a = perturb(batch, "aux_noise_std", 0.5, MEAN, STD, torch.Generator().manual_seed(3))[1]
    b = perturb(batch, "aux_noise_std", 0.5, MEAN, STD, torch.Generator().manual_seed(3))[1]
    torch.testing.assert_close(a, b)
    assert (a - batch["aux"]).std().item() == pytest.approx(0.5, rel=0.3)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(batch, "blur", 1.0, MEAN, STD, torch.Generator())


def test_rotation_turns_aux_about_the_centre() -> None:
    aux = torch.zeros(1, 1, 9, 9)
    aux[0, 0, 4, 6:] = 1.0  # a bar pointing right from the centre
    quarter = rotate_aux(aux, 90.0)
    torch.testing.assert_close(quarter, torch.rot90(aux, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    assert rotate_aux(aux, 0.0) is aux
    small = rotate_aux(torch.ones(1, 1, 32, 32), 5.0)
    assert small[0, 0, 0, -1] < 1.0 and small[0, 0, 16, 16] == pytest.approx(1.0)  # corners leave


def test_rgb_noise_stays_in_the_intensity_range_and_keeps_aux() -> None:
    batch = _batch()
    rgb, aux = perturb(batch, "rgb_noise_std", 0.1, MEAN, STD, torch.Generator().manual_seed(1))
    m, s = MEAN.view(1, 3, 1, 1), STD.view(1, 3, 1, 1)
    raw, clean = rgb * s + m, (batch["rgb"] * s + m).clamp(0, 1)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    inside = (clean > 0.3) & (clean < 0.7)  # where clamping cannot act
    assert (raw - clean)[inside].std().item() == pytest.approx(0.1, rel=0.3)
    assert aux is batch["aux"]


def test_test_batches_are_cached_only_when_small() -> None:
    batches = [{"rgb": torch.zeros(2, 3, 4, 4), "meta": ["a", "b"]} for _ in range(3)]  # 384 B each
    assert _cached(iter(batches)) == batches
    assert _cached(iter(batches), limit_bytes=1000) is None
