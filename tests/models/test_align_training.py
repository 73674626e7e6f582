"""A learned input-level aligner inside RGBXSegmenter moves aux back onto the RGB grid.

The segmentation loss is the only training signal. A *fixed* misregistration is not
identifiable from a randomly initialised network: the network can absorb any constant
shift, and in trials the aligner then drifted in arbitrary directions. So the network
first learns the task on registered data (as a deployed model would), then the depth
sensor "moves" by a known shift and everything is fine-tuned end to end: the aligner must
take up the shift, because the network expects registered aux.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from rgbx_fusion.models.align import AffineAlign
from rgbx_fusion.models.align.flow import pixel_grid, warp_by_flow
from rgbx_fusion.models.segmenter import RGBXSegmenter

SIZE, BATCH, SHIFT = 32, 4, (3.0, -2.0)


def _bumps() -> tuple[torch.Tensor, torch.Tensor]:
    """Registered depth (smooth Gaussian bumps) and its labels (bump cores = class 1)."""
    g = torch.Generator().manual_seed(1)
    grid = pixel_grid(SIZE, SIZE)
    depth = torch.zeros(BATCH, 1, SIZE, SIZE)
    for i in range(BATCH):
        for _ in range(5):
            centre = torch.rand(2, generator=g) * SIZE
            sigma = 2 + 3 * torch.rand((), generator=g)
            dist2 = (grid - centre.view(1, 2, 1, 1)).pow(2).sum(1)[0]
            depth[i, 0] += torch.exp(-dist2 / (2 * sigma * sigma))
    return depth, (depth[:, 0] > 0.5).long()


def _steps(net: RGBXSegmenter, opt: torch.optim.Optimizer, rgb, aux, labels, n: int) -> None:
    for _ in range(n):
        loss = F.cross_entropy(net(rgb, aux), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_input_aligner_learns_a_known_shift_end_to_end() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a busy CPU
    try:
        _learn_known_shift()
    finally:
        torch.set_num_threads(threads)


def _learn_known_shift() -> None:
    torch.manual_seed(0)
    depth, labels = _bumps()
    shift = torch.tensor(SHIFT).view(1, 2, 1, 1)
    moved = warp_by_flow(depth, -shift.expand(BATCH, -1, SIZE, SIZE))  # moved(p) = depth(p - s)
    rgb = torch.zeros(BATCH, 3, SIZE, SIZE)
    net = RGBXSegmenter(
        2, 1, "mid", backbone="test_resnet", input_align=partial(AffineAlign, mode="free")
    )
    aligner = net.input_align
    assert isinstance(aligner, AffineAlign) and aligner.delta is not None
    rest = [p for n, p in net.named_parameters() if not n.startswith("input_align.")]
    _steps(net, torch.optim.Adam(rest, lr=3e-3), rgb, depth, labels, 20)  # registered

    def misfit() -> float:
        with torch.no_grad():
            aligned = aligner(rgb, moved)[1]
        return float((aligned - depth)[..., 5:-5, 5:-5].abs().mean())

    before = misfit()
    F.cross_entropy(net(rgb, moved), labels).backward()
    assert aligner.delta.grad is not None and aligner.delta.grad[0, [2, 5]].abs().min() > 0
    net.zero_grad()
    opt = torch.optim.Adam([{"params": rest, "lr": 1e-3}, {"params": [aligner.delta], "lr": 2e-2}])
    _steps(net, opt, rgb, moved, labels, 20)  # the sensor moved: fine-tune end to end

    flow = aligner.last_displacement()
    assert flow is not None
    learned = flow[0, :, SIZE // 2, SIZE // 2]
    # the aligner samples aux at p + s: it moved toward the true shift in both axes ...
    assert learned[0] > 0.25 * SHIFT[0] and learned[1] < 0.25 * SHIFT[1], learned
    # ... and aux now matches the registered depth clearly better than before
    assert misfit() < 0.75 * before, (before, misfit())
