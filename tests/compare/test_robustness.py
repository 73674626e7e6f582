"""Input perturbations of the robustness sweep, its bookkeeping and its outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from rgbx_fusion.compare.perturbations import (
    PERTURBATIONS,
    holes,
    is_clean,
    perturb,
    rotate_aux,
    scale_aux,
    setting,
    shift_aux,
)
from rgbx_fusion.compare.robustness import (
    SHIFT_CURVE,
    _cached,
    evaluate_checkpoint,
    run_robustness,
    shift_curve,
    sweep,
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
    [clean] = [x for x in PERTURBATIONS[kind] if is_clean(kind, x)]  # exactly one clean level
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


def test_the_standard_shift_sweep_levels() -> None:
    levels = [-10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10]
    assert list(PERTURBATIONS["aux_shift_x_px"]) == levels
    assert list(PERTURBATIONS["aux_shift_y_px"]) == levels
    rotations = PERTURBATIONS["aux_rotation_deg"]
    assert sorted(rotations) == sorted(-x for x in rotations)  # signed, symmetric
    assert {1.0, 2.0, 3.0} <= set(rotations)
    assert list(PERTURBATIONS["aux_scale"]) == [0.94, 0.97, 1.0, 1.03, 1.06]


def test_shift_y_moves_a_pattern_down_and_x_left_filling_zeros() -> None:
    aux = torch.arange(1.0, 31.0).view(1, 1, 6, 5)  # no zeros in the pattern
    batch = {"rgb": torch.zeros(1, 3, 6, 5), "aux": aux}
    gen = torch.Generator()
    down = perturb(batch, "aux_shift_y_px", 2, MEAN, STD, gen)[1]
    assert down[..., :2, :].eq(0).all()  # vacated rows
    assert torch.equal(down[..., 2:, :], aux[..., :4, :])  # row r lands on row r + 2
    up = perturb(batch, "aux_shift_y_px", -2, MEAN, STD, gen)[1]
    assert torch.equal(up[..., :4, :], aux[..., 2:, :]) and up[..., 4:, :].eq(0).all()
    left = perturb(batch, "aux_shift_x_px", -2, MEAN, STD, gen)[1]
    assert torch.equal(left[..., :3], aux[..., 2:]) and left[..., 3:].eq(0).all()
    right = perturb(batch, "aux_shift_x_px", 2, MEAN, STD, gen)[1]
    assert torch.equal(right, perturb(batch, "aux_shift_px", 2, MEAN, STD, gen)[1])
    both = shift_aux(aux, right=1, down=2)
    assert torch.equal(both[..., 2:, 1:], aux[..., :4, :4])
    assert both[..., :2, :].eq(0).all() and both[..., :, :1].eq(0).all()
    assert shift_aux(aux, down=6).eq(0).all()
    with pytest.raises(ValueError, match="whole pixels"):
        perturb(batch, "aux_shift_y_px", 2.5, MEAN, STD, gen)


def test_scale_maps_a_point_away_from_the_centre() -> None:
    aux = torch.zeros(1, 1, 111, 111)  # centre pixel (55, 55)
    aux[0, 0, 55, 105] = 1.0  # 50 px right of the centre
    aux[0, 0, 5, 55] = 2.0  # 50 px above it
    out = scale_aux(aux, 1.06)
    assert out[0, 0, 55, 108].item() == pytest.approx(1.0, abs=1e-4)  # 53 px right
    assert out[0, 0, 2, 55].item() == pytest.approx(2.0, abs=1e-4)  # 53 px above
    assert out[0, 0, 55].argmax().item() == 108 and out[0, 0, :, 55].argmax().item() == 2
    back = scale_aux(out, 1 / 1.06)
    assert back[0, 0, 55, 105].item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("factor", [0.94, 1.06])
def test_scale_zooms_a_ramp_about_the_centre_of_a_non_square_image(factor: float) -> None:
    h, w = 31, 41  # centre (15, 20)
    ramp = (torch.arange(w, dtype=torch.float32) - 20).expand(1, 1, h, w)
    out = scale_aux(ramp, factor)
    inner = (..., slice(3, -3), slice(3, -3))  # sources inside the frame for both factors
    torch.testing.assert_close(out[inner], ramp[inner] / factor, atol=1e-4, rtol=0)
    assert out[0, 0, 15, 0].item() == (0.0 if factor < 1 else pytest.approx(-20 / factor))


def test_rotation_is_signed_counter_clockwise_as_displayed() -> None:
    aux = torch.zeros(1, 1, 9, 9)
    aux[0, 0, 4, 6:] = 1.0  # a bar pointing right from the centre
    torch.testing.assert_close(rotate_aux(aux, -90.0), torch.rot90(aux, -1, dims=(-2, -1)))
    up = rotate_aux(aux, 90.0)
    assert up[0, 0, :3, 4].eq(1).all()  # + turns the bar up (y is down)
    # A small angle on a non-square image: the sampled source is R(-θ)·p, without shear.
    h, w, deg = 31, 41, 3.0
    y = (torch.arange(h, dtype=torch.float32) - 15).view(h, 1).expand(h, w)
    x = (torch.arange(w, dtype=torch.float32) - 20).view(1, w).expand(h, w)
    t = math.radians(deg)
    out_y = rotate_aux(y.reshape(1, 1, h, w), deg)[0, 0]
    out_x = rotate_aux(x.reshape(1, 1, h, w), deg)[0, 0]
    inner = (slice(3, -3), slice(3, -3))
    want_y, want_x = x * math.sin(t) + y * math.cos(t), x * math.cos(t) - y * math.sin(t)
    torch.testing.assert_close(out_y[inner], want_y[inner], atol=1e-4, rtol=0)
    torch.testing.assert_close(out_x[inner], want_x[inner], atol=1e-4, rtol=0)
    # Right of the centre the content came from below: it moved up.
    assert out_y[15, 30].item() > 0 and rotate_aux(y.reshape(1, 1, h, w), -deg)[0, 0, 15, 30] < 0


def test_sweep_scores_each_distinct_input_once() -> None:
    calls: list[tuple[str, float]] = []

    def score(kind: str, level: float) -> float:
        calls.append((kind, level))
        return float(len(calls))

    curves = sweep(score, PERTURBATIONS)
    keys = {setting(k, x) for k, levels in PERTURBATIONS.items() for x in levels}
    assert len(calls) == len(keys) == len(set(calls))
    assert sum(is_clean(k, x) for k, x in calls) == 1  # the clean input, once
    x_levels = list(PERTURBATIONS["aux_shift_x_px"])
    for level in (4, 8):  # the earlier protocol's shifts right are the x sweep's
        value = curves["aux_shift_px"][list(PERTURBATIONS["aux_shift_px"]).index(level)]
        assert value == curves["aux_shift_x_px"][x_levels.index(level)]
    again = sweep(score, PERTURBATIONS, known={setting(*c): 0.5 for c in calls})
    assert len(calls) == len(keys) and all(v == 0.5 for vs in again.values() for v in vs)


def test_shift_curve_averages_the_four_directions() -> None:
    levels = {"aux_shift_x_px": [-4, -2, 0, 2, 4], "aux_shift_y_px": [-2, 0, 2, 4]}
    curves = {
        "aux_shift_x_px": [0.1, 0.2, 0.9, 0.4, 0.3],
        "aux_shift_y_px": [0.6, 0.9, 0.8, 0.5],
    }
    got = shift_curve(levels, curves)
    assert list(got) == [0, 2]  # y has no -4: |shift| 4 is left out
    assert got[0] == pytest.approx(0.9)
    assert got[2] == pytest.approx((0.2 + 0.4 + 0.6 + 0.8) / 4)
    assert shift_curve({"aux_shift_x_px": [0, 2]}, {"aux_shift_x_px": [0.9, 0.5]}) == {}


def test_known_scores_are_reused_without_loading_the_checkpoint(tmp_path: Path) -> None:
    subset = {"aux_shift_px": [0, 4], "aux_shift_x_px": [-4, 0, 4]}
    known = {("clean", 0.0): 0.9, ("aux_shift_x_px", 4.0): 0.7, ("aux_shift_x_px", -4.0): 0.6}
    missing = tmp_path / "missing"  # would fail to load
    curves = evaluate_checkpoint(missing / "config.yaml", missing / "best.ckpt", subset, known)
    assert curves == {"aux_shift_px": [0.9, 0.7], "aux_shift_x_px": [0.6, 0.9, 0.7]}


def test_run_robustness_writes_the_shift_curve_from_cached_sweeps(tmp_path: Path) -> None:
    """Cached per-run sweeps (nothing evaluated): CSV rows, summary JSON and figure."""
    levels = {k: list(v) for k, v in PERTURBATIONS.items()}
    metrics = []
    for variant, seed, drop in (("mid_add", 0, 0.02), ("mid_add", 1, 0.04), ("rgb_only", 0, 0.0)):
        folder = tmp_path / "runs" / variant / f"seed{seed}"
        folder.mkdir(parents=True)
        # mIoU falls with |level| (x and y at the same rate, y a little faster)
        curves = {
            k: [
                0.8
                - drop
                * abs(x - (1.0 if k in ("aux_scale", "rgb_dark_factor") else 0.0))
                * (1.5 if k == "aux_shift_y_px" else 1.0)
                for x in xs
            ]
            for k, xs in levels.items()
        }
        (folder / "robustness.json").write_text(json.dumps({"levels": levels, "curves": curves}))
        metrics.append(
            {"variant": variant, "seed": seed, "resolved_config": "absent", "checkpoint": "absent"}
        )
    rows = run_robustness(metrics, tmp_path)
    shift_rows = [r for r in rows if r["perturbation"] == SHIFT_CURVE]
    assert [r["level"] for r in shift_rows[:6]] == [0, 2, 4, 6, 8, 10]
    assert len(shift_rows) == 3 * 6
    with (tmp_path / "robustness.csv").open() as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows)
    abs_rows = [r for r in written if r["perturbation"] == SHIFT_CURVE and r["seed"] == "1"]
    assert float(abs_rows[1]["test_mIoU"]) == pytest.approx(0.8 - 0.04 * 2 * 1.25)
    summary = json.loads((tmp_path / "robustness.json").read_text())
    assert summary["shift_curve"]["abs_px"] == [0, 2, 4, 6, 8, 10]
    mid = summary["shift_curve"]["test_mIoU"]["mid_add"]
    assert mid[5] == pytest.approx(0.8 - 0.03 * 10 * 1.25)  # mean over the two seeds
    assert summary["shift_curve"]["test_mIoU"]["rgb_only"] == [0.8] * 6
    assert summary["seeds"] == {"mid_add": [0, 1], "rgb_only": [0]}
    cache = json.loads((tmp_path / "runs" / "mid_add" / "seed0" / "robustness.json").read_text())
    assert cache["shift_curve"]["abs_px"] == [0, 2, 4, 6, 8, 10]
    assert (tmp_path / "robustness.png").stat().st_size > 1000
