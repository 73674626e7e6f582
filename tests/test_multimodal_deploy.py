"""A multi-modality model deployed: load_model and predict with one image per modality,
export with one input per modality and the presence mask, and checkpoints of other
modalities refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_overrides import run_stage
from PIL import Image

import rgbx_fusion
from rgbx_fusion.cli import main
from rgbx_fusion.data.sets.images_multi import MultiImageFolderRGBX
from rgbx_fusion.errors import CheckpointError, ConfigError, MissingFileError
from rgbx_fusion.export import presence_patterns

ort = pytest.importorskip("onnxruntime")


def test_load_model_and_predict_with_absent_modalities(tiny_rgbdt_run: Path) -> None:
    model = rgbx_fusion.load_model(tiny_rgbdt_run)
    assert model.modalities == {"depth": 1, "thermal": 1}
    assert model.preprocess.modalities == {"depth": 1, "thermal": 1}
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    depth = rng.uniform(1, 5, (48, 64)).astype(np.float32)
    thermal = rng.uniform(0, 1, (48, 64)).astype(np.float32)
    labels = model.predict(rgb, {"depth": depth})  # thermal absent
    x_rgb, x_aux = model.preprocess(rgb, np.stack([depth, np.zeros_like(thermal)], -1))
    with torch.no_grad():
        expected = model(x_rgb, x_aux, torch.tensor([[True, False]])).argmax(1)[0]
        full = model(x_rgb, x_aux).argmax(1)[0]
    assert labels.shape == (48, 64) and torch.equal(labels, expected)
    # the network reads presence, not zeros: a zero thermal image that is "present" differs
    assert not torch.equal(expected, full)
    both = model.predict(rgb, {"depth": depth, "thermal": thermal}, scales=(0.5, 1.0), flip=True)
    assert both.shape == (48, 64)
    with pytest.raises(ConfigError, match="one aux image per modality"):
        model.predict(rgb, depth)
    with pytest.raises(ConfigError, match=r"\['lidar'\]"):
        model.predict(rgb, {"lidar": depth})
    with pytest.raises(ConfigError, match=r"aux\['thermal'\] must be H×W×1"):
        model.predict(rgb, {"thermal": thermal[:10]})


@pytest.mark.export
def test_onnx_export_takes_one_input_per_modality_and_the_mask(
    tiny_rgbdt_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rgbdt.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt", str(tiny_rgbdt_run), "--dynamic-batch", "--out", str(out)])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "every presence pattern of ['depth', 'thermal']" in printed
    meta = json.loads((tmp_path / "rgbdt.onnx.json").read_text())
    assert list(meta["inputs"]) == ["rgb", "depth", "thermal", "present"]
    assert meta["inputs"]["present"] == ["batch", 2] and meta["max_abs_diff"] <= 1e-3
    assert meta["normalization"]["modalities"] == {"depth": 1, "thermal": 1}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "depth", "thermal", "present"]
    model = rgbx_fusion.load_model(tiny_rgbdt_run)
    g = torch.Generator().manual_seed(3)
    rgb, depth, thermal = (torch.randn(4, c, 48, 64, generator=g) for c in (3, 1, 1))
    present = torch.tensor(presence_patterns(2))  # all, no depth, no thermal, none
    feeds = {"rgb": rgb, "depth": depth, "thermal": thermal, "present": present}
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        ref = model(rgb, torch.cat([depth, thermal], 1), present)
    assert np.abs(got - ref.numpy()).max() < 1e-3


@pytest.mark.export
def test_torch_export_of_a_multi_modality_checkpoint(tiny_rgbdt_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rgbdt.pt2"
    with pytest.raises(SystemExit) as exc:
        main(
            ["export", "--ckpt", str(tiny_rgbdt_run), "--format", "torch_export", "--out", str(out)]
        )
    assert exc.value.code == 0
    module = torch.export.load(out).module()
    logits = module(
        torch.zeros(1, 3, 48, 64),
        torch.zeros(1, 1, 48, 64),
        torch.zeros(1, 1, 48, 64),
        torch.tensor([[False, True]]),
    )
    assert logits.shape == (1, 12, 48, 64)  # the 12 classes of the RGB-D-T data


def test_a_checkpoint_of_other_modalities_is_refused(
    tiny_rgbdt_run: Path, tiny_rgbdt_root: Path
) -> None:
    config = tiny_rgbdt_run.parent.parent / "config.yaml"
    base = [
        "test",
        "--config",
        str(config),
        "--data.num_workers=0",
        f"--ckpt_path={tiny_rgbdt_run}",
    ]
    with pytest.raises(
        CheckpointError, match=r"best-.*ckpt does not fit.*order differs.*'depth,thermal'"
    ):
        run_stage([*base, "--data.dataset.init_args.modality=thermal,depth"])
    with pytest.raises(ConfigError, match=r"several named aux modalities.*one aux image of 1"):
        run_stage([*base, "--data.dataset.init_args.modality=depth"])
    from rgbx_fusion.tasks.guards import check_modalities_fit

    task = SimpleNamespace(hparams={"modalities": {"depth": 1, "thermal": 3}})
    saved = {"hyper_parameters": {"modalities": {"depth": 1, "thermal": 1}}}
    with pytest.raises(CheckpointError, match=r"x\.ckpt.*'thermal' has 1 channel\(s\).*3 in"):
        check_modalities_fit(task, saved, "x.ckpt")
    task.hparams = {"modalities": {"depth": 1}}
    with pytest.raises(CheckpointError, match=r"'thermal' \(1 channel\(s\)\) is not in the data"):
        check_modalities_fit(task, saved, "x.ckpt")
    task.hparams = {"aux_channels": 1}
    with pytest.raises(
        CheckpointError, match=r"'thermal': 1\}, but the data has one aux image of 1 "
    ):
        check_modalities_fit(task, saved, "x.ckpt")
    check_modalities_fit(task, {"hyper_parameters": {"aux_channels": 1}}, "x.ckpt")


def _own_images(root: Path, names: list[str], tmp_path: Path) -> dict[str, Path]:
    dirs = {m: tmp_path / "own" / m for m in ("rgb", "depth", "thermal")}
    for m, folder in dirs.items():
        folder.mkdir(parents=True)
        for name in names:
            (source,) = (root / m).glob(f"{name}.*")
            shutil.copy(source, folder / f"cam_{name}{source.suffix}")
    return dirs


def test_predict_on_folders_of_several_modalities_with_a_dropped_frame(
    tiny_rgbdt_run: Path, tiny_rgbdt_root: Path, tmp_path: Path
) -> None:
    names = (tiny_rgbdt_root / "splits" / "test.txt").read_text().split()
    dirs = _own_images(tiny_rgbdt_root, names, tmp_path)
    (dirs["thermal"] / f"cam_{names[1]}.png").unlink()  # the thermal camera dropped a frame
    out = tmp_path / "preds"
    args = [
        "predict",
        "--config",
        str(tiny_rgbdt_run.parent.parent / "config.yaml"),
        f"--ckpt_path={tiny_rgbdt_run}",
        f"--output_dir={out}",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.num_workers=0",
        "--data.eval_size=null",
        "--data.dataset.class_path=rgbx_fusion.data.sets.images_multi.MultiImageFolderRGBX",
        f"--data.dataset.init_args.rgb_dir={dirs['rgb']}",
        f"--data.dataset.init_args.aux_dirs={{depth: {dirs['depth']}, thermal: {dirs['thermal']}}}",
        "--data.dataset.init_args.depth_format=png16_mm",
        f"--data.dataset.init_args.checkpoint={tiny_rgbdt_run}",
    ]
    with pytest.raises(MissingFileError, match=f"no thermal file for cam_{names[1]}"):
        run_stage(args)
    run_stage([*args, "--data.dataset.init_args.optional=[thermal]"])
    written = sorted(p.name for p in (out / "labels").glob("*.png"))
    assert written == [f"cam_{n}.png" for n in names]
    model = rgbx_fusion.load_model(tiny_rgbdt_run)
    data = MultiImageFolderRGBX(
        rgb_dir=dirs["rgb"],
        aux_dirs={m: dirs[m] for m in ("depth", "thermal")},
        depth_format="png16_mm",
        optional=["thermal"],
        checkpoint=tiny_rgbdt_run,
    )
    sample = data[1]
    assert sample["meta"]["present"] == [True, False]
    expected = model.predict(sample["rgb"], {"depth": sample["aux"][..., 0]})
    got = np.array(Image.open(out / "labels" / f"cam_{names[1]}.png"))
    assert np.array_equal(got, expected.numpy())
    with pytest.raises(ConfigError, match="aux_dirs names"):
        MultiImageFolderRGBX(rgb_dir=dirs["rgb"], aux_dirs={"lidar": dirs["depth"]}, classes=["a"])
