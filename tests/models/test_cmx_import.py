"""Released CMX checkpoints: key mapping, exact outputs, errors, ``import cmx`` and ``test``."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_overrides import run_stage
from cmx_reference import CMX, randomize
from PIL import Image

import rgbx_fusion
from rgbx_fusion.cli import main
from rgbx_fusion.errors import CheckpointError, WeightsMismatchError
from rgbx_fusion.inference import build_network, full_network_config
from rgbx_fusion.models.convert.cmx import (
    CMX_HEADS,
    build_cmx_network,
    cmx_key_map,
    cmx_network_config,
    convert_cmx_state_dict,
)
from rgbx_fusion.models.tta import multiscale_probabilities
from rgbx_fusion.tasks.metrics import SegmentationMetrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def cmx_b0() -> CMX:
    return randomize(CMX("b0", num_classes=40)).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cmx_file(cmx_b0: CMX, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file laid out like CMX's released checkpoints: ``{"model": ..., "epoch": ...}``."""
    path = tmp_path_factory.mktemp("cmx") / "NYUDV2_CMX+B0.pth"
    torch.save({"model": cmx_b0.state_dict(), "epoch": 500, "iteration": 12}, path)
    return path


@pytest.mark.parametrize("variant", ["b0", "b2"])
def test_key_map_covers_the_official_names_and_the_network(variant: str) -> None:
    with torch.device("meta"):
        official = CMX(variant, num_classes=40).state_dict()
        ours = build_cmx_network(variant, 40).state_dict()
    table = cmx_key_map(variant)
    assert sorted(table) == sorted(official)
    assert set(table.values()) == set(ours)
    assert len(set(table.values())) == len(table) - 1  # only the folded fuse bias shares a slot
    # the configuration stored in checkpoints builds the same network
    with torch.device("meta"):
        stored = build_network(full_network_config(cmx_network_config(variant)), 40, 3)
    assert set(stored.state_dict()) == set(ours)
    heads = [f.cross.cross_attn.num_heads for f in stored.fusions]
    assert tuple(heads) == CMX_HEADS


def test_every_tensor_lands_in_its_place(cmx_b0: CMX) -> None:
    official = cmx_b0.state_dict()
    conv = convert_cmx_state_dict(official)
    assert (conv.variant, conv.num_classes, conv.embed_dim) == ("b0", 40, 256)
    for src, dst in cmx_key_map("b0").items():
        if src == "decode_head.linear_fuse.0.bias":
            continue
        if src == "decode_head.linear_fuse.1.running_mean":
            folded = official[src] - official["decode_head.linear_fuse.0.bias"]
            torch.testing.assert_close(conv.state_dict[dst], folded)
            continue
        assert torch.equal(conv.state_dict[dst], official[src]), src
    sd = conv.state_dict  # a few rules spelled out independently of the table
    assert torch.equal(
        sd["encoder.aux.segments.1.stages_1.blocks.0.mlp.dwconv.weight"],
        official["backbone.extra_block2.0.mlp.dwconv.dwconv.weight"],
    )
    assert torch.equal(
        sd["rectifiers.3.spatial_weights.mlp.2.bias"],
        official["backbone.FRMs.3.spatial_weights.mlp.2.bias"],
    )
    assert torch.equal(
        sd["fusions.2.cross.cross_attn.kv2.weight"],
        official["backbone.FFMs.2.cross.cross_attn.kv2.weight"],
    )
    assert torch.equal(sd["head.1.weight"], official["decode_head.linear_pred.weight"])


