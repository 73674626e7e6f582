"""Dataset plugins: entry-point discovery and training a plugin dataset through the CLI.

The demo plugin in tests/plugin_pkg is not pip-installed: the test writes the
``.dist-info`` (METADATA + entry_points.txt, taken from the plugin's
pyproject.toml) that an install would create into a temporary folder on
sys.path, which is all importlib.metadata looks at. No network, no build, and
the virtualenv is left as it was.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_overrides import run_stage

from rgbx_fusion.data.plugins import ENTRY_POINT_GROUP, PluginWarning, dataset_registry

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_pkg"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "base.yaml"
BUILTINS = ("folder", "synthetic", "nyudv2", "sunrgbd", "mfnet", "pst900")


def entry_points_of_pyproject(pyproject: Path) -> str:
    """The ``[project.entry-points."<group>"]`` tables as entry_points.txt text."""
    out, section = [], None
    for line in pyproject.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            prefix = "[project.entry-points."
            section = line[len(prefix) : -1].strip('"') if line.startswith(prefix) else None
            if section:
                out.append(f"[{section}]")
        elif section and "=" in line and not line.startswith("#"):
            name, value = (part.strip().strip('"') for part in line.split("=", 1))
            out.append(f"{name} = {value}")
    return "\n".join(out) + "\n"


def fake_install(site: Path, dist: str, entry_points: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pip install`` leaves for importlib.metadata: a .dist-info on sys.path."""
    info = site / f"{dist}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture()
def demo_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    text = entry_points_of_pyproject(PLUGIN_SRC / "pyproject.toml")
    assert f"[{ENTRY_POINT_GROUP}]" in text
    fake_install(tmp_path / "site", "rgbx_demo_plugin", text, monkeypatch)
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    yield
    sys.modules.pop("rgbx_demo_plugin", None)


def test_builtins_are_registered_and_take_split_first() -> None:
    registry = dataset_registry()
    assert set(BUILTINS) <= set(registry)
    for name in BUILTINS:
        params = list(inspect.signature(registry[name]).parameters)
        assert params[:2] == ["split", "root"], name


def test_plugin_is_discovered(demo_plugin: None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        registry = dataset_registry()
    cls = registry["demo_rooms"]
    assert cls.__module__ == "rgbx_demo_plugin" and cls.__name__ == "DemoRooms"
    assert set(BUILTINS) <= set(registry)


def test_broken_plugins_warn_and_are_skipped(tmp_path: Path, monkeypatch) -> None:
    entry_points = (
        f"[{ENTRY_POINT_GROUP}]\n"
        "broken = rgbx_no_such_module_xyz:Rooms\n"
        "not_a_class = json:dumps\n"
        "nyudv2 = json:JSONDecoder\n"
    )
    fake_install(tmp_path / "site", "rgbx_broken_plugin", entry_points, monkeypatch)
    with pytest.warns(PluginWarning) as record:
        registry = dataset_registry()
    messages = "\n".join(str(w.message) for w in record)
    assert "'broken' = 'rgbx_no_such_module_xyz:Rooms'" in messages
    assert "failed to load" in messages
    assert "'not_a_class'" in messages and "not a dataset class" in messages
    assert "built-in" in messages
    assert "broken" not in registry and "not_a_class" not in registry
    assert registry["nyudv2"].__name__ == "NYUDv2"


def test_plugin_trains_through_the_cli(
    demo_plugin: None, tiny_depth_root: Path, tmp_path: Path
) -> None:

    cli = run_stage(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.dataset=rgbx_demo_plugin.DemoRooms",
            f"--data.dataset.init_args.root={tiny_depth_root}",
            "--trainer.fast_dev_run=true",
            "--data.num_workers=0",
            "--data.batch_size=2",
            "--data.train_size=[48, 64]",
            "--data.eval_size=[48, 64]",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert type(cli.datamodule.base_dataset("train")).__name__ == "DemoRooms"
    assert cli.task.class_names[-1] == "cushion_green"
    assert cli.trainer.global_step == 1
