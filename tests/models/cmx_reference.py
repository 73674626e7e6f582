"""Independent reference networks with the official MiT / CMX module names.

Written from the published architectures (SegFormer's ``mix_transformer.py``
layout; CMX as described in ``../shared/reference/cmx.md``), deliberately in
the plain token layout of the originals and without sharing any code with
``rgbx_fusion``: their ``state_dict()`` has exactly the official key names and
shapes, and their forward is what converted weights must reproduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEPTHS = {
    "b0": (2, 2, 2, 2),
    "b1": (2, 2, 2, 2),
    "b2": (3, 4, 6, 3),
    "b3": (3, 4, 18, 3),
    "b4": (3, 8, 27, 3),
    "b5": (3, 6, 40, 3),
}


def widths(variant: str) -> tuple[int, int, int, int]:
    return (32, 64, 160, 256) if variant == "b0" else (64, 128, 320, 512)


HEADS = (1, 2, 5, 8)
SR = (8, 4, 2, 1)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride, patch // 2)
        self.norm = nn.LayerNorm(dim)  # eps 1e-5

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim)  # eps 1e-5

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(b, c, h, w)
            x_ = self.norm(self.sr(x_).reshape(b, c, -1).permute(0, 2, 1))
        else:
            x_ = x
        kv = self.kv(x_).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x), h, w)


def _add_stream(owner: nn.Module, variant: str, prefix: str, cin: int = 3) -> None:
    dims = widths(variant)
    for s in range(4):
        i = s + 1
        patch, stride = (7, 4) if s == 0 else (3, 2)
        src = cin if s == 0 else dims[s - 1]
        owner.add_module(f"{prefix}patch_embed{i}", OverlapPatchEmbed(patch, stride, src, dims[s]))
        blocks = [Block(dims[s], HEADS[s], SR[s]) for _ in range(DEPTHS[variant][s])]
        owner.add_module(f"{prefix}block{i}", nn.ModuleList(blocks))
        owner.add_module(f"{prefix}norm{i}", nn.LayerNorm(dims[s], eps=1e-6))


def run_stage(owner: nn.Module, prefix: str, s: int, x: Tensor) -> Tensor:
    """One MiT stage on an NCHW map → NCHW map."""
    i = s + 1
    x, h, w = getattr(owner, f"{prefix}patch_embed{i}")(x)
    for blk in getattr(owner, f"{prefix}block{i}"):
        x = blk(x, h, w)
    x = getattr(owner, f"{prefix}norm{i}")(x)
    return x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()


class MiT(nn.Module):
    """SegFormer's MixVisionTransformer with its ImageNet head (official key names)."""

    def __init__(self, variant: str = "b0", num_classes: int = 1000) -> None:
        super().__init__()
        _add_stream(self, variant, "")
        self.head = nn.Linear(widths(variant)[3], num_classes)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        outs = []
        for s in range(4):
            x = run_stage(self, "", s, x)
            outs.append(x)
        return outs


# ---- CMX --------------------------------------------------------------------------------


class ChannelWeights(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(4 * dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, 2 * dim), nn.Sigmoid()
        )

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        b = x1.shape[0]
        x = torch.cat((x1, x2), dim=1)
        avg = F.adaptive_avg_pool2d(x, 1).view(b, 2 * self.dim)
        mx = F.adaptive_max_pool2d(x, 1).view(b, 2 * self.dim)
        y = self.mlp(torch.cat((avg, mx), dim=1))
        return y.reshape(b, 2, self.dim, 1, 1).permute(1, 0, 2, 3, 4)


class SpatialWeights(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, 2, 1), nn.Sigmoid()
        )

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        b, _, h, w = x1.shape
        return self.mlp(torch.cat((x1, x2), dim=1)).reshape(b, 2, 1, h, w).permute(1, 0, 2, 3, 4)


