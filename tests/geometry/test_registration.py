"""Classical registration: recovery of known warps, batches, holes, failures and bad input."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import Tensor

from rgbx_fusion.bench.registration import (
    endpoint_error,
    misregister,
    random_transform,
    read_pair,
)
from rgbx_fusion.data.sets.synthetic_scene import render_frame
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.geometry.registration import register

H, W = 240, 320
F64 = npt.NDArray[np.float64]


@cache
def _day_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A registered synthetic RGB-T pair lit by day: RGB (H, W, 3), thermal (H, W, 1)."""
    frame = render_frame(seed, H, W, "thermal", daylight=True)
    return frame.rgb.astype(np.float32) / 255.0, frame.aux[..., None]


def _tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def _homography(rng: np.random.Generator) -> F64:
    m = random_transform(rng, H, W, max_shift=6.0, max_rotation=2.0, max_scale=0.03)
    m[2, :2] = rng.uniform(-4e-5, 4e-5, size=2)
    return m


def _translation(rng: np.random.Generator) -> F64:
    m = np.eye(3)
    m[:2, 2] = rng.uniform(-6.0, 6.0, size=2)
    return m


def _similarity(rng: np.random.Generator) -> F64:
    return random_transform(rng, H, W, max_shift=6.0, max_rotation=2.0, max_scale=0.03)


@pytest.mark.parametrize(
    ("model", "draw"),
    [
        ("translation", _translation),
        ("similarity", _similarity),
        ("affine", _similarity),
        ("homography", _homography),
    ],
)
def test_each_model_recovers_a_known_warp(model: str, draw: object) -> None:
    rgb, aux = _day_pair(3)
    truth = draw(np.random.default_rng(7))  # type: ignore[operator]
    warped = misregister(aux, truth, nearest=False)
    result = register(_tensor(rgb), _tensor(warped), model)
    assert result.aux_from_rgb.dtype == torch.float64
    assert result.aux_from_rgb.shape == (1, 3, 3)
    before = endpoint_error(np.eye(3), truth, H, W)
    after = endpoint_error(result.aux_from_rgb[0].numpy(), truth, H, W)
    assert before > 2.0
    assert after < 1.0, f"{model}: EPE {before:.2f} -> {after:.2f} px"
    assert bool(result.reliable()[0])


def test_a_batch_registers_each_pair_as_if_alone() -> None:
    rng = np.random.default_rng(11)
    pairs = [_day_pair(seed) for seed in (3, 5)]
    truths = [_similarity(rng) for _ in pairs]
    rgb = torch.cat([_tensor(p[0]) for p in pairs])
    aux = torch.cat(
        [_tensor(misregister(p[1], t, nearest=False)) for p, t in zip(pairs, truths, strict=True)]
    )
    batch = register(rgb, aux, "affine")
    for i, truth in enumerate(truths):
        alone = register(rgb[i : i + 1], aux[i : i + 1], "affine")
        together = batch.aux_from_rgb[i].numpy()
        assert endpoint_error(together, alone.aux_from_rgb[0].numpy(), H, W) < 0.01
        assert endpoint_error(together, truth, H, W) < 0.6


def test_a_registered_pair_stays_put_and_float64_input_works() -> None:
    rgb, aux = _day_pair(5)
    result = register(_tensor(rgb).double(), _tensor(aux).double(), "similarity")
    assert result.aux_from_rgb.dtype == torch.float64
    assert endpoint_error(result.aux_from_rgb[0].numpy(), np.eye(3), H, W) < 0.6


def test_missing_aux_pixels_are_ignored_not_read_as_zero() -> None:
    """A third of the aux image missing (0) in blocks: the rest still registers it."""
    rgb, aux = _day_pair(3)
    truth = _similarity(np.random.default_rng(5))
    warped = misregister(aux, truth, nearest=False)
    holes = np.kron(np.random.default_rng(0).uniform(size=(8, 10)) < 0.33, np.ones((30, 32)))
    warped[holes.astype(bool)] = 0.0
    result = register(_tensor(rgb), _tensor(warped), "affine")
    assert endpoint_error(result.aux_from_rgb[0].numpy(), truth, H, W) < 1.0
    # the same holes declared through aux_valid, with a value that would make edges if read
    filled = np.where(holes[..., None].astype(bool), 5.0, warped).astype(np.float32)
    valid = torch.from_numpy(~holes.astype(bool))[None, None]
    declared = register(_tensor(rgb), _tensor(filled), "affine", aux_valid=valid)
    assert endpoint_error(declared.aux_from_rgb[0].numpy(), truth, H, W) < 1.0


