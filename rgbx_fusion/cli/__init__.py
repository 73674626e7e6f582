"""The ``rgbx-fusion`` command: every subcommand, and nothing the library needs.

``rgbx-fusion --help`` lists the subcommands; ``rgbx-fusion <command> --help``
their options. Each subcommand lives in its own module of this package and
exposes ``run(argv) -> exit status``; the library below never imports this
package. A typed :class:`~rgbx_fusion.errors.RGBXError` is printed as its message
alone (exit status 1); ``--traceback`` or ``RGBX_TRACEBACK=1`` shows the trace.
"""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence

#: command → (module in this package, one-line summary), in --help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("stages", "train a model (config layers: --config base.yaml --config variant.yaml)"),
    "validate": ("stages", "score a checkpoint on the validation split"),
    "test": ("stages", "score a checkpoint on the test split (--eval.scales/--eval.flip)"),
    "predict": ("stages", "write label PNGs and overlays for a split or image folder"),
    "fit-test": ("stages", "fit, then test the checkpoint chosen on val"),
    "quickstart": ("quickstart", "render the synthetic RGB-D data, train fusion and RGB only"),
    "compare": ("compare", "train variants × seeds of a recipe; table, plots, robustness"),
    "prepare": ("prepare", "write a dataset in the toolkit's layout (synthetic, nyudv2)"),
    "hha": ("hha", "precompute HHA images for the depth files of a folder dataset"),
    "calibrate": ("calibrate", "estimate a rig's aux_from_rgb from unlabelled pairs"),
    "list": ("catalogue", "show the fusions, aligners, decoders and datasets"),
    "benchmark": ("benchmark", "parameters, FLOPs, latency, memory, scaling, loader rate"),
    "export": ("export", "export a checkpoint to ONNX / torch.export, parity checked"),
    "import": ("imports", "convert a released checkpoint of another code base (cmx)"),
}

GROUPS = {
    "train and evaluate (options are config keys: --trainer.max_epochs=2, --model.lr=...)": (
        "fit",
        "validate",
        "test",
        "predict",
        "fit-test",
    ),
    "experiments": ("quickstart", "compare", "benchmark"),
    "data": ("prepare", "hha", "calibrate", "list"),
    "deployment and weights": ("export", "import"),
}


def overview() -> str:
    """The text of ``rgbx-fusion --help``."""
    lines = [
        "usage: rgbx-fusion <command> [options]       (rgbx-fusion <command> --help)",
        "",
        "RGB-X semantic segmentation with explicit alignment and fusion.",
    ]
    for title, names in GROUPS.items():
        lines += ["", f"{title}:"]
        lines += [f"  {name:<12}{COMMANDS[name][1]}" for name in names]
    lines += [
        "",
        "options:",
        "  -h, --help   show this overview",
        "  --version    print the version",
        "  --traceback  show the full Python trace of an error (or set RGBX_TRACEBACK=1)",
    ]
    return "\n".join(lines)


def command(name: str) -> Callable[[Sequence[str]], int]:
    """The ``run(argv)`` function of a subcommand."""
    module_name = COMMANDS[name][0]
    module = importlib.import_module(f"rgbx_fusion.cli.{module_name}")
    if module_name != "stages":
        return module.run
    if name == "fit-test":
        return module.run_fit_test
    return lambda argv: module.run_stage(name, argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``rgbx-fusion`` console script; exits with the command's status."""
    args = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in args or os.environ.get("RGBX_TRACEBACK", "") not in ("", "0")
    args = [a for a in args if a != "--traceback"]
    if not args or args[0] in ("-h", "--help"):
        print(overview())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from rgbx_fusion import __version__

        print(f"rgbx-fusion {__version__}")
        sys.exit(0)
    name = args[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"rgbx-fusion: unknown command '{name}'{hint}\n\n{overview()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_command(name, args[1:], traceback))


def run_command(name: str, argv: Sequence[str], traceback: bool = False) -> int:
    """Run one subcommand; an :class:`RGBXError` becomes its message and status 1."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from rgbx_fusion.cli.parsing import with_config_spelling
    from rgbx_fusion.errors import RGBXError

    if COMMANDS[name][0] == "stages":
        argv = with_config_spelling(argv)
    try:
        return int(command(name)(argv))
    except SIGTERMException:  # stopped, last.ckpt saved: not a success for job schedulers
        return 128 + signal.SIGTERM
    except RGBXError as exc:
        if traceback:
            raise
        print(f"error: {exc}\n(add --traceback for the full trace)", file=sys.stderr)
        return 1


__all__ = ["COMMANDS", "main", "run_command"]
