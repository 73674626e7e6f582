"""Multi-modality samples and batches: several aux folders read into one sample, optional
modalities recorded as absent, per-modality normalisation, ``present`` in batches, and a
``MultiModalSegmenter`` trained through the CLI on them."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_overrides import run_stage, small_cli_args
from PIL import Image

from rgbx_fusion.data.datamodule import RGBXDataModule
from rgbx_fusion.data.sample import collate
from rgbx_fusion.data.sets.folder import FolderRGBX
from rgbx_fusion.data.sets.synthetic import SyntheticRGBX
from rgbx_fusion.data.transforms import Normalizer
from rgbx_fusion.errors import ConfigError, DatasetError, MissingFileError, ShapeMismatchError
from rgbx_fusion.models.multimodal import MultiModalSegmenter

ROOT = Path(__file__).resolve().parents[2]


def test_several_aux_folders_make_one_sample(tiny_rgbdt_root: Path) -> None:
    both = SyntheticRGBX("train", tiny_rgbdt_root, "depth,thermal")
    depth = SyntheticRGBX("train", tiny_rgbdt_root, "depth")
    thermal = SyntheticRGBX("train", tiny_rgbdt_root, "thermal")
    assert both.modalities == {"depth": 1, "thermal": 1} and both.aux_channels == 2
    assert not hasattr(depth, "modalities")  # one aux image: the contract as before
    s, d, t = both[3], depth[3], thermal[3]
    assert s["aux"].shape == (60, 80, 2) and s["meta"]["present"] == [True, True]
    assert np.array_equal(s["aux"][..., 0], d["aux"][..., 0])
    assert np.array_equal(s["aux"][..., 1], t["aux"][..., 0])
    assert np.array_equal(s["rgb"], d["rgb"]) and np.array_equal(s["mask"], t["mask"])


def test_an_optional_modality_may_be_missing(tiny_rgbdt_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_rgbdt_root, root)
    name = (root / "splits" / "train.txt").read_text().split()[1]
    (root / "thermal" / f"{name}.png").unlink()
    with pytest.raises(MissingFileError, match=f"thermal/{name}"):
        FolderRGBX("train", root, "depth,thermal")
    info = json.loads((root / "dataset.json").read_text())
    info["modalities"]["thermal"]["optional"] = True
    (root / "dataset.json").write_text(json.dumps(info))
    data = FolderRGBX("train", root, "depth,thermal")
    sample = data[1]
    assert sample["meta"]["present"] == [True, False]
    assert (sample["aux"][..., 1] == 0).all() and (sample["aux"][..., 0] > 0).any()
    assert data[0]["meta"]["present"] == [True, True]


def test_bad_modality_options_are_typed_errors(tiny_rgbdt_root: Path, tmp_path: Path) -> None:
    for bad in ("depth,depth", "depth,sonar"):
        with pytest.raises(ConfigError, match="modality"):
            FolderRGBX("train", tiny_rgbdt_root, bad)
    with pytest.raises(DatasetError, match=r"dataset\.json"):
        SyntheticRGBX("train", tiny_rgbdt_root, "depth,hha")
    eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.raises(ConfigError, match="must be a dict modality"):
        FolderRGBX("train", tiny_rgbdt_root, "depth,thermal", aux_from_rgb=eye)
    with pytest.raises(ConfigError, match=r"names \['hha'\]"):
        FolderRGBX("train", tiny_rgbdt_root, "depth,thermal", aux_from_rgb={"hha": eye})
    with pytest.raises(ConfigError, match="for several modalities"):
        FolderRGBX("train", tiny_rgbdt_root, "depth", aux_from_rgb={"depth": eye})


def test_each_modality_applies_its_own_declared_transform(
    tiny_rgbdt_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_rgbdt_root, root)
    before = FolderRGBX("train", root, "depth,thermal")[2]["aux"]
    info = json.loads((root / "dataset.json").read_text())
    shift = [[1.0, 0.0, 3.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # RGB x → thermal x + 3
    info["modalities"]["thermal"]["aux_from_rgb"] = shift
    (root / "dataset.json").write_text(json.dumps(info))
    after = FolderRGBX("train", root, "depth,thermal")[2]["aux"]
    assert np.array_equal(after[..., 0], before[..., 0])  # depth untouched
    assert np.allclose(after[:, :-3, 1], before[:, 3:, 1], atol=1e-6)
    assert (after[:, -3:, 1] == 0).all()  # outside the thermal frame
    override = FolderRGBX("train", root, "depth,thermal", aux_from_rgb={"depth": shift})[2]["aux"]
    assert np.array_equal(override[:, :-3, 0], before[:, 3:, 0])  # the option wins per key
    info["modalities"]["thermal"]["aux_from_rgb"] = [[1.0, 0.0], [0.0, 1.0]]
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(
        ConfigError, match=r"dataset\.json, key 'modalities\.thermal\.aux_from_rgb'"
    ):
        FolderRGBX("train", root, "depth,thermal")
    del info["modalities"]["thermal"]["aux_from_rgb"]
    info["aux_from_rgb"] = shift
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(
        ConfigError, match=r"dataset\.json: the top-level 'aux_from_rgb' is ambiguous"
    ):
        FolderRGBX("train", root, "depth,thermal")
    assert FolderRGBX("train", root, "thermal").rig is not None  # one modality: as before


def test_normalisation_and_batches_keep_each_modality_apart() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    aux = np.array([[[0.0, 0.5], [2.0, 0.0]], [[0.0, 0.0], [4.0, 0.25]]], np.float32)
    sample = {"rgb": rgb, "aux": aux, "mask": np.zeros((2, 2), np.int64), "meta": {}}
    norm = Normalizer(aux_mean=(1.0, 0.5), aux_std=(2.0, 0.25), aux_groups=(1, 1))
    out = norm(sample)["aux"]  # type: ignore[arg-type]
    # a depth hole beside valid thermal stays 0; thermal is normalised on its own
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == pytest.approx(0.0)
    assert out[0, 0, 1] == pytest.approx(0.5) and out[1, 0, 1] == 0
    assert out[0, 1, 1] == pytest.approx(1.5) and out[1, 1, 1] == pytest.approx(-1.0)
    joint = Normalizer(aux_mean=(1.0, 0.5), aux_std=(2.0, 0.25))(sample)["aux"]  # type: ignore[arg-type]
    assert joint[0, 0, 0] == pytest.approx(-0.5)  # one aux image: a pixel is valid as a whole
    items = [
        {"rgb": torch.zeros(3, 2, 2), "aux": torch.zeros(2, 2, 2), "mask": torch.zeros(2, 2)}
        | {"meta": {"present": p}}
        for p in ([True, False], [True, True])
    ]
    batch = collate(items)
    assert batch["present"].dtype == torch.bool
    assert batch["present"].tolist() == [[True, False], [True, True]]
    assert "present" not in collate([{**items[0], "meta": {}}])


def test_a_three_modality_model_trains_through_the_cli(
    tiny_rgbdt_root: Path, tmp_path: Path
) -> None:
    exp = run_stage(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "synthetic" / "base.yaml"),
            "--config",
            str(ROOT / "configs" / "synthetic" / "rgbdt.yaml"),
            *small_cli_args(tiny_rgbdt_root, tmp_path),
            "--model.network.init_args.backbone=resnet10t",
            "--model.network.init_args.decoder.init_args.channels=16",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
        ]
    )
    net = exp.task.net
    assert isinstance(net, MultiModalSegmenter)
    assert net.modalities == {"depth": 1, "thermal": 1}
    assert exp.task.hparams["modalities"] == {"depth": 1, "thermal": 1}
    batch = next(iter(exp.datamodule.val_dataloader()))
    assert batch["aux"].shape[1] == 2 and batch["present"].all()
    assert 0.0 <= exp.task.last_scores["val"]["mIoU"] <= 1.0


def _dropout_module(root: Path, dropout: object) -> RGBXDataModule:
    return RGBXDataModule(
        partial(SyntheticRGBX, root=root, modality="depth,thermal"),
        batch_size=4,
        num_workers=0,
        modality_dropout=dropout,  # type: ignore[arg-type]
    )


def test_modality_dropout_drops_each_modality_at_its_rate(tiny_rgbdt_root: Path) -> None:
    dm = _dropout_module(tiny_rgbdt_root, {"depth": 0.5, "thermal": 0.25})
    train = dm.dataset("fit")
    present = []
    for seed in range(400):
        sample = train[(seed % 8, seed)]
        p = sample["meta"]["present"]
        present.append(p)
        for j, kept in enumerate(p):  # a dropped modality's channel holds the missing value
            assert bool((sample["aux"][j] != 0).any()) == kept
    rates = 1 - torch.tensor(present, dtype=torch.float32).mean(0)
    assert rates[0] == pytest.approx(0.5, abs=0.08) and rates[1] == pytest.approx(0.25, abs=0.07)
    # seeded by the sample's seed: a resumed run drops the same modalities
    assert [train[(i % 8, i)]["meta"]["present"] for i in range(20)] == present[:20]
    # evaluation never drops
    assert all(s["meta"]["present"] == [True, True] for s in dm.dataset("test"))  # type: ignore[attr-defined]
    none = _dropout_module(tiny_rgbdt_root, 0.0).dataset("fit")
    assert all(none[(0, s)]["meta"]["present"] == [True, True] for s in range(30))


def test_bad_modality_dropout_is_a_typed_error(tiny_rgbdt_root: Path) -> None:
    cases = {
        "rgb": ({"rgb": 0.5}, r"\['rgb'\].*every sample keeps"),
        "unknown": ({"lidar": 0.5}, r"'lidar'.*dataset\.json.*\['depth', 'thermal'\]"),
        "certain": ({"depth": 1.0}, r"\['depth'\].*\[0, 1\).*every sample"),
        "negative": (-0.1, r"\['depth'\].*\[0, 1\)"),
    }
    for value, message in cases.values():
        with pytest.raises(ConfigError, match=message):
            _dropout_module(tiny_rgbdt_root, value).dataset("fit")
    one = RGBXDataModule(
        partial(SyntheticRGBX, root=tiny_rgbdt_root, modality="depth"),
        num_workers=0,
        modality_dropout=0.5,
    )
    with pytest.raises(ConfigError, match="several named aux modalities"):
        one.dataset("fit")


def test_modalities_of_another_size_are_a_typed_error(
    tiny_rgbdt_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_rgbdt_root, root)
    name = (root / "splits" / "train.txt").read_text().split()[0]
    path = root / "thermal" / f"{name}.png"
    small = np.asarray(Image.open(path))[:40, :50]
    Image.fromarray(small).save(path)
    data = FolderRGBX("train", root, "depth,thermal")
    with pytest.raises(ShapeMismatchError, match=rf"thermal/{name}\.png.*60×80.*found 40×50"):
        data[0]
