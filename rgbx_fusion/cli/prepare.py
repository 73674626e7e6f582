"""``rgbx-fusion prepare``: write a dataset in the toolkit's on-disk layout.

``prepare synthetic`` renders the embedded RGB-D / RGB-T scenes (optionally with a
known misregistration of the aux camera) or RGB + depth + thermal of the same scenes;
``prepare nyudv2`` converts the official NYU Depth v2 ``.mat`` files to the SA-Gate layout.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from rgbx_fusion.cli.parsing import ArgumentParser
from rgbx_fusion.console import console


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="rgbx-fusion prepare", description=__doc__)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="{synthetic,nyudv2}")
    syn = sub.add_parser(
        "synthetic", help="render the embedded synthetic RGB-D / RGB-T dataset", description=""
    )
    syn.add_argument("--root", default="datasets/synthetic", help="output folder")
    syn.add_argument(
        "--modality",
        type=_modalities,
        default="depth",
        metavar="MODALITY[,MODALITY]",
        help="the aux image: depth, thermal, or depth,thermal for both of the same scenes "
        "(RGB + depth + thermal, classes that only the three together separate)",
    )
    syn.add_argument("--seed", type=int, default=0, help="seed of the scenes and the split")
    syn.add_argument("--num-train", type=int, default=600, help="frames in the train split")
    syn.add_argument("--num-val", type=int, default=100, help="frames in the val split")
    syn.add_argument("--num-test", type=int, default=100, help="frames in the test split")
    syn.add_argument("--height", type=int, default=240, help="frame height in pixels")
    syn.add_argument("--width", type=int, default=320, help="frame width in pixels")
    syn.add_argument(
        "--misalign",
        choices=("none", "affine", "homography"),
        default="none",
        help="misregister the aux camera by a random transform of this kind "
        "(recorded per frame in meta.json as aux_from_rgb)",
    )
    syn.add_argument(
        "--misalign-strength",
        type=float,
        default=1.0,
        help="scale of the misregistration (1: shift ≤ 8 px, rotation ≤ 3°, scale ± 5 %% "
        "at 320×240)",
    )
    syn.add_argument(
        "--misalign-per",
        choices=("frame", "rig"),
        default="frame",
        help="draw the misregistration per frame, or once for the whole rig (a calibration error)",
    )
    syn.add_argument("--workers", type=int, default=2, help="rendering processes")
    syn.set_defaults(func=_synthetic)
    nyu = sub.add_parser(
        "nyudv2", help="build the SA-Gate NYUDv2 layout from nyu_depth_v2_labeled.mat"
    )
    nyu.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (v7.3 / HDF5)")
    nyu.add_argument("--splits", required=True, help="splits.mat (trainNdxs, testNdxs)")
    nyu.add_argument("--mapping", default=None, help="classMapping40.mat (mapClass: 894 → 40)")
    nyu.add_argument("--out", default="datasets/nyudv2", help="output root")
    nyu.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    nyu.set_defaults(func=_nyudv2)
    return p


def _modalities(text: str) -> str:
    """``--modality``: one aux modality or a comma list of them (checked by SyntheticSpec)."""
    names = [m.strip() for m in text.split(",")]
    if (
        not names
        or any(m not in ("depth", "thermal") for m in names)
        or len(set(names)) < len(names)
    ):
        raise argparse.ArgumentTypeError(f"expected depth, thermal or depth,thermal, got {text!r}")
    return ",".join(names)


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    return int(args.func(args))


def _synthetic(args: argparse.Namespace) -> int:
    from rgbx_fusion.data.sets.synthetic import SyntheticSpec, prepare_synthetic

    spec = SyntheticSpec(
        modality=args.modality,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        height=args.height,
        width=args.width,
        misalign=args.misalign,
        misalign_strength=args.misalign_strength,
        misalign_per=args.misalign_per,
    )
    start = time.perf_counter()
    root = prepare_synthetic(args.root, spec, workers=args.workers)
    seconds = time.perf_counter() - start
    console.print(f"synthetic {spec.modality} dataset ready in {root} ({seconds:.1f} s)")
    return 0


def _nyudv2(args: argparse.Namespace) -> int:
    from rgbx_fusion.data.sets.prepare_nyudv2 import prepare_nyudv2

    if args.mapping is None:
        console.print(
            "[yellow]no --mapping: writing the raw 894-class labels (uint16); "
            "NYU-40 training needs classMapping40.mat[/yellow]"
        )
    root = prepare_nyudv2(args.mat, args.splits, args.out, args.mapping, not args.no_progress)
    console.print(f"NYUDv2 (SA-Gate layout) ready in {root}")
    return 0
