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
