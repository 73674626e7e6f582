"""``rgbx-fusion compare``: train every variant × seed of a compare config, then report.

Each run trains with the same data, split, augmentation, schedule, budget and
seeds; its checkpoint is chosen on val and tested. The report (``results.csv``,
``results.md``, ``report.html``, plots) is written to ``--out``; a rerun skips
finished runs, resumes interrupted ones and retries failed ones. ``--robustness``
then evaluates each trained run under perturbed inputs. ``--executor local`` trains
``--jobs`` runs at once on this machine; ``--executor slurm`` submits a job array.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console
from rgbx_fusion.errors import ConfigError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _groups(text: str) -> tuple[str, ...]:
    from rgbx_fusion.compare.robustness import GROUPS

    groups = tuple(g.strip() for g in text.split(",") if g.strip())
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"expected groups from {', '.join(GROUPS)}, got {text!r}")
    return groups


def _pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(
            f"expected FLAG=VALUE (e.g. constraint=a100), got {text!r}"
        )
    return key.strip().lstrip("-"), value


def parser() -> argparse.ArgumentParser:
    from rgbx_fusion.compare.executors import KINDS

    p = ArgumentParser(prog="rgbx-fusion compare", description=__doc__)
    p.add_argument("--config", required=True, help="compare config (configs/compare/*.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: runs/compare/<name>)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="also evaluate each best checkpoint under aux misregistration (x/y shift, "
        "rotation, scale), aux noise / holes and dark / noisy RGB",
    )
    p.add_argument(
        "--robustness-kinds",
        type=_groups,
        default=None,
        help="limit --robustness to these comma-separated groups: registration (aux "
        "shifts, rotations, scales), sensor (aux noise / holes, dark / noisy RGB), modality "
        "(each modality missing, missing at random, noisy); default: all",
    )
    p.add_argument("--no-speed", action="store_true", help="skip latency / peak-memory timing")
    p.add_argument(
        "--gallery",
        type=int,
        default=6,
        help="test images in report.html's gallery, the same for every variant (0: none)",
    )
    p.add_argument(
        "--executor",
        choices=KINDS,
        default=None,
        help="where the runs train: here one after another (default), in parallel local "
        "processes, or as a SLURM job array (local and slurm need rgbx-fusion[cluster])",
    )
    p.add_argument(
        "--jobs",
        type=_positive,
        default=None,
        help="local: runs at once (default: one per GPU, else 1)",
    )
    p.add_argument("--status", action="store_true", help="print every run's state and exit")
    p.add_argument(
        "--submit-only",
        action="store_true",
        help="slurm: return once the job array is queued; a later compare collects it",
    )
    slurm = p.add_argument_group("SLURM options (--executor slurm; override the config's)")
    slurm.add_argument("--slurm.partition", dest="partition", default=None, help="partition")
    slurm.add_argument(
        "--slurm.time", dest="time", default=None, help="minutes or [D-]HH:MM[:SS] per job"
    )
    slurm.add_argument(
        "--slurm.gpus-per-task",
        dest="gpus_per_task",
        type=_positive,
        help="GPUs per run (above 1: one task per GPU, DDP; set trainer.devices)",
    )
    slurm.add_argument(
        "--slurm.cpus-per-task", dest="cpus_per_task", type=_positive, help="CPU cores per task"
    )
    slurm.add_argument("--slurm.mem", dest="mem", default=None, help="memory per job, e.g. 64G")
    slurm.add_argument(
        "--slurm.array-parallelism",
        dest="array_parallelism",
        type=_positive,
        help="runs of the array at once",
    )
    slurm.add_argument("--slurm.account", dest="account", default=None, help="account to charge")
    slurm.add_argument("--slurm.qos", dest="qos", default=None, help="quality of service")
    slurm.add_argument(
        "--slurm.additional",
        dest="additional",
        type=_pair,
        action="append",
        default=None,
        metavar="FLAG=VALUE",
        help="any other sbatch flag (repeatable)",
    )
    return p


def run(argv: Sequence[str]) -> int:
    from rgbx_fusion.compare.executors import SLURM_KEYS, with_cli
    from rgbx_fusion.compare.grid import load_compare_config
    from rgbx_fusion.compare.runner import print_status, run_compare

    args = parser().parse_args(list(argv))
    config = load_compare_config(args.config)
    out = Path(args.out) if args.out else Path("runs/compare") / Path(args.config).stem
    if args.status:
        print_status(config, out)
        return 0
    slurm = {key: getattr(args, key) for key in SLURM_KEYS}
    slurm["additional"] = dict(args.additional) if args.additional else None
    settings = with_cli(config.executor, args.executor, args.jobs, slurm)
    if args.submit_only and settings.kind != "slurm":
        raise ConfigError("--submit-only queues a SLURM grid: add --executor slurm")
    summary = run_compare(
        config,
        out,
        robustness=args.robustness or bool(args.robustness_kinds),
        robustness_groups=args.robustness_kinds,
        speed=not args.no_speed,
        executor=settings,
        submit_only=args.submit_only,
        gallery=args.gallery,
    )
    if args.submit_only:
        console.print(f"compare: {len(summary['submitted'])} run(s) queued into {out}")
        return 0
    console.print(
        f"compare: {len(summary['trained'])} run(s) trained, {len(summary['skipped'])} reused, "
        f"{len(summary['failed'])} failed, {len(summary['unfinished'])} unfinished; "
        f"report in {out / 'report.html'}"
    )
    return 1 if summary["failed"] or summary["unfinished"] else 0
