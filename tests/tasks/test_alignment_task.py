"""AlignmentTask: known warps, missing pixels, learning, evaluation against stored truth, and
plugging a trained aligner into a segmenter."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from cli_overrides import run_stage, small_cli_args

from rgbx_fusion.alignment_report import flow_from_matrix
from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic
from rgbx_fusion.errors import CheckpointError, ConfigError, WeightsMismatchError
from rgbx_fusion.experiment import resolve
from rgbx_fusion.models.align.correlation import CorrelationAlign
from rgbx_fusion.models.align.flow import warp_by_flow
from rgbx_fusion.models.decoders.fpn import FPNDecoder
from rgbx_fusion.models.segmenter import RGBXSegmenter
from rgbx_fusion.tasks.alignment import AlignmentTask
from rgbx_fusion.tasks.known_warps import (
    endpoint_errors,
    random_margins,
    random_matrices,
    reflect_inside,
    warp_nearest,
)

ROOT = Path(__file__).resolve().parents[2]
DEPTH_RECIPE = ROOT / "configs" / "align" / "synthetic_depth.yaml"
TINY = {"features": 8, "hidden": 8}


def _smooth(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, h // 8, w // 8, generator=g) * 4 + 1
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic")


def test_known_warp_target_is_flow_from_matrix_and_undoes_the_warp() -> None:
    task = AlignmentTask(partial(CorrelationAlign, **TINY), max_shift=4, max_rotation=5)
    aux = _smooth(3, 1, 40, 56)
    warped, target, matrices = task.make_pair(aux, torch.Generator().manual_seed(3))
    torch.testing.assert_close(target, flow_from_matrix(matrices, (40, 56)))
    task.hparams.aux_interpolation = "bilinear"
    warped, target, _ = task.make_pair(aux, torch.Generator().manual_seed(3))
    back = warp_by_flow(warped, target)[..., 8:-8, 10:-10]
    assert (warped - aux)[..., 8:-8, 10:-10].abs().max() > 1  # it did move
    torch.testing.assert_close(back, aux[..., 8:-8, 10:-10], atol=0.15, rtol=0)


def test_a_smooth_random_flow_is_undone_too() -> None:
    task = AlignmentTask(
        partial(CorrelationAlign, **TINY),
        max_shift=2,
        flow_magnitude=2.0,
        aux_interpolation="bilinear",
    )
    aux = _smooth(2, 1, 40, 56, seed=1)
    warped, target, matrices = task.make_pair(aux, torch.Generator().manual_seed(0))
    assert (target - flow_from_matrix(matrices, (40, 56))).abs().max() > 0.5  # not affine
    back = warp_by_flow(warped, target)[..., 8:-8, 10:-10]
    torch.testing.assert_close(back, aux[..., 8:-8, 10:-10], atol=0.15, rtol=0)
    affine_only = warp_by_flow(warped, flow_from_matrix(matrices, (40, 56)))[..., 8:-8, 10:-10]
    assert (affine_only - aux[..., 8:-8, 10:-10]).abs().max() > 0.3


def test_missing_depth_stays_missing_and_outside_is_zero() -> None:
    aux = torch.full((1, 1, 30, 40), 3.0)
    aux[..., 10:20, 12:25] = 0  # a hole
    aux[..., :, :5] = 7.0
    big_shift = torch.zeros(1, 2, 30, 40)
    big_shift[:, 0] = 30.4  # most of the frame comes from outside
    assert warp_nearest(aux, big_shift)[..., :, 10:].abs().max() == 0
    for interpolation in ("nearest", "bilinear"):
        task = AlignmentTask(
            partial(CorrelationAlign, **TINY), max_shift=3, aux_interpolation=interpolation
        )
        warped, _, _ = task.make_pair(aux, torch.Generator().manual_seed(1))
        values = set(warped.unique().tolist())
        if interpolation == "nearest":
            assert values <= {0.0, 3.0, 7.0}
        else:  # blends valid values, never a missing one
            inside = warped[warped != 0]
            assert inside.min() >= 3.0 - 1e-5 and inside.max() <= 7.0 + 1e-5
        assert (warped == 0).sum() >= 0.8 * (aux == 0).sum()  # the hole moved, not filled


def test_reflect_mirrors_outside_positions_and_keeps_inside_ones() -> None:
    flow = torch.zeros(1, 2, 5, 6)
    flow[0, 0, 0, 0] = -2.0  # x = -2 -> 2
    flow[0, 0, 0, 5] = 1.5  # x = 6.5 -> 3.5
    flow[0, 1, 4, 2] = 3.0  # y = 7 -> 1
    flow[0, 0, 2, 2] = 1.25  # stays inside: unchanged
    out = reflect_inside(flow)
    assert out[0, 0, 0, 0] == 2.0 and out[0, 0, 0, 5] == -1.5 and out[0, 1, 4, 2] == -3.0
    assert out[0, 0, 2, 2] == 1.25
    pos = out + torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(5.0), indexing="xy"))
    assert pos[:, 0].min() >= 0 and pos[:, 0].max() <= 5 and pos[:, 1].max() <= 4


def test_reflect_leaves_no_missing_band_and_margins_do_not_follow_the_warp() -> None:
    aux = _smooth(64, 1, 40, 56, seed=2)
    zeros = AlignmentTask(partial(CorrelationAlign, **TINY), max_shift=6, outside="zeros")
    warped, target, _ = zeros.make_pair(aux, torch.Generator().manual_seed(0))
    assert (warped == 0).any()
    reflect = AlignmentTask(partial(CorrelationAlign, **TINY), max_shift=6)  # the default
    warped_r, target_r, _ = reflect.make_pair(aux, torch.Generator().manual_seed(0))
    assert not (warped_r == 0).any()
    torch.testing.assert_close(target_r, target)  # the same warp, the same target
    inside = warp_by_flow(warped_r, target_r)[..., 12:-12, 14:-14]
    torch.testing.assert_close(inside, aux[..., 12:-12, 14:-14], atol=0.5, rtol=0)
    # random margins: missing bands whose widths say nothing about the warp's shift
    margin = AlignmentTask(
        partial(CorrelationAlign, **TINY), max_shift=6, outside="reflect", random_margin=10
    )
    warped_m, target_m, _ = margin.make_pair(aux, torch.Generator().manual_seed(0))
    left = (warped_m[:, 0, 20] == 0).float().cumprod(-1).sum(-1)  # missing run from the left
    shift_x = target_m[:, 0, 20, 0]
    assert left.max() > 3 and left.max() <= 10
    corr = torch.corrcoef(torch.stack((left, shift_x)))[0, 1]
    assert corr.abs() < 0.5, corr
    unmasked, _, _ = margin.make_pair(aux, torch.Generator().manual_seed(0), margins=False)
    assert not (unmasked == 0).any()  # the evaluation warps: no bands
    masks = random_margins(200, (20, 30), 4, torch.Generator().manual_seed(1))
    assert masks.shape == (200, 1, 20, 30) and set(masks.unique().tolist()) == {0.0, 1.0}
    assert (masks[:, 0, 10, :5] == 0).sum(-1).max() == 4  # never wider than asked
    assert (masks[:, 0, 10, :5] == 0).sum(-1).min() == 0


def test_random_matrices_respect_their_limits() -> None:
    m = random_matrices(500, (120, 160), 8.0, 6.0, 0.1, generator=torch.Generator().manual_seed(0))
    scale = torch.linalg.det(m[:, :2, :2]).sqrt()
    angle = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0]))
    assert scale.min() >= 0.9 - 1e-9 and scale.max() <= 1.1 + 1e-9
    assert angle.abs().max() <= 6 + 1e-9 and angle.abs().max() > 5
    centre = torch.tensor([79.5, 59.5, 1.0], dtype=torch.float64)
    shift = (m @ centre)[:, :2] - centre[:2]  # the centre moves by the shift alone
    assert shift.abs().max() <= 8 + 1e-9 and shift.abs().max() > 7


def test_optimisation_learns_to_undo_shifts() -> None:
    """Translation-only on small smooth images: a few hundred steps cut the EPE severalfold."""
    torch.manual_seed(0)
    task = AlignmentTask(
        partial(CorrelationAlign, model="translation", levels=1, radius=2, **TINY),
        max_shift=4,
        max_rotation=0,
        max_scale=0,
        aux_interpolation="bilinear",
    )
    opt = torch.optim.Adam(task.parameters(), lr=1e-2)
    val_aux = _smooth(16, 1, 32, 32, seed=100)
    val_rgb = torch.cat((val_aux, -val_aux, val_aux.square() / 5), 1)  # another "modality"
    warped, target, _ = task.make_pair(val_aux, torch.Generator().manual_seed(7))

    def val_epe() -> float:
        with torch.no_grad():
            return float(endpoint_errors(task.aligner.displacement(val_rgb, warped), target).mean())

    before = val_epe()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is ~10× faster on a busy 2-core CPU
    try:
        for step in range(80):
            aux = _smooth(8, 1, 32, 32, seed=step)
            rgb = torch.cat((aux, -aux, aux.square() / 5), 1)
            pair, goal, _ = task.make_pair(aux)
            flows = task.aligner.displacements(rgb, pair)
            loss = sum(endpoint_errors(f, goal).mean() for f in flows)
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
    finally:
        torch.set_num_threads(threads)
    after = val_epe()
    assert before > 2
    assert after < 0.4 * before, (before, after)


# ---- through the CLI: fit, evaluation against the stored truth, checkpoints ----------------


@pytest.fixture(scope="module")
def tiny_misaligned_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_misaligned")
    spec = SyntheticSpec(
        num_train=4, num_val=4, num_test=4, height=60, width=80, misalign="affine",
        misalign_strength=2,
    )  # fmt: skip
    return prepare_synthetic(root, spec, workers=1, progress=False)


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_depth_root: Path, module_tmp: Path) -> Path:
    """One training step of the depth recipe, checkpointed (the recipe's aligner settings)."""
    exp = run_stage(
        [
            "fit",
            "--config",
            str(DEPTH_RECIPE),
            *small_cli_args(tiny_depth_root, module_tmp / "fit"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
    )
    assert isinstance(exp.module, AlignmentTask)
    with pytest.raises(ConfigError, match="SegmentationTask"):
        exp.task  # noqa: B018 - the segmentation-only view refuses another task
    ckpt = Path(exp.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    assert ckpt.is_file() and "epe" in str(exp.trainer.checkpoint_callback.monitor)  # type: ignore[union-attr]
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["aligner"]["class_path"].endswith("CorrelationAlign")
    # random warps (no stored truth): the motion put on the unwarped pairs is measured too
    still = exp.trainer.callback_metrics["val/epe_unwarped"]
    assert 0 <= float(still) < 20
    return ckpt


def test_test_stage_measures_the_stored_misregistration(
    trained_checkpoint: Path, tiny_misaligned_root: Path, module_tmp: Path
) -> None:
    exp = run_stage(
        [
            "test",
            "--config",
            str(DEPTH_RECIPE),
            *small_cli_args(tiny_misaligned_root, module_tmp / "test"),
            f"--ckpt_path={trained_checkpoint}",
        ]
    )
    scores = exp.module.last_scores["test"]
    truths = []
    for sample in exp.datamodule.dataset("test"):
        matrix = torch.tensor(sample["meta"]["aux_from_rgb"], dtype=torch.float64)
        truths.append(flow_from_matrix(matrix, (60, 80), (48, 64)))
    flows = torch.cat(truths)
    expected = float(endpoint_errors(torch.zeros_like(flows), flows).mean())
    assert scores["epe_identity"] == pytest.approx(expected, rel=1e-5)
    assert expected > 2  # strength 2 at 60×80, evaluated at 48×64
    assert 0 <= scores["epe"] < 3 * expected


def test_a_trained_aligner_plugs_into_a_segmenter_and_freezes(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = {"model": "similarity", "stride": 4, "levels": 3, "features": 32, "hidden": 16}
    trained = {
        k.removeprefix("aligner."): v
        for k, v in torch.load(trained_checkpoint, weights_only=True)["state_dict"].items()
        if k.startswith("aligner.")
    }
    factory = partial(CorrelationAlign, checkpoint=str(trained_checkpoint), freeze=True, **recipe)
    net = RGBXSegmenter(3, 1, input_align=factory, decoder=partial(FPNDecoder, channels=16))
    assert net.input_align is not None
    loaded = net.input_align.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert not any(p.requires_grad for p in net.input_align.parameters())
    net(torch.randn(2, 3, 32, 48), torch.rand(2, 1, 32, 48)).mean().backward()
    assert all(p.grad is None for p in net.input_align.parameters())
    assert any(p.grad is not None for p in net.parameters())  # the rest trains

    free = CorrelationAlign(3, 1, checkpoint=str(trained_checkpoint), **recipe)
    assert all(p.requires_grad for p in free.parameters())
    run_folder = trained_checkpoint.parents[3]  # <run>/lightning_logs/version_0/checkpoints
    by_folder = CorrelationAlign(3, 1, checkpoint=str(run_folder), **recipe).state_dict()
    assert all(torch.equal(by_folder[k], trained[k]) for k in trained)
    with pytest.raises(CheckpointError, match="best-"):
        CorrelationAlign(3, 1, checkpoint=str(tmp_path), **recipe)  # an empty folder
    with pytest.raises(CheckpointError, match="model='similarity'"):
        CorrelationAlign(3, 1, checkpoint=str(trained_checkpoint), **{**recipe, "model": "affine"})
    with pytest.raises(WeightsMismatchError):
        CorrelationAlign(3, 1, checkpoint=str(trained_checkpoint), **{**recipe, "features": 16})


def test_segmenter_configs_name_the_checkpoint_and_freeze() -> None:
    aligner = {
        "class_path": "rgbx_fusion.models.align.correlation.CorrelationAlign",
        "init_args": {"checkpoint": "runs/align/best.ckpt", "freeze": True, "stride": 8},
    }
    config = resolve(
        [ROOT / "configs" / "synthetic" / "base.yaml"],
        {"model.network.init_args.input_align": aligner},
    )
    align = config.model.network.init_args.input_align
    assert align.class_path.endswith("CorrelationAlign")
    assert align.init_args.checkpoint == "runs/align/best.ckpt" and align.init_args.freeze is True