def test_an_aux_camera_of_another_resolution() -> None:
    """Thermal at half the RGB resolution: the transform maps between the native grids."""
    rgb, aux = _day_pair(3)
    truth = _similarity(np.random.default_rng(9))
    warped = misregister(aux, truth, nearest=False)
    half = torch.nn.functional.avg_pool2d(_tensor(warped), 2)  # aux pixel q/2 - 0.25
    result = register(_tensor(rgb), half, "affine")
    to_half = np.array([[0.5, 0.0, -0.25], [0.0, 0.5, -0.25], [0.0, 0.0, 1.0]])
    expected = to_half @ truth
    error = endpoint_error(result.aux_from_rgb[0].numpy(), expected, H, W)
    assert error < 0.5  # aux pixels, i.e. 1 RGB pixel


@pytest.mark.parametrize("case", ["flat", "missing", "other scene"])
def test_pairs_that_cannot_be_registered_have_low_confidence(case: str) -> None:
    rgb, aux = _day_pair(3)
    if case == "flat":
        aux = np.full_like(aux, 0.5)
    elif case == "missing":
        aux = np.zeros_like(aux)
    else:
        aux = _day_pair(5)[1]
    result = register(_tensor(rgb), _tensor(aux), "affine")
    assert not bool(result.reliable()[0]), result
    assert float(result.confidence[0]) < 0.45
    if case == "missing":
        assert float(result.overlap[0]) == 0.0


def test_real_nyu_depth_under_a_random_warp(nyu_sample: Path) -> None:
    pair = read_pair(nyu_sample / "RGB" / "0.jpg", nyu_sample / "Depth" / "0.npy")
    h, w = pair.rgb.shape[:2]
    truth = random_transform(np.random.default_rng(2), h, w)
    warped = misregister(pair.aux, truth, nearest=True)
    result = register(_tensor(pair.rgb), _tensor(warped), "affine")
    before = endpoint_error(np.eye(3), truth, h, w)
    after = endpoint_error(result.aux_from_rgb[0].numpy(), truth, h, w)
    assert before > 8.0
    assert after < 1.0, f"EPE {before:.2f} -> {after:.2f} px"


@pytest.mark.parametrize(
    ("rgb", "aux", "kwargs", "message"),
    [
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64), {"model": "rigid"}, "model"),
        (torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64), {}, "rgb must be"),
        (torch.zeros(2, 3, 64, 64), torch.zeros(1, 1, 64, 64), {}, "batch"),
        (
            torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
            torch.zeros(1, 1, 64, 64),
            {},
            "floating",
        ),
        (
            torch.zeros(1, 3, 64, 64),
            torch.zeros(1, 1, 64, 64),
            {"aux_valid": torch.ones(1, 1, 64, 64)},
            "aux_valid",
        ),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64), {"iterations": ()}, "iterations"),
    ],
)
def test_bad_input_is_a_config_error(
    rgb: Tensor, aux: Tensor, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        register(rgb, aux, **kwargs)  # type: ignore[arg-type]


def test_support_tells_a_matching_pair_from_another_scene() -> None:
    """A pair prefers its true transform; an unrelated aux image has no preference."""
    from rgbx_fusion.geometry.registration import support

    rgb, aux = _day_pair(3)
    other = _day_pair(5)[1]
    truth = torch.from_numpy(_similarity(np.random.default_rng(1)))
    warped = misregister(aux, truth.numpy(), nearest=False)
    both = torch.cat((_tensor(warped), _tensor(misregister(other, truth.numpy(), nearest=False))))
    values = support(torch.cat((_tensor(rgb), _tensor(rgb))), both, truth)
    assert values.shape == (2,)
    assert float(values[0]) > 0.3
    assert float(values[1]) < 0.3 * float(values[0])


def test_learned_aligner_trials_scale_and_compose_the_matrices() -> None:
    """An untrained CorrelationAlign is the identity: its rows show the warp itself, and
    refining after it is plain registration; a matrix found on a resized image maps back."""
    from rgbx_fusion.bench.registration import Pair, _resize_matrix, learned_trials
    from rgbx_fusion.models.align.correlation import CorrelationAlign

    shift = np.array([[1.0, 0, 2.0], [0, 1.0, -1.0], [0, 0, 1.0]])
    big = _resize_matrix(shift, 4.0)
    assert np.allclose(big[:2, 2], [8.0, -4.0]) and np.allclose(big[:2, :2], np.eye(2))
    rgb, thermal = _day_pair(7)
    pair = Pair("day", "day", rgb, thermal)
    identity = CorrelationAlign(3, 1, stride=8, levels=2).eval()
    trials = learned_trials([pair], lambda channels: identity, 160, "similarity", warps=2)
    learned = [t for t in trials if t.model == "learned"]
    refined = [t for t in trials if t.model == "learned+similarity"]
    assert len(learned) == len(refined) == 2
    assert all(t.after == pytest.approx(t.before, abs=1e-6) and t.before > 3 for t in learned)
    assert all(t.after < 1.0 for t in refined)
