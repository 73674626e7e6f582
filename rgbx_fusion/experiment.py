"""Experiments: configuration layers and overrides → trainer, task and datamodule.

Every entry point that trains or evaluates builds its objects here: the command
line's ``fit`` / ``validate`` / ``test`` / ``predict`` / ``fit-test``, ``compare``,
``benchmark --data`` and the robustness sweep. A config is a stack of YAML layers
(later layers win) plus dotted overrides, exactly what ``rgbx-fusion fit --config
base.yaml --config variant.yaml --trainer.max_epochs=2`` parses::

    exp = build(["configs/synthetic/base.yaml", "configs/synthetic/mid_se.yaml"],
                {"trainer.max_epochs": 2})
    result = fit_and_test(exp)   # fit → the best checkpoint on val → test, once
    print(result.miou)

The task is :class:`SegmentationTask` unless the stack names another LightningModule
as ``model.class_path`` (e.g. ``rgbx_fusion.tasks.alignment.AlignmentTask`` in
``configs/align/``); its options then sit under ``model.init_args``.

Convention:
    ``num_classes``, ``aux_channels``, ``ignore_index`` and ``class_names`` flow from
    the datamodule to the task (never typed twice; a task gets those its constructor
    takes); checkpoints are written through a
    temporary file and renamed, and read with ``weights_only=True``; every run logs
    to TensorBoard and CSV under ``<default_root_dir>/lightning_logs/version_<n>``
    and writes its resolved ``config.yaml`` there.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ActionYesNo, Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO

from rgbx_fusion.console import console
from rgbx_fusion.data.datamodule import RGBXDataModule
from rgbx_fusion.errors import ConfigError
from rgbx_fusion.tasks.checkpoints import (
    AtomicCheckpointIO,
    ResumeCheckpoint,
    find_last_checkpoint,
)
from rgbx_fusion.tasks.segmentation import SegmentationTask

STAGES = ("fit", "validate", "test", "predict")
Overrides = Sequence[str] | Mapping[str, Any]
LINKED = ("num_classes", "aux_channels", "ignore_index", "class_names", "modalities")


class RGBXArgumentParser(LightningArgumentParser):
    """Lightning's parser, with the nearest valid option suggested for an unknown key."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        names = [opt[2:] for a in self._actions for opt in a.option_strings if opt[:2] == "--"]
        super().error(message + suggest_option(message, names), ex)


def suggest_option(message: str, known: Sequence[str]) -> str:
    """`` (did you mean 'model.lr'?)`` for the first unknown key named in ``message``."""
    for key in re.findall(r"(?:--|')([A-Za-z_][\w.]*)", message):
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f" (did you mean '{close[0]}'?)"
    return ""


class ExperimentCLI(LightningCLI):
    """Parses a config stack into objects; never runs a trainer method itself.

    The stage options (``ckpt_path``, ``eval.*``, ``output_dir``, ...) are plain config
    keys, so a run's saved ``config.yaml`` reloads in every stage.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        task = self._model_class
        prefix = "model.init_args." if self.subclass_mode_model else "model."
        accepted = inspect.signature(task).parameters
        for key in LINKED:
            if key in accepted:
                parser.link_arguments(f"data.{key}", prefix + key, apply_on="instantiate")
        monitor, mode = getattr(task, "checkpoint_monitor", ("val/mIoU", "max"))
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": monitor,
                "checkpoint.mode": mode,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="checkpoint to resume (fit; 'last' = the newest last.ckpt of this run) "
            "or to evaluate (validate, test, predict)",
        )
        parser.add_argument(
            "--weights_only",
            type=bool | None,
            default=None,
            help="checkpoints are always read with weights_only=True; false is refused",
        )
        parser.add_argument(
            "--output_dir",
            type=str | None,
            default=None,
            help="predict: folder for label PNGs and overlays (default: <log_dir>/predictions)",
        )
        parser.add_argument(
            "--dump_alignment",
            type=bool,
            default=False,
            help="predict: also write checkerboards, edge overlays and flow images of the "
            "aligners to <output_dir>/alignment",
        )
        parser.add_argument(
            "--eval.scales",
            type=str | None,
            default=None,
            help="test: comma-separated input scales averaged at test time, e.g. "
            "0.5,0.75,1,1.25,1.5 (default: single scale)",
        )
        parser.add_argument(
            "--eval.flip", action=ActionYesNo, default=False, help="test: also average mirrors"
        )

    def __init__(self, *args: Any, parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only
        super().__init__(*args, **kwargs)

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        # As Lightning's own subcommands do: a checkpoint's model settings win over the
        # config, so `test --config data.yaml --ckpt_path x.ckpt` rebuilds x's network.
        ckpt = self.config.get("ckpt_path")
        if not ckpt or not Path(ckpt).is_file():
            return
        hparams = torch.load(ckpt, weights_only=True, map_location="cpu").get("hyper_parameters")
        if not hparams:
            return
        hparams = dict(hparams)
        hparams.pop("_instantiator", None)
        if "_class_path" in hparams and self.subclass_mode_model:
            class_path = hparams.pop("_class_path")
            for key in LINKED:  # filled from the data again
                hparams.pop(key, None)
            hparams = {"class_path": class_path, "init_args": hparams}
        elif "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({"model": hparams}, self.config)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer_cfg = self.config_init.get("trainer") or {}
        plugins = trainer_cfg.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]  # temp file + rename, every write
        kwargs.setdefault("plugins", plugins)
        if trainer_cfg.get("logger") in (None, True):
            kwargs.setdefault("logger", default_loggers(trainer_cfg.get("default_root_dir")))
        return super().instantiate_trainer(**kwargs)


def default_loggers(root: str | None) -> list[Any]:
    """TensorBoard (curves) and CSV (``metrics.csv``) in one ``lightning_logs/version_<n>``."""
    save_dir = root or "."
    tensorboard = TensorBoardLogger(save_dir, name="lightning_logs", default_hp_metric=False)
    # The CSV writer warns about a folder that exists, so it goes first and creates it.
    return [CSVLogger(save_dir, name="lightning_logs", version=tensorboard.version), tensorboard]


@dataclass
class Experiment:
    """The objects of one run and the resolved config they came from.

    ``module`` is the LightningModule of any task; ``task`` is the same object for code that
    needs a :class:`SegmentationTask` (and says so otherwise).
    """

    trainer: pl.Trainer
    module: pl.LightningModule
    datamodule: RGBXDataModule
    config: Namespace
    cli: ExperimentCLI

    @property
    def task(self) -> SegmentationTask:
        if not isinstance(self.module, SegmentationTask):
            raise ConfigError(
                f"this needs a SegmentationTask model; the config builds a "
                f"{type(self.module).__name__} (its fit, validate and test work)"
            )
        return self.module

    @property
    def model_config(self) -> Namespace:
        """The task's options (``model``, or ``model.init_args`` for a ``class_path``)."""
        model = self.config.get("model")
        return model.get("init_args") if "class_path" in model else model

    def dump(self) -> str:
        """The resolved config as YAML (what ``--print_config`` shows)."""
        return str(self.cli.parser.dump(self.config, skip_none=False))


