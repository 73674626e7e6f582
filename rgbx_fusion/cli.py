"""Command line: Lightning's fit / validate / test / predict plus rgbx-fusion's own commands.

``rgbx-fusion fit --config configs/synthetic_mid_add.yaml`` trains;
``rgbx-fusion prepare synthetic --root datasets/synthetic`` writes the embedded
dataset; ``rgbx-fusion quickstart`` does both and prints the comparison table;
``rgbx-fusion list fusions|aligners|decoders`` shows the catalogues.
"""

from __future__ import annotations

import difflib
import re
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from jsonargparse import ActionYesNo
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from rgbx_fusion.data.datamodule import RGBXDataModule
from rgbx_fusion.tasks.resume import ResumeCheckpoint, find_last_checkpoint, use_atomic_checkpoints
from rgbx_fusion.tasks.segmentation import SegmentationTask

EXTRA_COMMANDS = (
    "prepare",
    "quickstart",
    "list",
    "hha",
    "fit-test",
    "benchmark",
    "compare",
    "export",
    "import",
)

# Lightning falls back to its CSV logger without tensorboard; that is the intended default.
warnings.filterwarnings("ignore", message=".*tensorboardX.*")
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
warnings.filterwarnings(
    "ignore", message=".*args parameter is intended to run from within Python.*"
)


class RGBXArgumentParser(LightningArgumentParser):
    """Lightning's parser, with the nearest valid option suggested for an unknown key."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        super().error(message + suggest_option(message, self._option_names()), ex)

    def _option_names(self) -> list[str]:
        names = [
            opt[2:]
            for action in self._actions
            for opt in action.option_strings
            if opt.startswith("--")
        ]
        sub = self._subcommands_action
        if sub is not None:  # errors about config files are raised by the root parser
            for parser in sub._name_parser_map.values():
                if isinstance(parser, RGBXArgumentParser):
                    names.extend(parser._option_names())
        return names


def suggest_option(message: str, known: Sequence[str]) -> str:
    """`` (did you mean 'model.lr'?)`` for the first unknown key named in ``message``."""
    found = re.findall(r"(?:--|')([A-Za-z_][\w.]*)", message)
    for key in found:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f" (did you mean '{close[0]}'?)"
    return ""


class RGBXLightningCLI(LightningCLI):
    """LightningCLI with the data → model links and the toolkit's defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "aux_channels", "ignore_index", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ResumeCheckpoint, "resume")
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
            "--eval.flip",
            action=ActionYesNo,
            default=False,
            help="test: also average the mirror images",
        )

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        # Checkpoints hold tensors and plain data only; never unpickle code.
        accepts = "weights_only" in self._subcommand_method_arguments.get(subcommand, ())
        if accepts and kwargs.get("weights_only") is None:
            kwargs["weights_only"] = True
        if subcommand == "fit" and kwargs.get("ckpt_path") == "last":
            # Lightning looks in this run's new version folder only; resume the newest.
            last = find_last_checkpoint(self.trainer)
            print(f"resuming from {last}" if last else "no last checkpoint yet: starting fresh")
            kwargs["ckpt_path"] = str(last) if last else None
            cb = self.trainer.checkpoint_callback
            if last and isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(last.parent)  # keep tracking the best checkpoint there
        return kwargs

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_atomic_checkpoints(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except torch.OutOfMemoryError as exc:
            from rgbx_fusion.tasks.guards import out_of_memory_error

            cfg = self.config.get(subcommand, self.config)
            keys = ("data.batch_size", "data.train_size", "trainer.precision")
            raise out_of_memory_error(exc, {k: cfg.get(k) for k in keys}) from exc

    def before_fit(self) -> None:
        if isinstance(self.model, SegmentationTask):  # the resolved config, kept in checkpoints
            cfg = self.config.get(str(self.subcommand), self.config)
            self.model.run_config = self._parser(self.subcommand).dump(cfg, skip_none=False)

    def before_test(self) -> None:
        from rgbx_fusion.models.tta import parse_scales

        cfg = self.config.get(self.subcommand, self.config)
        if isinstance(self.model, SegmentationTask):
            flip = bool(cfg.get("eval.flip"))
            self.model.set_test_augmentation(parse_scales(cfg.get("eval.scales")), flip)
            print(f"test mode: {self.model.test_mode}")

    def before_predict(self) -> None:
        from rgbx_fusion.predict import SegmentationWriter, restore_normalization

        cfg = self.config.get(self.subcommand, self.config)
        out = cfg.get("output_dir") or str(Path(self.trainer.log_dir or ".") / "predictions")
        dm = self.datamodule
        assert isinstance(dm, RGBXDataModule)
        if cfg.get("ckpt_path"):  # normalise as in training, before any image is read
            restore_normalization(dm, cfg["ckpt_path"])
        self.trainer.callbacks.append(SegmentationWriter(out, dm.palette, dm.normalizer()))  # type: ignore[attr-defined]
        if cfg.get("dump_alignment"):
            from rgbx_fusion.alignment_report import AlignmentWriter

            writer = AlignmentWriter(Path(out) / "alignment", dm.normalizer())
            self.trainer.callbacks.append(writer)  # type: ignore[attr-defined]
        self._predict_dir = out

    def after_predict(self) -> None:
        print(f"predictions written to {self._predict_dir}")


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> RGBXLightningCLI:
    """Build (and by default run) the Lightning CLI."""
    return RGBXLightningCLI(
        SegmentationTask,
        RGBXDataModule,
        trainer_defaults={
            "default_root_dir": "runs",
            "log_every_n_steps": 10,
        },
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        run=run,
        parser_kwargs={"parser_mode": "yaml"},
        parser_class=RGBXArgumentParser,
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        from rgbx_fusion.commands import run_extra

        sys.exit(run_extra(argv))
    try:
        build_cli(None if argv == sys.argv[1:] else argv)
    except SIGTERMException:  # stopped (last.ckpt saved): not a success for job schedulers
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":  # pragma: no cover
    main()
