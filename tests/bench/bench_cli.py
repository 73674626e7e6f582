"""Run ``rgbx-fusion benchmark`` in-process on CPU and read the JSON report it saves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rgbx_fusion.cli import main


def benchmark_report(out: Path, name: str, *args: str) -> dict[str, Any]:
    """``rgbx-fusion benchmark <args> --device cpu --out <out>``; returns ``<out>/<name>.json``."""
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", *args, "--device", "cpu", "--out", str(out)])
    assert exc.value.code == 0
    return json.loads((out / f"{name}.json").read_text())