def override_args(overrides: Overrides) -> list[str]:
    """``{"trainer.max_epochs": 2}`` or ``["--trainer.max_epochs=2"]`` → CLI arguments."""
    if isinstance(overrides, Mapping):
        return [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    return [str(a) for a in overrides]


def config_args(configs: Sequence[str | Path] = (), overrides: Overrides = ()) -> list[str]:
    """The CLI arguments of a config stack plus overrides."""
    layers = [a for c in configs for a in ("--config", str(c))]
    return layers + override_args(overrides)


def model_class_path(argv: Sequence[str]) -> str | None:
    """The ``model.class_path`` that a command line's config layers or options name (the
    last one wins), or ``None`` (then the task is :class:`SegmentationTask`)."""
    found: str | None = None
    args = list(argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        if name == "--config":
            path = Path(value)
            if path.is_file():
                data = yaml.safe_load(path.read_text())
                model = data.get("model") if isinstance(data, dict) else None
                if isinstance(model, dict) and isinstance(model.get("class_path"), str):
                    found = model["class_path"]
        elif name in ("--model.class_path", "--model"):
            found = value
    return found


def _model_class(argv: Sequence[str]) -> type[pl.LightningModule] | None:
    """The task class named by the command line, imported (``None``: SegmentationTask)."""
    path = model_class_path(argv)
    if path is None:
        return None
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"model.class_path: cannot import {path!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ConfigError(f"model.class_path: {path} is not a LightningModule")
    return cls


def _cli(
    argv: Sequence[str], prog: str, description: str | None, parse_only: bool
) -> ExperimentCLI:
    task = _model_class(argv)
    with warnings.catch_warnings():
        # Lightning warns when arguments are passed while sys.argv has some: that is
        # how every entry point here hands over its arguments.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from")
        return ExperimentCLI(
            task or SegmentationTask,
            RGBXDataModule,
            subclass_mode_model=task is not None,
            trainer_defaults={"default_root_dir": "runs", "log_every_n_steps": 10},
            save_config_kwargs={"overwrite": True},
            args=list(argv),
            run=False,
            parser_kwargs={"parser_mode": "yaml", "prog": prog, "description": description},
            parser_class=RGBXArgumentParser,
            parse_only=parse_only,
        )


def resolve(configs: Sequence[str | Path] = (), overrides: Overrides = ()) -> Namespace:
    """The resolved config of a stack, without building anything (no data is read)."""
    return _cli(config_args(configs, overrides), "rgbx-fusion", None, parse_only=True).config


def build(
    configs: Sequence[str | Path] = (),
    overrides: Overrides = (),
    *,
    args: Sequence[str] | None = None,
    prog: str = "rgbx-fusion",
    description: str | None = None,
) -> Experiment:
    """Parse a config stack and overrides (or raw CLI ``args``) into an :class:`Experiment`.

    Raises:
        SystemExit: for an unknown key or an invalid value (jsonargparse prints why).
        ConfigError: for a value the toolkit's classes reject.
    """
    argv = list(args) if args is not None else config_args(configs, overrides)
    cli = _cli(argv, prog, description, parse_only=False)
    if cli.config.get("weights_only") is False:
        raise ConfigError("weights_only: false is not supported; checkpoints hold plain data")
    assert isinstance(cli.model, pl.LightningModule)
    assert isinstance(cli.datamodule, RGBXDataModule)
    exp = Experiment(cli.trainer, cli.model, cli.datamodule, cli.config, cli)
    exp.module.run_config = exp.dump()  # type: ignore[assignment]  # kept in every checkpoint
    # Factories (the network, an aligner) as config data, so the checkpoint alone rebuilds
    # the task (test --ckpt_path).
    for key in ("network", "aligner"):
        factory = exp.model_config.get(key)
        if isinstance(factory, Namespace):
            exp.module.hparams[key] = factory.as_dict()
    return exp


def run(exp: Experiment, stage: str) -> Any:
    """Run one trainer stage with the config's ``ckpt_path`` and stage options."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    ckpt = exp.config.get("ckpt_path")
    if stage == "fit" and ckpt == "last":
        # Lightning looks only in this run's new version folder; resume the newest.
        last = find_last_checkpoint(exp.trainer)
        console.print(f"resuming from {last}" if last else "no last checkpoint yet: starting")
        ckpt = str(last) if last else None
        cb = exp.trainer.checkpoint_callback
        if last and isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(last.parent)  # keep tracking the best checkpoint there
    if stage == "test" and isinstance(exp.module, SegmentationTask):
        from rgbx_fusion.models.tta import parse_scales

        scales = parse_scales(exp.config.get("eval.scales"))
        exp.task.set_test_augmentation(scales, bool(exp.config.get("eval.flip")))
        console.print(f"test mode: {exp.task.test_mode}")
    if stage == "predict":
        if not isinstance(exp.module, SegmentationTask):
            raise ConfigError(
                f"predict writes label maps and needs a SegmentationTask, not a "
                f"{type(exp.module).__name__}; use validate or test"
            )
        _add_prediction_writers(exp, ckpt)
    method = getattr(exp.trainer, stage)
    with _running(exp):
        return method(exp.module, datamodule=exp.datamodule, ckpt_path=ckpt, weights_only=True)


def prediction_dir(exp: Experiment) -> Path:
    out = exp.config.get("output_dir")
    return Path(out) if out else Path(exp.trainer.log_dir or ".") / "predictions"


def _add_prediction_writers(exp: Experiment, ckpt: str | None) -> None:
    from rgbx_fusion.tasks.prediction_writer import SegmentationWriter, restore_normalization

    dm, out = exp.datamodule, prediction_dir(exp)
    if ckpt:  # normalise as in training, before any image is read
        restore_normalization(dm, ckpt)
    callbacks: list[Any] = [SegmentationWriter(out, dm.palette, dm.normalizer())]
    if exp.config.get("dump_alignment"):
        from rgbx_fusion.alignment_report import AlignmentWriter

        callbacks.append(AlignmentWriter(out / "alignment", dm.normalizer()))
    exp.trainer.callbacks.extend(callbacks)  # type: ignore[attr-defined]


@contextmanager
def _running(exp: Experiment) -> Iterator[None]:
    """A trainer stage: a device out-of-memory error becomes :class:`DeviceMemoryError`
    naming the settings to lower; a deprecation inside Lightning is not shown."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    except torch.OutOfMemoryError as exc:
        from rgbx_fusion.tasks.guards import out_of_memory_error

        keys = ("data.batch_size", "data.train_size", "trainer.precision")
        raise out_of_memory_error(exc, {k: exp.config.get(k) for k in keys}) from exc


@dataclass(frozen=True)
class TestResult:
    """Test scores of the checkpoint chosen on val."""

    checkpoint: str | None
    val_miou: float
    miou: float
    pixel_acc: float
    iou: list[float]
    classes: list[str]


def fit_and_test(exp: Experiment, resume_from: str | Path | None = None) -> TestResult:
    """Train, then test the best-on-val checkpoint (the last weights without validation).

    ``resume_from``: a ``last.ckpt`` of an interrupted run; training continues from it.
    """
    resume = str(resume_from) if resume_from is not None else None
    with _running(exp):
        exp.trainer.fit(exp.task, datamodule=exp.datamodule, ckpt_path=resume, weights_only=True)
        cb = exp.trainer.checkpoint_callback
        best = str(getattr(cb, "best_model_path", "") or "") or None
        score = getattr(cb, "best_model_score", None)
        exp.trainer.test(exp.task, datamodule=exp.datamodule, ckpt_path=best, weights_only=True)
    scores = exp.task.last_scores["test"]
    return TestResult(
        checkpoint=best,
        val_miou=float(score) if score is not None else float("nan"),
        miou=float(scores["mIoU"]),
        pixel_acc=float(scores["pixel_acc"]),
        iou=[float(v) for v in scores["iou"].tolist()],
        classes=list(exp.task.class_names),
    )
