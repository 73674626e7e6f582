"""Each operator follows the equation in its docstring, recomputed here with plain torch ops.

Parameters and BatchNorm statistics are randomised first (no zero gammas, no
identity BNs) and everything runs in float64 eval mode, so every term counts.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgbx_fusion.models.fusion import (
    FUSIONS,
    MSCAM,
    AFFFusion,
    CBAMFusion,
    CMXFusion,
    ConcatFusion,
    CrossAttentionFusion,
    FeatureRectify,
    FSMFusion,
    GatedFusion,
    MaxFusion,
    NonLocalFusion,
    SEFusion,
    SpatialAdaptiveFusion,
    WeightedSumFusion,
    iAFFFusion,
)
from rgbx_fusion.models.fusion.cross_attention import (
    project_to_map,
    project_tokens,
    to_map,
    to_tokens,
    tokens_of,
)

C = 8
close = torch.testing.assert_close
M = TypeVar("M", bound=nn.Module)


def prepared(module: M) -> M:
    torch.manual_seed(0)
    module.double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return module


def pair(b: int = 2, c: int = C, h: int = 5, w: int = 7) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (b, c, h, w)
    return (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64),
    )


def col(v: Tensor) -> Tensor:
    return v[None, :, None, None]


def conv1x1(x: Tensor, conv: Any) -> Tensor:
    out = torch.einsum("oi,bihw->bohw", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + col(conv.bias)


def bn(x: Tensor, m: Any) -> Tensor:
    scale = col(m.weight) / torch.sqrt(col(m.running_var) + m.eps)
    return (x - col(m.running_mean)) * scale + col(m.bias)


def linear(t: Tensor, lin: Any) -> Tensor:
    return t @ lin.weight.T + (0 if lin.bias is None else lin.bias)


def layer_norm(t: Tensor, ln: Any) -> Tensor:
    mu = t.mean(-1, keepdim=True)
    var = ((t - mu) ** 2).mean(-1, keepdim=True)
    return (t - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def gap(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


def tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1) @ v


def test_simple_fusions() -> None:
    x, y = pair()
    with torch.no_grad():
        close(FUSIONS["add"](C)(x, y), x + y)
        close(MaxFusion(C)(x, y), torch.maximum(x, y))
        m = prepared(ConcatFusion(C))
        close(m(x, y), torch.relu(bn(conv1x1(torch.cat([x, y], 1), m.proj[0]), m.proj[1])))


@pytest.mark.parametrize("per_channel", [False, True])
def test_weighted_sum(per_channel: bool) -> None:
    x, y = pair()
    m = WeightedSumFusion(C, per_channel=per_channel).double()
    with torch.no_grad():
        close(m(x, y), (x + y) / 2)  # initialised equal
        m = prepared(m)
        a = m.logits.reshape(2, -1)
        w_rgb = torch.exp(a[0]) / (torch.exp(a[0]) + torch.exp(a[1]))
        close(m(x, y), col(w_rgb) * x + col(1 - w_rgb) * y)


def test_se() -> None:
    x, y = pair()
    m = prepared(SEFusion(C))

    def gate(se: Any, t: Tensor) -> Tensor:
        return torch.sigmoid(conv1x1(torch.relu(conv1x1(gap(t), se.fc1)), se.fc2))

    with torch.no_grad():
        close(m(x, y), gate(m.se_rgb, x) * x + gate(m.se_aux, y) * y)


def test_cbam_on_the_sum() -> None:
    x, y = pair()
    m = prepared(CBAMFusion(C))
    mlp = m.channel_mlp
    with torch.no_grad():
        s = x + y

        def shared(p: Tensor) -> Tensor:
            return conv1x1(torch.relu(conv1x1(p, mlp[0])), mlp[2])

        s1 = s * torch.sigmoid(shared(gap(s)) + shared(s.amax(dim=(2, 3), keepdim=True)))
        desc = torch.cat([s1.max(dim=1, keepdim=True).values, s1.mean(dim=1, keepdim=True)], 1)
        sp: Any = m.spatial
        spatial = bn(F.conv2d(desc, sp[0].weight, padding=3), sp[1])
        close(m(x, y), s1 * torch.sigmoid(spatial))


def mscam(att: Any, t: Tensor) -> Tensor:
    def branch(seq: Any, u: Tensor) -> Tensor:
        return bn(conv1x1(torch.relu(bn(conv1x1(u, seq[0]), seq[1])), seq[3]), seq[4])

    return torch.sigmoid(branch(att.local_att, t) + branch(att.global_att, gap(t)))


def test_mscam_aff_iaff() -> None:
    x, y = pair()
    with torch.no_grad():
        att = prepared(MSCAM(C))
        close(att(x), mscam(att, x))
        m = prepared(AFFFusion(C))
        w = mscam(m.attention, x + y)
        close(m(x, y), w * x + (1 - w) * y)
        it = prepared(iAFFFusion(C))
        w1 = mscam(it.attention1, x + y)
        initial = w1 * x + (1 - w1) * y
        w2 = mscam(it.attention2, initial)
        close(it(x, y), w2 * x + (1 - w2) * y)


def test_fsm_on_concat() -> None:
    x, y = pair()
    m = prepared(FSMFusion(C))
    with torch.no_grad():
        k = torch.cat([x, y], 1)
        u = torch.sigmoid(conv1x1(gap(k), m.select.attention))
        close(m(x, y), conv1x1(k + u * k, m.select.project))


def test_spatial_adaptive_and_gated() -> None:
    x, y = pair()
    with torch.no_grad():
        m = prepared(SpatialAdaptiveFusion(C))

        def compress(seq: Any, t: Tensor) -> Tensor:
            return torch.relu(bn(conv1x1(t, seq[0]), seq[1]))

        logits = conv1x1(
            torch.cat([compress(m.weight_rgb, x), compress(m.weight_aux, y)], 1), m.weight_levels
        )
        alpha = torch.exp(logits[:, :1]) / torch.exp(logits).sum(1, keepdim=True)
        close(m(x, y), alpha * x + (1 - alpha) * y)

        g = prepared(GatedFusion(C))
        k = torch.cat([x, y], 1)
        gr, ga = torch.sigmoid(conv1x1(k, g.gate_rgb)), torch.sigmoid(conv1x1(k, g.gate_aux))
        close(g(x, y), gr * x + ga * y)


@pytest.mark.parametrize(("heads", "sr"), [(2, 1), (2, 3), (1, 2)])
def test_cross_attention(heads: int, sr: int) -> None:
    x, y = pair()
    m = prepared(CrossAttentionFusion(C, num_heads=heads, sr_ratio=sr))
    b, c, h, w = x.shape
    d = c // heads

    def direction(att: Any, q_t: Tensor, kv_t: Tensor) -> Tensor:
        if sr > 1:
            kv_map = kv_t.transpose(1, 2).reshape(b, c, h, w)
            kv_map = F.pad(kv_map, (0, -w % sr, 0, -h % sr))
            reduced = F.conv2d(kv_map, att.sr.weight, att.sr.bias, stride=sr)
            kv_t = layer_norm(tokens(reduced), att.sr_norm)
        q = linear(q_t, att.q).reshape(b, -1, heads, d).transpose(1, 2)
        k, v = linear(kv_t, att.kv).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return linear(out, att.proj)

    with torch.no_grad():
        t_r, t_a = tokens(x), tokens(y)
        n_r, n_a = layer_norm(t_r, m.norm_rgb), layer_norm(t_a, m.norm_aux)
        y_r = t_r + direction(m.rgb_from_aux, n_r, n_a)
        y_a = t_a + direction(m.aux_from_rgb, n_a, n_r)
        z = linear(torch.cat([y_r, y_a], -1), m.fuse)
        close(m(x, y), z.transpose(1, 2).reshape(b, c, h, w))


@pytest.mark.parametrize(("joint", "pool"), [("sum", 1), ("concat", 1), ("sum", 2)])
def test_non_local(joint: str, pool: int) -> None:
    x, y = pair()
    m = NonLocalFusion(C, joint=joint, kv_pool=pool).double()  # type: ignore[arg-type]
    with torch.no_grad():
        j = x + y if joint == "sum" else conv1x1(torch.cat([x, y], 1), m.project)
        close(m(x, y), j)  # gamma starts at 0: the block starts as the joint feature
        m = prepared(m)
        j = x + y if joint == "sum" else conv1x1(torch.cat([x, y], 1), m.project)
        p = F.max_pool2d(j, pool, ceil_mode=True) if pool > 1 else j
        o = attention(
            linear(tokens(j), m.query), linear(tokens(p), m.key), linear(tokens(p), m.value)
        )
        close(m(x, y), j + m.gamma * o.transpose(1, 2).reshape(j.shape))


def test_cmx_feature_rectify_reference() -> None:
    """CMX FRM, written from the reference description with official-style layouts."""
    x1, x2 = pair()
    m = prepared(FeatureRectify(C))
    b, c, h, w = x1.shape
    cw_mlp, sw_mlp = m.channel_weights.mlp, m.spatial_weights.mlp
    with torch.no_grad():
        cat = torch.cat([x1, x2], 1)
        pooled = torch.cat([cat.mean(dim=(2, 3)), cat.amax(dim=(2, 3))], 1)  # (B, 4C)
        cw = torch.sigmoid(linear(torch.relu(linear(pooled, cw_mlp[0])), cw_mlp[2]))
        cw = cw.reshape(b, 2, c, 1, 1).permute(1, 0, 2, 3, 4)
        sw = torch.sigmoid(conv1x1(torch.relu(conv1x1(cat, sw_mlp[0])), sw_mlp[2]))
        sw = sw.reshape(b, 2, 1, h, w).permute(1, 0, 2, 3, 4)
        out1 = x1 + 0.5 * cw[1] * x2 + 0.5 * sw[1] * x2
        out2 = x2 + 0.5 * cw[0] * x1 + 0.5 * sw[0] * x1
        got1, got2 = m(x1, x2)
        close(got1, out1)
        close(got2, out2)


@pytest.mark.parametrize("size", [(5, 7), (2, 2)], ids=["tokens>channels", "tokens<channels"])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_cmx_feature_fusion_reference(heads: int, size: tuple[int, int]) -> None:
    """CMX FFM, written from the reference description with explicit per-head tensors.

    Both sizes matter: the module picks its multiplication order by tokens vs channels.
    """
    x1, x2 = pair(h=size[0], w=size[1])
    m = prepared(CMXFusion(C, num_heads=heads))
    cp, ce = m.cross, m.channel_emb
    b, c, h, w = x1.shape
    d = c // heads
    with torch.no_grad():
        t1, t2 = tokens(x1), tokens(x2)
        y1, u1 = torch.relu(linear(t1, cp.channel_proj1)).chunk(2, -1)
        y2, u2 = torch.relu(linear(t2, cp.channel_proj2)).chunk(2, -1)

        def heads_of(t: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, d)
            return t.reshape(b, -1, heads, d).permute(0, 2, 1, 3)

        def context(u: Tensor, kv: Any) -> Tensor:
            k, v = linear(u, kv).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
            return torch.softmax(k.transpose(-2, -1) @ v * d**-0.5, dim=-2)  # key-channel axis

        ctx1, ctx2 = context(u1, cp.cross_attn.kv1), context(u2, cp.cross_attn.kv2)
        v1 = (heads_of(u1) @ ctx2).permute(0, 2, 1, 3).reshape(b, -1, c)
        v2 = (heads_of(u2) @ ctx1).permute(0, 2, 1, 3).reshape(b, -1, c)
        o1 = layer_norm(t1 + linear(torch.cat([y1, v1], -1), cp.end_proj1), cp.norm1)
        o2 = layer_norm(t2 + linear(torch.cat([y2, v2], -1), cp.end_proj2), cp.norm2)
        merge = torch.cat([o1, o2], -1).transpose(1, 2).reshape(b, 2 * c, h, w)
        emb: Any = ce.channel_embed
        e = conv1x1(merge, emb[0])
        e = F.conv2d(e, emb[1].weight, emb[1].bias, padding=1, groups=c)
        e = bn(conv1x1(torch.relu(e), emb[3]), emb[4])
        close(m(x1, x2), bn(conv1x1(merge, ce.residual) + e, ce.norm))


def test_project_tokens_equals_linear_on_concat() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 6, 5, 4, generator=g).flatten(2).transpose(1, 2)  # strided view
    b_ = torch.randn(2, 20, 3, generator=g)
    lin = nn.Linear(9, 7)
    close(project_tokens(lin, a, b_), lin(torch.cat([a, b_], -1)))
    conv = nn.Conv2d(9, 7, 1, bias=False)
    close(project_tokens(conv, a, b_), torch.cat([a, b_], -1) @ conv.weight[:, :, 0, 0].T)
    with pytest.raises(ValueError):
        project_tokens(lin, a)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_project_to_map_equals_conv_on_concat_in_the_given_layout(
    layout: torch.memory_format,
) -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 6, 5, 4, generator=g)
    b_ = torch.randn(2, 3, 5, 4, generator=g)
    conv = nn.Conv2d(9, 7, 1)
    like = a.contiguous(memory_format=layout)
    out = project_to_map(conv, (to_tokens(a), to_tokens(b_)), (5, 4), like)
    close(out, conv(torch.cat([a, b_], 1)))
    assert out.is_contiguous(memory_format=layout)


def test_project_to_map_gradients_come_back_stored_like_each_part() -> None:
    g = torch.Generator().manual_seed(8)
    conv = nn.Conv2d(9, 7, 1).double()
    leaves = [
        torch.randn(2, 20, 6, generator=g, dtype=torch.float64).requires_grad_(),
        torch.randn(2, 3, 20, generator=g, dtype=torch.float64).requires_grad_(),
    ]
    # Non-leaf parts, as in a network: their gradients are passed on as computed.
    token_major, channel_major = (leaf * 1.0 for leaf in leaves)
    seen: list[Tensor] = []
    token_major.register_hook(seen.append)
    channel_major.register_hook(seen.append)
    parts = (token_major, channel_major.transpose(1, 2))  # the second: an NCHW map's view
    like = torch.empty(2, 7, 5, 4, dtype=torch.float64)
    upstream = torch.randn(2, 7, 5, 4, generator=g, dtype=torch.float64)
    project_to_map(conv, parts, (5, 4), like).backward(upstream, retain_graph=True)
    passed_on = list(seen)
    mine = [*(leaf.grad for leaf in leaves), conv.weight.grad, conv.bias.grad]
    for t in (*leaves, conv.weight, conv.bias):
        t.grad = None
    conv(torch.cat([to_map(p, (5, 4)) for p in parts], 1)).backward(upstream)
    refs = [*(leaf.grad for leaf in leaves), conv.weight.grad, conv.bias.grad]
    for a, b in zip(mine, refs, strict=True):
        assert a is not None and b is not None
        close(a, b)
    # autograd's bmm backward gives the token-major part a transposed gradient
    assert len(passed_on) == 2
    assert all(s.is_contiguous() for s in passed_on), [s.stride() for s in passed_on]


def test_project_to_map_weight_gradients_without_part_gradients() -> None:
    g = torch.Generator().manual_seed(9)
    conv = nn.Conv2d(6, 4, 1).double()
    part = torch.randn(2, 20, 6, generator=g, dtype=torch.float64)  # needs no gradient
    like = torch.empty(2, 4, 5, 4, dtype=torch.float64)
    upstream = torch.randn(2, 4, 5, 4, generator=g, dtype=torch.float64)
    project_to_map(conv, (part,), (5, 4), like).backward(upstream)
    mine = (conv.weight.grad, conv.bias.grad)
    conv.weight.grad = conv.bias.grad = None
    conv(to_map(part, (5, 4))).backward(upstream)
    for a, b in zip(mine, (conv.weight.grad, conv.bias.grad), strict=True):
        assert a is not None and b is not None
        close(a, b)


def test_tokens_of_returns_the_gradient_in_the_maps_layout() -> None:
    g = torch.Generator().manual_seed(6)
    leaf = torch.randn(2, 6, 5, 4, generator=g).requires_grad_()
    x = leaf * 1.0  # a non-leaf map, as in a network: its gradient is passed on as is
    seen: list[Tensor] = []
    x.register_hook(seen.append)
    tokens = tokens_of(x)
    close(tokens, to_tokens(x))
    upstream = torch.randn(2, 20, 6, generator=g)  # contiguous tokens, as token layers give
    tokens.backward(upstream)
    assert seen[0].is_contiguous(), f"gradient strides {seen[0].stride()}"
    close(seen[0], upstream.transpose(1, 2).reshape(2, 6, 5, 4))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_frm_hand_written_backwards_match_autograd(layout: torch.memory_format) -> None:
    from rgbx_fusion.models.fusion.rectify_ops import CrossOver, MeanMax

    g = torch.Generator().manual_seed(7)

    def leaf(*shape: int) -> Tensor:
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        t = t.contiguous(memory_format=layout) if t.dim() == 4 and shape[1] > 1 else t
        return t.requires_grad_()

    x1, x2 = leaf(2, 5, 4, 3), leaf(2, 5, 4, 3)
    cw0, cw1, sw0, sw1 = leaf(2, 5, 1, 1), leaf(2, 5, 1, 1), leaf(2, 1, 4, 3), leaf(2, 1, 4, 3)
    inputs = (x1, x2, cw0, cw1, sw0, sw1)
    up = [torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64) for _ in range(4)]

    def reference() -> list[Tensor]:
        out1 = x1 + 0.5 * cw1 * x2 + 0.3 * sw1 * x2
        out2 = x2 + 0.5 * cw0 * x1 + 0.3 * sw0 * x1
        flat = x1.flatten(2)
        mean, peak = flat.mean(2), flat.amax(2)
        loss = (out1 * up[0]).sum() + (out2 * up[1]).sum()
        loss = loss + (mean * up[2][:, :, 0, 0]).sum() + (peak * up[3][:, :, 0, 0]).sum()
        return list(torch.autograd.grad(loss, inputs))

    def ours() -> list[Tensor]:
        out1, out2 = CrossOver.apply(*inputs, 0.5, 0.3)
        mean, peak = MeanMax.apply(x1)
        loss = (out1 * up[0]).sum() + (out2 * up[1]).sum()
        loss = loss + (mean * up[2][:, :, 0, 0]).sum() + (peak * up[3][:, :, 0, 0]).sum()
        return list(torch.autograd.grad(loss, inputs))

    for r, o in zip(reference(), ours(), strict=True):
        close(o, r)
