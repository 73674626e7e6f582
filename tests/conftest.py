"""Shared fixtures: tiny generated datasets, deterministic torch settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic

REAL_SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "real-samples"


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def module_tmp(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """A folder shared by one test module's runs, removed when the module is done.

    Training runs write checkpoints of a few hundred MB; keeping every module's runs
    until the session ends would need several GB of disk.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_depth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12/4/4 synthetic RGB-D dataset at 60×80 (same layout as the real one)."""
    root = tmp_path_factory.mktemp("synthetic_depth")
    spec = SyntheticSpec(num_train=12, num_val=4, num_test=4, height=60, width=80)
    return prepare_synthetic(root, spec, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_thermal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_thermal")
    spec = SyntheticSpec(
        modality="thermal", num_train=12, num_val=4, num_test=4, height=60, width=80
    )
    return prepare_synthetic(root, spec, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_rgbdt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RGB, depth and thermal of the same 8/2/2 synthetic frames at 60×80."""
    root = tmp_path_factory.mktemp("synthetic_rgbdt")
    spec = SyntheticSpec(
        modality="depth,thermal", num_train=8, num_val=2, num_test=2, height=60, width=80
    )
    return prepare_synthetic(root, spec, workers=1, progress=False)


@pytest.fixture()
def nyu_sample() -> Path:
    """The real NYU Depth v2 frame in ../shared/real-samples (skip when absent)."""
    path = REAL_SAMPLES / "nyudv2-sagate"
    if not path.is_dir():
        pytest.skip("real sample folder ../shared/real-samples/nyudv2-sagate is absent")
    return path


@pytest.fixture(scope="session")
def tiny_rgbdt_run(tiny_rgbdt_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Best checkpoint of a tiny RGB-D-T ``MultiModalSegmenter`` (mid sum fusion, ResNet-10t,
    modality dropout) trained for two steps; its run folder holds ``config.yaml``."""
    from cli_overrides import small_cli_args

    from rgbx_fusion.experiment import build

    tmp = tmp_path_factory.mktemp("rgbdt_run")
    configs = Path(__file__).resolve().parents[1] / "configs" / "synthetic"
    layers = ("base.yaml", "rgbdt.yaml", "rgbdt_dropout.yaml")
    args = [arg for name in layers for arg in ("--config", str(configs / name))]
    args += [
        *small_cli_args(tiny_rgbdt_root, tmp),
        "--model.network.init_args.backbone=resnet10t",
        "--model.network.init_args.decoder.init_args.channels=16",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.num_sanity_val_steps=0",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = build(args=args)
        exp.trainer.fit(exp.task, datamodule=exp.datamodule)
    finally:
        torch.set_num_threads(threads)
    return Path(exp.trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
