from __future__ import annotations

import numpy as np
import pytest

from rgbx_fusion.data.transforms import (
    Normalizer,
    apply_transform,
    build_eval_transform,
    build_train_transform,
)
from rgbx_fusion.types import Sample


def _pattern(h: int = 90, w: int = 120) -> Sample:
    """Blocks of 10×10 px: mask = block id, aux = block id + 1 (metres), rgb encodes it."""
    yy, xx = np.mgrid[0:h, 0:w]
    block = (yy // 10) * (w // 10) + (xx // 10)
    ids = (block % 200).astype(np.int64)
    rgb = np.stack([ids, 255 - ids, (ids * 7) % 256], -1).astype(np.uint8)
    return Sample(rgb=rgb, aux=(ids + 1).astype(np.float32)[..., None], mask=ids, meta={})


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_keeps_rgb_aux_mask_registered(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    tf = build_train_transform((48, 64), scale=(0.3, 1.0), hflip=True, photometric=False)
    tf.set_random_seed(seed)
    out = apply_transform(tf, _pattern())
    assert out["rgb"].shape == (48, 64, 3) and out["aux"].shape == (48, 64, 1)
    # aux and mask use nearest resampling: exactly the same block everywhere
    np.testing.assert_array_equal(out["aux"][..., 0], out["mask"] + 1)
    # rgb is bilinear: away from block borders it carries the same id as the mask
    red = out["rgb"][..., 0].astype(int)
    agree = np.abs(red - out["mask"]) <= 1
    assert agree.mean() > 0.6


def test_photometric_changes_rgb_only() -> None:
    tf = build_train_transform(None, hflip=False, photometric=True)
    tf.set_random_seed(3)
    sample = _pattern()
    changed = False
    for _ in range(5):
        out = apply_transform(tf, sample)
        np.testing.assert_array_equal(out["aux"], sample["aux"])
        np.testing.assert_array_equal(out["mask"], sample["mask"])
        changed |= not np.array_equal(out["rgb"], sample["rgb"])
    assert changed


def test_depth_is_not_interpolated_into_holes() -> None:
    s = _pattern()
    s["aux"][::2, ::2] = 0.0  # many missing pixels
    out = apply_transform(build_eval_transform((45, 60)), s)
    values = set(np.unique(out["aux"]).tolist())
    assert values <= set(np.unique(s["aux"]).tolist())


def test_normalizer_keeps_missing_aux_at_zero() -> None:
    s = _pattern()
    s["aux"][:10] = 0.0
    t = Normalizer(aux_mean=(50.0,), aux_std=(10.0,))(s)
    assert t["rgb"].shape == (3, 90, 120) and t["aux"].shape == (1, 90, 120)
    assert (t["aux"][:, :10] == 0).all()
    np.testing.assert_allclose(t["aux"][0, 10:].numpy(), (s["aux"][10:, :, 0] - 50) / 10, rtol=1e-6)
