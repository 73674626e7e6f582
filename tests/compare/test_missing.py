"""The missing / noisy-modality protocols of ``compare --robustness``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rgbx_fusion.compare.missing import (
    MISSING_P,
    AuxLayout,
    apply,
    missing_table,
    modality_kinds,
)
from rgbx_fusion.compare.perturbations import PERTURBATIONS
from rgbx_fusion.compare.robustness import (
    evaluate_checkpoint,
    load_run,
    run_modalities,
    run_robustness,
)

MULTI = AuxLayout(("depth", "thermal"), (1, 2), multi=True)
ONE = AuxLayout(("depth",), (1,), multi=False)


def _aux(b: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, 4, 5, generator=torch.Generator().manual_seed(1)) + 5


def test_a_missing_modality_is_absent_and_zeroed() -> None:
    aux = _aux(4)
    out, present = apply("missing:thermal", 1.0, aux, None, MULTI, torch.Generator())
    assert present is not None and present.tolist() == [[True, False]] * 4
    assert out[:, 1:].eq(0).all() and torch.equal(out[:, :1], aux[:, :1])
    same, kept = apply("missing:lidar", 1.0, aux, None, MULTI, torch.Generator())
    assert torch.equal(same, aux) and kept is not None and kept.all()
    # already absent stays absent
    before = torch.tensor([[False, True]] * 4)
    _, both = apply("missing:thermal", 1.0, aux, before, MULTI, torch.Generator())
    assert both is not None and not both.any()
    # one aux image: no mask to tell, the all-missing image
    zero, none = apply("missing:depth", 1.0, aux[:, :1], None, ONE, torch.Generator())
    assert none is None and zero.eq(0).all()


def test_random_missing_follows_p_per_sample_and_modality() -> None:
    aux = _aux(400)
    out, present = apply(MISSING_P, 0.25, aux, None, MULTI, torch.Generator().manual_seed(0))
    assert present is not None
    rate = 1 - present.float().mean(0)
    assert rate.tolist() == pytest.approx([0.25, 0.25], abs=0.06)
    for j, part in ((0, slice(0, 1)), (1, slice(1, 3))):  # zeroed exactly where absent
        assert torch.equal(out[:, part].flatten(1).eq(0).all(1), ~present[:, j])
    again, _ = apply(MISSING_P, 0.25, aux, None, MULTI, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    gone, nothing = apply(MISSING_P, 1.0, aux, None, MULTI, torch.Generator())
    assert nothing is not None and not nothing.any() and gone.eq(0).all()


def test_noise_touches_only_its_modality() -> None:
    aux = _aux(4)
    out, present = apply("noise:thermal", 0.5, aux, None, MULTI, torch.Generator().manual_seed(0))
    assert present is not None and present.all()
    assert torch.equal(out[:, :1], aux[:, :1])
    assert (out[:, 1:] - aux[:, 1:]).std().item() == pytest.approx(0.5, rel=0.2)


def test_equivalent_settings_are_evaluated_once() -> None:
    assert ONE.equivalent("missing:depth", 1.0) == ("aux_holes_fraction", 1.0)
    assert ONE.equivalent(MISSING_P, 1.0) == ("aux_holes_fraction", 1.0)
    assert ONE.equivalent("noise:depth", 0.5) == ("aux_noise_std", 0.5)
    assert ONE.equivalent("missing:thermal", 1.0) == ("clean", 0.0)
    assert MULTI.equivalent("missing:depth", 1.0) == ("missing:depth", 1.0)
    assert MULTI.equivalent(MISSING_P, 0.0) == ("clean", 0.0)


def test_the_protocols_reach_the_network(tiny_rgbdt_run: Path) -> None:
    """A trained RGB-D-T model: every protocol's score equals the model's own evaluation
    with the modality marked absent (``present``), not merely zeroed."""
    config = tiny_rgbdt_run.parent.parent / "config.yaml"
    assert run_modalities(config) == ["depth", "thermal"]
    kinds = {k: v for k, v in modality_kinds(["depth", "thermal"]).items() if k != MISSING_P}
    curves = evaluate_checkpoint(config, tiny_rgbdt_run, kinds)
    task, dm = load_run(config, tiny_rgbdt_run)
    task.eval()
    from rgbx_fusion.tasks.metrics import SegmentationMetrics

    def score(drop: int | None, noise: tuple[int, float] | None = None) -> float:
        metric = SegmentationMetrics(task.num_classes, task.ignore_index)
        for i, batch in enumerate(dm.test_dataloader()):
            aux, present = batch["aux"].clone(), batch["present"].clone()
            if drop is not None:
                present[:, drop] = False
                aux[:, drop] = 0
            if noise is not None:
                g = torch.Generator().manual_seed(i)
                j = noise[0]
                aux[:, j : j + 1] += noise[1] * torch.randn(aux[:, :1].shape, generator=g)
            with torch.no_grad():
                metric.update(task(batch["rgb"], aux, present).argmax(1), batch["mask"])
        return float(metric.scores()["mIoU"])

    clean = score(None)
    assert curves["missing:depth"] == pytest.approx([clean, score(0)], abs=1e-6)
    assert curves["missing:thermal"] == pytest.approx([clean, score(1)], abs=1e-6)
    assert curves["noise:thermal"][2] == pytest.approx(score(None, (1, 1.0)), abs=1e-6)


def test_run_robustness_writes_the_missing_table(tmp_path: Path) -> None:
    """Cached sweeps of an RGB-D-T run and an RGB-D run: table, summary, bar panel."""
    configs = {
        "rgbdt": "data:\n  dataset:\n    init_args:\n      modality: depth,thermal\n",
        "rgbd": "data:\n  dataset:\n    init_args:\n      modality: depth\n",
    }
    metrics = []
    for variant, text in configs.items():
        folder = tmp_path / "runs" / variant / "seed0"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(text)
        metrics.append(
            {"variant": variant, "seed": 0, "resolved_config": str(folder / "config.yaml")}
        )
    perturbations = {**PERTURBATIONS, **modality_kinds(["depth", "thermal"])}
    levels = {k: list(v) for k, v in perturbations.items()}
    for m, base in zip(metrics, (0.8, 0.6), strict=True):
        curves = {
            k: [
                base - 0.1 * (x != (1.0 if k in ("aux_scale", "rgb_dark_factor") else 0))
                for x in xs
            ]
            for k, xs in levels.items()
        }
        folder = tmp_path / "runs" / m["variant"] / "seed0"
        (folder / "robustness.json").write_text(json.dumps({"levels": levels, "curves": curves}))
    run_robustness(metrics, tmp_path)
    table = (tmp_path / "robustness.md").read_text()
    assert "| variant | clean | − depth | − thermal | − all aux | random p = 0.5 |" in table
    assert "| rgbdt | 0.800 | 0.700 | 0.700 | 0.700 | 0.700 | 0.700 | 0.700 |" in table
    summary = json.loads((tmp_path / "robustness.json").read_text())
    assert summary["levels"]["missing:thermal"] == [0, 1]
    assert missing_table({"levels": {}, "curves": {}}) == ""
    assert (tmp_path / "robustness.png").stat().st_size > 1000


def test_the_missing_table_becomes_an_html_table() -> None:
    from rgbx_fusion.compare.html import pipe_table

    text = "# t\n\n| variant | clean | − depth |\n|---|---|---|\n| a<b | 0.800 | 0.700 |\n"
    html = pipe_table(text)
    assert html.count("<tr>") == 2 and "<th>− depth</th>" in html
    assert "<td>a&lt;b</td><td>0.800</td><td>0.700</td>" in html
    assert pipe_table("no table") == ""


def test_the_sweep_can_be_limited_to_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rgbx_fusion.cli import main
    from rgbx_fusion.compare.robustness import default_perturbations

    config = tmp_path / "config.yaml"
    config.write_text("data:\n  dataset:\n    init_args:\n      modality: depth,thermal\n")
    runs = [{"resolved_config": str(config)}]
    everything = default_perturbations(runs)
    assert "missing:thermal" in everything and "aux_shift_x_px" in everything
    modality = default_perturbations(runs, ("modality",))
    assert sorted(modality) == sorted(
        ["aux_missing_p", *(f"{k}:{m}" for k in ("missing", "noise") for m in ("depth", "thermal"))]
    )
    sensor = default_perturbations(runs, ("sensor",))
    assert sorted(sensor) == [
        "aux_holes_fraction",
        "aux_noise_std",
        "rgb_dark_factor",
        "rgb_noise_std",
    ]
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--config", "x.yaml", "--robustness-kinds", "modality,colour"])
    assert exc.value.code == 2 and "registration, sensor, modality" in capsys.readouterr().err