def test_converted_network_reproduces_cmx(cmx_b0: CMX) -> None:
    ref = copy.deepcopy(cmx_b0).double()
    net = build_cmx_network("b0", 40).double()
    net.load_state_dict(convert_cmx_state_dict(ref.state_dict()).state_dict)
    net.eval()
    rgb, x = (
        torch.randn(2, 3, 64, 96, dtype=torch.float64),
        torch.randn(2, 3, 64, 96, dtype=torch.float64),
    )
    with torch.no_grad():
        expected, got = ref(rgb, x), net(rgb, x)
    assert got.shape == (2, 40, 64, 96)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_mismatches_are_listed_ignored_keys_reported(cmx_b0: CMX) -> None:
    sd = dict(cmx_b0.state_dict())
    del sd["backbone.FFMs.2.cross.norm1.bias"]
    sd["backbone.head.weight"] = torch.zeros(1000, 256)
    with pytest.raises(WeightsMismatchError) as info:
        convert_cmx_state_dict(sd)
    assert info.value.missing == ["backbone.FFMs.2.cross.norm1.bias"]
    assert info.value.unexpected == ["backbone.head.weight"]
    sd["backbone.FFMs.2.cross.norm1.bias"] = cmx_b0.state_dict()["backbone.FFMs.2.cross.norm1.bias"]
    conv = convert_cmx_state_dict(sd, ignore=[r"^backbone\.head\."])
    assert conv.ignored == ["backbone.head.weight"]
    with pytest.raises(WeightsMismatchError, match="shaped like MiT-B0"):
        convert_cmx_state_dict(cmx_b0.state_dict(), variant="b2")
    with pytest.raises(CheckpointError, match="not a CMX"):
        convert_cmx_state_dict({"backbone.patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7)})
    no_counters = {k: v for k, v in cmx_b0.state_dict().items() if "num_batches" not in k}
    assert convert_cmx_state_dict(no_counters).variant == "b0"  # counters carry no weights


def test_import_command_then_load_model(
    cmx_b0: CMX, cmx_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmx_b0.ckpt"
    with pytest.raises(SystemExit) as done:
        main(["import", "cmx", "--ckpt", str(cmx_file), "--out", str(out)])
    assert done.value.code == 0
    assert "MiT-B0: 40 classes" in capsys.readouterr().out
    model = rgbx_fusion.load_model(out)
    assert not model.training and model.num_classes == 40
    assert model.source["format"] == "cmx" and model.source["variant"] == "b0"
    assert model.preprocess.aux_mean == IMAGENET_MEAN
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    hha = rng.uniform(0.05, 1.0, (64, 80, 3)).astype(np.float32)
    x_rgb, x_aux = model.preprocess(rgb, hha)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    torch.testing.assert_close(
        x_rgb[0], (torch.from_numpy(rgb).permute(2, 0, 1) / 255 - mean) / std
    )
    torch.testing.assert_close(x_aux[0], (torch.from_numpy(hha).permute(2, 0, 1) - mean) / std)
    with torch.no_grad():
        torch.testing.assert_close(model(x_rgb, x_aux), cmx_b0(x_rgb, x_aux), rtol=1e-4, atol=1e-4)
    labels = model.predict(rgb, hha, scales=(0.75, 1.0), flip=True)
    assert labels.shape == (64, 80) and labels.dtype == torch.int64


def _write_nyu(root: Path, names: list[str], size: tuple[int, int] = (48, 64)) -> Path:
    """A tiny NYU Depth v2 folder in the SA-Gate / CMX layout (RGB, HHA, Depth, Label)."""
    rng = np.random.default_rng(0)
    for sub in ("RGB", "HHA", "Depth", "Label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            root / "RGB" / f"{n}.png"
        )
        Image.fromarray(rng.integers(1, 256, (*size, 3), dtype=np.uint8)).save(
            root / "HHA" / f"{n}.png"
        )
        np.save(root / "Depth" / f"{n}.npy", rng.uniform(0.5, 8.0, size).astype(np.float32))
        Image.fromarray(rng.integers(0, 41, size).astype(np.uint8)).save(
            root / "Label" / f"{n}.png"
        )
    for split, part in (("train", names[:3]), ("test", names[3:])):
        (root / f"{split}.txt").write_text("".join(f"RGB/{n}.png\tLabel/{n}.png\n" for n in part))
    return root


def test_imported_cmx_runs_through_cli_test_multiscale_flip(
    cmx_b0: CMX, cmx_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmx_b0.ckpt"
    with pytest.raises(SystemExit):
        main(["import", "cmx", "--ckpt", str(cmx_file), "--out", str(out)])
    root = _write_nyu(tmp_path / "nyu", ["1", "2", "3", "4", "5"])
    args = [
        "--config",
        str(CONFIGS / "nyudv2" / "base.yaml"),
        "--config",
        str(CONFIGS / "nyudv2" / "cmx_b2.yaml"),
        f"--data.dataset.init_args.root={root}",
        "--data.dataset.init_args.val_fraction=0.34",
        "--data.num_workers=0",
        "--data.eval_batch_size=2",
        "--trainer.precision=32-true",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        f"--ckpt_path={out}",
        "--eval.scales=0.75,1",
        "--eval.flip",
    ]
    cli = run_stage(["test", *args])  # runs `rgbx-fusion test`
    assert cli.task.net.encoder.rgb.name == "mit_b0"  # network from the checkpoint
    assert cli.task.test_mode == "multi-scale 0.75,1 + flip"
    assert "multi-scale 0.75,1 + flip" in capsys.readouterr().out
    assert cli.datamodule.aux_mean == IMAGENET_MEAN  # CMX normalisation restored
    assert float(cli.trainer.callback_metrics["test/eval_scales"]) == 2.0
    expected = SegmentationMetrics(40, 255)
    with torch.no_grad():
        for batch in cli.datamodule.test_dataloader():
            probs = multiscale_probabilities(cmx_b0, batch["rgb"], batch["aux"], (0.75, 1.0), True)
            expected.update(probs.argmax(1), batch["mask"])
    torch.testing.assert_close(cli.task.last_scores["test"]["mIoU"], expected.scores()["mIoU"])
