"""Checkpoints written by release 0.1.0 load unchanged: same state-dict keys, same logits.

The files and the command that wrote them are described in
``tests/fixtures/release-0.1.0/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import rgbx_fusion
from rgbx_fusion.inference import build_network

RELEASE = Path(__file__).resolve().parents[1] / "fixtures" / "release-0.1.0"
CHECKPOINTS = ["mid_se_affine", "late_weighted"]
KEYS: dict[str, dict[str, Any]] = json.loads((RELEASE / "state_dict_keys.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = torch.load(RELEASE / "expected_logits.pt", weights_only=True)
    return out


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_release_checkpoint_gives_the_release_logits(
    name: str, expected: dict[str, torch.Tensor]
) -> None:
    model = rgbx_fusion.load_model(RELEASE / f"{name}.ckpt")
    with torch.no_grad():
        logits = model(expected["rgb"], expected["aux"])
    torch.testing.assert_close(logits, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_release_checkpoint_keys_are_the_network_keys(name: str) -> None:
    model = rgbx_fusion.load_model(RELEASE / f"{name}.ckpt")
    payload = torch.load(RELEASE / f"{name}.ckpt", map_location="cpu", weights_only=True)
    saved = [k.removeprefix("net.") for k in payload["state_dict"] if k.startswith("net.")]
    assert list(model.net.state_dict()) == saved


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_topology_keeps_the_release_keys(name: str) -> None:
    """Networks of every fusion stage have the keys the release gave them, in its order."""
    net = build_network(KEYS[name]["network"], 5, 2)
    assert list(net.state_dict()) == KEYS[name]["keys"]