class FRM(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.channel_weights = ChannelWeights(dim)
        self.spatial_weights = SpatialWeights(dim)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        cw, sw = self.channel_weights(x1, x2), self.spatial_weights(x1, x2)
        o1 = x1 + 0.5 * cw[1] * x2 + 0.5 * sw[1] * x2
        o2 = x2 + 0.5 * cw[0] * x1 + 0.5 * sw[0] * x1
        return o1, o2


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.kv1 = nn.Linear(dim, 2 * dim, bias=False)
        self.kv2 = nn.Linear(dim, 2 * dim, bias=False)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        b, n, c = x1.shape
        d = c // self.heads
        q1 = x1.reshape(b, n, self.heads, d).permute(0, 2, 1, 3)
        q2 = x2.reshape(b, n, self.heads, d).permute(0, 2, 1, 3)
        k1, v1 = self.kv1(x1).reshape(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        k2, v2 = self.kv2(x2).reshape(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        ctx1 = ((k1.transpose(-2, -1) @ v1) * self.scale).softmax(dim=-2)
        ctx2 = ((k2.transpose(-2, -1) @ v2) * self.scale).softmax(dim=-2)
        o1 = (q1 @ ctx2).permute(0, 2, 1, 3).reshape(b, n, c)
        o2 = (q2 @ ctx1).permute(0, 2, 1, 3).reshape(b, n, c)
        return o1, o2


class CrossPath(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.channel_proj1 = nn.Linear(dim, 2 * dim)
        self.channel_proj2 = nn.Linear(dim, 2 * dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.end_proj1 = nn.Linear(2 * dim, dim)
        self.end_proj2 = nn.Linear(2 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
        y1, u1 = F.relu(self.channel_proj1(x1)).chunk(2, dim=-1)
        y2, u2 = F.relu(self.channel_proj2(x2)).chunk(2, dim=-1)
        v1, v2 = self.cross_attn(u1, u2)
        o1 = self.norm1(x1 + self.end_proj1(torch.cat((y1, v1), dim=-1)))
        o2 = self.norm2(x2 + self.end_proj2(torch.cat((y2, v2), dim=-1)))
        return o1, o2


class ChannelEmbed(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.residual = nn.Conv2d(cin, cout, 1, bias=False)
        self.channel_embed = nn.Sequential(
            nn.Conv2d(cin, cout, 1),
            nn.Conv2d(cout, cout, 3, 1, 1, groups=cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 1),
            nn.BatchNorm2d(cout),
        )
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _n, c = x.shape
        x = x.permute(0, 2, 1).reshape(b, c, h, w)
        return self.norm(self.residual(x) + self.channel_embed(x))


class FFM(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.cross = CrossPath(dim, heads)
        self.channel_emb = ChannelEmbed(2 * dim, dim)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        _, _, h, w = x1.shape
        o1, o2 = self.cross(x1.flatten(2).transpose(1, 2), x2.flatten(2).transpose(1, 2))
        return self.channel_emb(torch.cat((o1, o2), dim=-1), h, w)


class DualMiT(nn.Module):
    """CMX's RGBXTransformer: two MiT streams, FRMs fed back, FFMs to the decoder."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        _add_stream(self, variant, "")
        _add_stream(self, variant, "extra_")
        dims = widths(variant)
        self.FRMs = nn.ModuleList(FRM(d) for d in dims)
        self.FFMs = nn.ModuleList(FFM(d, h) for d, h in zip(dims, HEADS, strict=True))

    def forward(self, rgb: Tensor, x: Tensor) -> list[Tensor]:
        outs = []
        for s in range(4):
            rgb = run_stage(self, "", s, rgb)
            x = run_stage(self, "extra_", s, x)
            rgb, x = self.FRMs[s](rgb, x)
            outs.append(self.FFMs[s](rgb, x))
        return outs


class MLPProj(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).permute(0, 2, 1).reshape(b, -1, h, w)


class DecoderHead(nn.Module):
    def __init__(self, in_channels: tuple[int, ...], num_classes: int, embed: int) -> None:
        super().__init__()
        for i, c in enumerate(in_channels):
            self.add_module(f"linear_c{i + 1}", MLPProj(c, embed))
        self.linear_fuse = nn.Sequential(
            nn.Conv2d(4 * embed, embed, 1), nn.BatchNorm2d(embed), nn.ReLU()
        )
        self.dropout = nn.Dropout2d(0.1)
        self.linear_pred = nn.Conv2d(embed, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[2:]
        ups = [
            F.interpolate(
                getattr(self, f"linear_c{i + 1}")(f),
                size=size,
                mode="bilinear",
                align_corners=False,
            )
            for i, f in enumerate(feats)
        ]
        fused = self.linear_fuse(torch.cat(ups[::-1], dim=1))
        return self.linear_pred(self.dropout(fused))


class CMX(nn.Module):
    """CMX's EncoderDecoder: ``backbone`` (DualMiT) + ``decode_head`` (all-MLP)."""

    def __init__(self, variant: str, num_classes: int) -> None:
        super().__init__()
        self.backbone = DualMiT(variant)
        embed = 256 if variant == "b0" else 512
        self.decode_head = DecoderHead(widths(variant), num_classes, embed)

    def forward(self, rgb: Tensor, x: Tensor) -> Tensor:
        out = self.decode_head(self.backbone(rgb, x))
        return F.interpolate(out, size=rgb.shape[2:], mode="bilinear", align_corners=False)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BN statistic with random values (no zero biases, no unit BN)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return module
