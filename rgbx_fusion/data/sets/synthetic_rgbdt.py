"""One synthetic indoor frame seen by an RGB, a depth AND a thermal camera (pure numpy).

The same room as :mod:`rgbx_fusion.data.sets.synthetic_scene` (ray-cast floor, walls,
cabinets; flat objects painted on the walls and floor in image space), lit by day,
with a class table built so that each of three groups is told apart by one modality
only. A model fed all three therefore beats every model fed two of them:

==  =============  =============================================================
id  class          what tells it apart
==  =============  =============================================================
0   floor          geometry, colour and temperature
1   wall           geometry, colour and temperature
2   cabinet        geometry and colour (ray-cast wooden box on the floor)
3   panel          **depth only**: protrudes 0.15–0.4 m from the wall
4   poster         **depth only**: flush with the wall
5   niche          **depth only**: recessed 0.15–0.4 m into the wall
6   radiator_hot   **thermal only**: ribbed white radiator low on a wall, 0.3–0.45
                   above ambient, hotter at the top, a warm plume on the wall above
7   radiator_cold  **thermal only**: the same radiator switched off (wall temperature)
8   box_warm       **thermal only**: painted metal box on the floor, 0.2–0.32 above
                   ambient, warm halo on the floor
9   box_cold       **thermal only**: the same box, 0.12–0.2 *below* ambient (a cooler)
10  cushion_red    **colour only**: dome on the floor, red hue
11  cushion_green  **colour only**: the same dome, green hue
==  =============  =============================================================

Panels, posters and niches share one texture and outline distribution and take the
temperature of the wall they hang on; the two radiators (and the two boxes) share
their colour, outline and relief distributions and differ only in temperature; the
two cushions share geometry and temperature. An RGB-D model thus confuses the
thermal-only pairs, an RGB-T model the depth-only group, a depth + thermal model the
cushions.

Thermal values are relative temperatures in [0, 1] (ambient ≈ 0.35, like the night
scenes of ``--modality thermal``): a smooth emissivity-like texture per surface, heat
halos, a lens blur, temporal noise and per-column fixed-pattern noise of a
microbolometer. Depth passes through the same structured-light sensor model as the
RGB-D scenes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from rgbx_fusion.data.sets.synthetic_scene import (
    DEPTH_PALETTE,
    F32,
    _ellipse,
    _place,
    _ray_box,
    _texture,
    cast_room,
    sensor_depth,
)

RGBDT_CLASSES = (
    "floor",
    "wall",
    "cabinet",
    "panel",
    "poster",
    "niche",
    "radiator_hot",
    "radiator_cold",
    "box_warm",
    "box_cold",
    "cushion_red",
    "cushion_green",
)
RGBDT_PALETTE = (
    *DEPTH_PALETTE[:6],
    (250, 130, 0),
    (150, 190, 230),
    (220, 20, 60),
    (0, 190, 200),
    *DEPTH_PALETTE[6:],
)
#: The modality-exclusive groups: classes inside one group differ in that modality only.
SEPARATED_BY = {
    "depth": (("panel", "poster", "niche"),),
    "thermal": (("radiator_hot", "radiator_cold"), ("box_warm", "box_cold")),
    "rgb": (("cushion_red", "cushion_green"),),
}
_ID = {name: i for i, name in enumerate(RGBDT_CLASSES)}
_WALL_LIKE = [_ID[n] for n in ("wall", "panel", "poster", "niche", "radiator_cold")]
#: Amplitude of the emissivity-like texture of each class (relative temperature).
_EMISSIVITY_TEXTURE = np.array([0.015, 0.006, 0.01, *[0.006] * 7, 0.01, 0.01], np.float32)


@dataclass
class MultiFrame:
    """One frame of every modality: rgb uint8, aux name → H×W float32, labels uint8.

    ``aux["depth"]`` is in metres (0 = missing), ``aux["thermal"]`` in [0, 1].
    """

    rgb: npt.NDArray[np.uint8]
    aux: dict[str, F32]
    labels: npt.NDArray[np.uint8]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Scene:
    """The clean scene: shaded albedo, depth, labels, temperature, height above the floor."""

    rgb: F32
    depth: F32
    labels: npt.NDArray[np.uint8]
    temp: F32
    elev: F32
    excess: F32  # heat sources (temperature above ambient) that warm their surroundings
    ambient: float
    k: npt.NDArray[np.float64]


def _cast_room(rng: np.random.Generator, height: int, width: int) -> _Scene:
    """Ray-cast floor, walls, cabinets and boxes with their colour and temperature."""
    room = cast_room(rng, height, width)
    k, rays, cam_h, back, half_w = room.k, room.rays, room.cam_h, room.back, room.half_w
    depth, labels, albedo, shade = room.depth, room.labels, room.albedo, room.shade
    ambient = float(0.35 + 0.05 * rng.standard_normal())
    temp = np.where(labels == 0, ambient - 0.04, ambient + 0.03)
    excess = np.zeros_like(temp)
    kinds = ["cabinet"] * int(rng.integers(0, 3)) + ["box"] * int(rng.integers(1, 4))
    for kind in kinds:
        if kind == "cabinet":
            size = rng.uniform([0.5, 0.5, 0.4], [1.2, 1.0, 0.8])
            col, label, dt = rng.uniform([0.35, 0.15, 0.05], [0.55, 0.3, 0.12]), 2, 0.0
        else:  # warm and cold boxes: one colour and size distribution, opposite temperatures
            size = rng.uniform(0.35, 0.65, 3)
            col = rng.uniform(0.45, 0.85) + rng.uniform(-0.05, 0.05, 3)
            warm, mag = bool(rng.integers(2)), rng.uniform(0.0, 1.0)
            label = _ID["box_warm"] if warm else _ID["box_cold"]
            dt = 0.2 + 0.12 * mag if warm else -(0.12 + 0.08 * mag)
        cx, cz = rng.uniform(-half_w + 0.6, half_w - 0.6), rng.uniform(2.0, back - 0.5)
        lo = np.array([cx - size[0] / 2, cam_h - size[1], cz - size[2] / 2])
        hi = np.array([cx + size[0] / 2, cam_h, cz + size[2] / 2])
        t_box, axis = _ray_box(np.zeros(3), rays, lo, hi)
        hit = t_box < depth
        depth = np.where(hit, t_box, depth)
        labels[hit] = label
        albedo[hit] = col
        shade[hit] = np.array([0.7, 1.0, 0.85])[axis[hit]]
        # heat rises: a warm box's top is warmer than its sides
        face_dt = dt * np.array([1.0, 1.15, 1.0])[axis[hit]] if dt > 0 else dt
        temp[hit] = ambient + face_dt
        excess[hit] = face_dt
    elev = cam_h - rays[:, 1] * depth  # height above the floor (world y points down)
    temp = np.where(labels == 1, temp + 0.03 * elev / 2.7, temp)  # warm air under the ceiling
    rgb = albedo * shade[:, None] / (1.0 + 0.02 * depth[:, None] ** 2)
    h, w = height, width
    return _Scene(
        rgb=rgb.reshape(h, w, 3).astype(np.float32),
        depth=depth.reshape(h, w).astype(np.float32),
        labels=labels.reshape(h, w),
        temp=temp.reshape(h, w).astype(np.float32),
        elev=elev.reshape(h, w).astype(np.float32),
        excess=excess.reshape(h, w).astype(np.float32),
        ambient=ambient,
        k=k,
    )


def _paint_radiator(rng: np.random.Generator, s: _Scene, y: int, x: int, sh: int, sw: int) -> str:
    """A ribbed white radiator at rows y:y+sh, cols x:x+sw; hot or cold by a coin flip."""
    hot, dt = bool(rng.integers(2)), rng.uniform(0.3, 0.45)
    col = rng.uniform(0.8, 0.95) + rng.uniform(-0.03, 0.03, 3)
    period = max(2.5, rng.uniform(4.0, 7.0) * s.labels.shape[1] / 320.0)
    fin = (0.5 + 0.5 * np.cos(2 * np.pi * np.arange(sw) / period)).astype(np.float32)
    sl = (slice(y, y + sh), slice(x, x + sw))
    s.rgb[sl] = col * (0.8 + 0.2 * fin)[None, :, None] * 0.9
    s.depth[sl] -= rng.uniform(0.06, 0.12) + 0.02 * fin[None, :]
    if not hot:  # switched off: the metal is at the temperature of the wall behind it
        return "radiator_cold"
    top_to_bottom = np.linspace(0.5, -0.5, sh, dtype=np.float32)[:, None]
    s.temp[sl] = s.ambient + dt + 0.05 * top_to_bottom + 0.02 * fin[None, :]
    s.excess[sl] = dt
    # a plume of warm air rises along the wall above it
    top = max(0, y - int(2.5 * sh))
    rows = np.arange(top, y, dtype=np.float32)[:, None]
    plume = 0.45 * dt * np.exp(-(y - rows) / (0.9 * sh)) * np.ones((1, sw), np.float32)
    region = (slice(top, y), slice(x, x + sw))
    s.temp[region] += np.where(np.isin(s.labels[region], _WALL_LIKE), plume, 0.0)
    return "radiator_hot"


def _paint_wall_objects(rng: np.random.Generator, s: _Scene) -> npt.NDArray[np.bool_]:
    """Panels, posters, niches and radiators on the walls; returns the taken pixels."""
    scale = s.labels.shape[1] / 320.0
    taken = s.labels >= 2
    wall = s.labels == 1
    low_wall = wall & (s.elev < 1.1)
    for _ in range(int(rng.integers(4, 8))):
        kind = ("panel", "poster", "niche", "radiator", "radiator")[int(rng.integers(5))]
        if kind == "radiator":
            sh, sw = int(rng.uniform(22, 40) * scale), int(rng.uniform(48, 100) * scale)
        else:
            sh, sw = int(rng.uniform(28, 70) * scale), int(rng.uniform(30, 90) * scale)
        sh, sw = max(sh, 3), max(sw, 3)
        pos = _place(rng, low_wall if kind == "radiator" else wall, taken, np.ones((sh, sw)))
        if pos is None:
            continue
        y, x = pos
        sl = (slice(y, y + sh), slice(x, x + sw))
        if kind == "radiator":
            name = _paint_radiator(rng, s, y, x, sh, sw)
        else:  # same paint and temperature as the wall: only the relief differs
            s.rgb[sl] = _texture(rng, sh, sw) * 0.9
            relief = rng.uniform(0.15, 0.4)
            s.depth[sl] += {"panel": -relief, "niche": relief}.get(kind, 0.0)
            name = kind
        s.labels[sl] = _ID[name]
        taken[sl] = True
    return taken


def _paint_cushions(rng: np.random.Generator, s: _Scene, taken: npt.NDArray[np.bool_]) -> None:
    """Red and green cushions on the floor: one geometry and temperature, two hues."""
    scale = s.labels.shape[1] / 320.0
    floor = s.labels == 0
    for _ in range(int(rng.integers(2, 5))):
        mask, dome = _ellipse(rng, scale)
        pos = _place(rng, floor, taken, mask)
        if pos is None:
            continue
        y, x = pos
        sl = (slice(y, y + mask.shape[0]), slice(x, x + mask.shape[1]))
        m = mask > 0
        name = ("cushion_red", "cushion_green")[int(rng.integers(2))]
        hue = (0.0 if name == "cushion_red" else 120.0) + rng.uniform(-15, 15)
        sat, val = rng.uniform(0.5, 0.9), rng.uniform(0.45, 0.9)
        col = cv2.cvtColor(np.array([[[hue % 360.0, sat, val]]], np.float32), cv2.COLOR_HSV2RGB)
        s.depth[sl][m] -= rng.uniform(0.1, 0.3) * dome[m]
        s.rgb[sl][m] = col[0, 0] * (0.75 + 0.25 * dome[m, None])
        s.temp[sl][m] = s.ambient - 0.02
        s.labels[sl][m] = _ID[name]
        taken[sl] |= m


def thermal_camera(rng: np.random.Generator, s: _Scene) -> F32:
    """What a microbolometer sees of the clean temperature map, in [0, 1].

    Heat sources warm (cold ones cool) the surfaces around them, every material
    shows a faint emissivity texture, the lens blurs, and the read-out adds
    temporal noise and a per-column offset (fixed-pattern noise).
    """
    h, w = s.labels.shape
    scale = w / 320.0
    halo = cv2.GaussianBlur(s.excess, (0, 0), 1.0 + 4.0 * scale) * 0.4
    temp = s.temp + np.where(s.excess == 0, halo, 0.0)
    small = rng.standard_normal((max(2, h // 12), max(2, w // 12))).astype(np.float32)
    texture = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    temp = temp + texture * _EMISSIVITY_TEXTURE[s.labels]
    blurred = cv2.GaussianBlur(temp.astype(np.float32), (0, 0), max(0.7, 1.2 * scale))
    noise = rng.standard_normal((h, w)) * 0.012 + rng.standard_normal((1, w)) * 0.005
    return np.clip(blurred + noise, 0.0, 1.0).astype(np.float32)


def render_rgbdt_frame(seed: int, height: int = 240, width: int = 320) -> MultiFrame:
    """Render one deterministic frame of all three cameras from ``seed``.

    Shape:
        rgb: (H, W, 3) uint8; aux["depth"], aux["thermal"]: (H, W) float32; labels: (H, W).

    Convention:
        The three images are registered (one pinhole camera ``meta["K"]``); depth in
        metres with 0 = missing, thermal a relative temperature in [0, 1].
    """
    rng = np.random.default_rng(seed)
    scene = _cast_room(rng, height, width)
    taken = _paint_wall_objects(rng, scene)
    _paint_cushions(rng, scene, taken)
    scene.rgb *= rng.uniform(0.75, 1.15)
    observed = scene.rgb + rng.standard_normal(scene.rgb.shape) * 0.012
    depth = sensor_depth(rng, scene.depth, observed.astype(np.float32))
    thermal = thermal_camera(rng, scene)
    rgb8 = np.clip(observed * 255.0 + 0.5, 0, 255).astype(np.uint8)
    aux = {"depth": np.asarray(depth, np.float32), "thermal": thermal}
    return MultiFrame(rgb=rgb8, aux=aux, labels=scene.labels, meta={"K": scene.k.tolist()})
