"""Rendering of one synthetic RGB-D / RGB-T indoor frame (pure numpy).

A pinhole camera (NYU-like intrinsics, scaled to the image size) looks into a
room: floor, back and side walls are ray-cast, cabinets are ray-cast boxes on
the floor. Flat objects are then painted on the walls and floor in image space,
so that some classes differ *only in geometry* (panel / poster / niche) and others
*only in colour* (cushion_red / cushion_green). Depth then passes through a
structured-light sensor model. The class table and the sensor model's numbers:
``datasets/README.md``, "Synthetic data".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

DEPTH_CLASSES = (
    "floor",
    "wall",
    "cabinet",
    "panel",
    "poster",
    "niche",
    "cushion_red",
    "cushion_green",
)
THERMAL_CLASSES = ("floor", "wall", "cabinet", "person", "radiator", "poster")
DEPTH_PALETTE = (
    (128, 96, 64),
    (200, 200, 190),
    (140, 70, 20),
    (30, 120, 200),
    (230, 180, 40),
    (120, 40, 160),
    (220, 40, 40),
    (40, 180, 60),
)
THERMAL_PALETTE = (
    (128, 96, 64),
    (200, 200, 190),
    (140, 70, 20),
    (220, 20, 60),
    (250, 130, 0),
    (230, 180, 40),
)

# NYU Depth v2 colour camera at 640×480; scaled to the requested size.
NYU_K = np.array([[518.8579, 0.0, 325.5824], [0.0, 519.4696, 253.7362], [0.0, 0.0, 1.0]])

F32 = npt.NDArray[np.float32]


def scaled_intrinsics(height: int, width: int) -> npt.NDArray[np.float64]:
    """NYU intrinsics rescaled to an image of ``height`` × ``width``."""
    k = NYU_K.copy()
    k[0] *= width / 640.0
    k[1] *= height / 480.0
    return k


@dataclass
class Frame:
    """One rendered frame: rgb uint8, aux float32 (metres or [0, 1] thermal), labels uint8."""

    rgb: npt.NDArray[np.uint8]
    aux: F32
    labels: npt.NDArray[np.uint8]
    meta: dict[str, Any] = field(default_factory=dict)


def _rotation(pitch: float, yaw: float) -> npt.NDArray[np.float64]:
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def _texture(rng: np.random.Generator, h: int, w: int) -> F32:
    """A random two-colour texture (stripes, checks or blotches), H×W×3 in [0, 1]."""
    c1, c2 = rng.uniform(0.1, 0.95, size=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(6, 16)
        t = (np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period) > 0).astype(
            np.float32
        )
    elif kind == 1:
        s = int(rng.integers(5, 12))
        t = (((xx // s) + (yy // s)) % 2).astype(np.float32)
    else:
        small = rng.uniform(size=(max(2, h // 8), max(2, w // 8))).astype(np.float32)
        t = (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) > 0.5).astype(np.float32)
    return (t[..., None] * c1 + (1 - t[..., None]) * c2).astype(np.float32)


def _ray_box(
    o: npt.NDArray[np.float64], d: npt.NDArray[np.float64], lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays ``o + t d`` (d: N×3) against an axis-aligned box → (t_hit, face axis)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t0 = (lo - o) * inv
        t1 = (hi - o) * inv
    tmin = np.minimum(t0, t1)
    tmax = np.maximum(t0, t1)
    t_near = np.nanmax(tmin, axis=1)
    t_far = np.nanmin(tmax, axis=1)
    hit = (t_near <= t_far) & (t_near > 0)
    return np.where(hit, t_near, np.inf), np.nanargmax(tmin, axis=1)


def _place(
    rng: np.random.Generator, allowed: np.ndarray, taken: np.ndarray, shape: np.ndarray
) -> tuple[int, int] | None:
    """Find a top-left corner where ``shape`` lies on ``allowed`` and overlaps nothing taken."""
    h, w = allowed.shape
    sh, sw = shape.shape
    if sh >= h or sw >= w:
        return None
    for _ in range(30):
        y, x = int(rng.integers(0, h - sh)), int(rng.integers(0, w - sw))
        region = shape > 0
        if (
            allowed[y : y + sh, x : x + sw][region].mean() > 0.97
            and not taken[y : y + sh, x : x + sw][region].any()
        ):
            return y, x
    return None


@dataclass
class Room:
    """The empty room seen from one camera: rays, distances to its surfaces, labels
    (0 floor, 1 wall) and shaded albedo, before any object is placed."""

    k: npt.NDArray[np.float64]
    rays: npt.NDArray[np.float64]
    cam_h: float
    back: float
    half_w: float
    t_side: npt.NDArray[np.float64]
    t_back: npt.NDArray[np.float64]
    depth: npt.NDArray[np.float64]
    labels: npt.NDArray[np.uint8]
    albedo: npt.NDArray[np.float64]
    shade: npt.NDArray[np.float64]


def cast_room(rng: np.random.Generator, height: int, width: int) -> Room:
    """Ray-cast floor, back and side walls and ceiling from a random camera pose."""
    k = scaled_intrinsics(height, width)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays_c = np.stack([(u + 0.5 - k[0, 2]) / k[0, 0], (v + 0.5 - k[1, 2]) / k[1, 1]], -1)
    rays_c = np.concatenate([rays_c, np.ones_like(rays_c[..., :1])], -1).reshape(-1, 3)
    rot = _rotation(rng.uniform(-0.35, -0.08), rng.uniform(-0.35, 0.35))
    rays = rays_c @ rot.T  # world direction; camera depth == ray parameter since rays_c.z == 1
    cam_h, back, half_w = rng.uniform(1.1, 1.6), rng.uniform(3.5, 6.0), rng.uniform(2.0, 3.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(rays[:, 1] > 0, cam_h / rays[:, 1], np.inf)
        t_back = np.where(rays[:, 2] > 0, back / rays[:, 2], np.inf)
        t_side = np.where(rays[:, 0] != 0, half_w / np.abs(rays[:, 0]), np.inf)
        t_ceil = np.where(rays[:, 1] < 0, (2.7 - cam_h) / -rays[:, 1], np.inf)
    t_wall = np.minimum(np.minimum(t_back, t_side), t_ceil)
    depth = np.minimum(t_floor, t_wall)
    labels = np.where(t_floor < t_wall, 0, 1).astype(np.uint8)
    floor_col, wall_col = rng.uniform([0.45, 0.3, 0.15], [0.7, 0.5, 0.3]), rng.uniform(0.6, 0.9, 3)
    albedo = np.where(labels[:, None] == 0, floor_col, wall_col)
    shade = np.where(labels == 0, 0.9, np.where(t_side < t_back, 0.75, 1.0))
    return Room(k, rays, cam_h, back, half_w, t_side, t_back, depth, labels, albedo, shade)


def render_room(
    rng: np.random.Generator, height: int, width: int
) -> tuple[F32, F32, npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Ray-cast floor, walls and cabinets → (albedo·shading H×W×3, depth H×W, labels, K)."""
    room = cast_room(rng, height, width)
    k, rays, cam_h, back, half_w = room.k, room.rays, room.cam_h, room.back, room.half_w
    depth, labels, albedo, shade = room.depth, room.labels, room.albedo, room.shade
    for _ in range(int(rng.integers(0, 3))):
        size = rng.uniform([0.5, 0.5, 0.4], [1.2, 1.0, 0.8])
        cx, cz = rng.uniform(-half_w + 0.6, half_w - 0.6), rng.uniform(2.0, back - 0.5)
        lo = np.array([cx - size[0] / 2, cam_h - size[1], cz - size[2] / 2])
        hi = np.array([cx + size[0] / 2, cam_h, cz + size[2] / 2])
        t_box, axis = _ray_box(np.zeros(3), rays, lo, hi)
        hit = t_box < depth
        depth = np.where(hit, t_box, depth)
        labels[hit] = 2
        albedo[hit] = rng.uniform([0.35, 0.15, 0.05], [0.55, 0.3, 0.12])
        shade[hit] = np.array([0.7, 1.0, 0.85])[axis[hit]]
    rgb = (albedo * shade[:, None] / (1.0 + 0.02 * depth[:, None] ** 2)).reshape(height, width, 3)
    return (
        rgb.astype(np.float32),
        depth.reshape(height, width).astype(np.float32),
        labels.reshape(height, width),
        k,
    )


def _ellipse(rng: np.random.Generator, scale: float) -> tuple[F32, F32]:
    """A filled ellipse mask and its dome height profile in [0, 1]."""
    ay, ax = rng.uniform(12, 28) * scale, rng.uniform(14, 32) * scale
    h, w = int(2 * ay) + 1, int(2 * ax) + 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho2 = ((yy - ay) / ay) ** 2 + ((xx - ax) / ax) ** 2
    mask = (rho2 <= 1.0).astype(np.float32)
    return mask, np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0)) * mask


def paint_objects(
    rng: np.random.Generator,
    rgb: F32,
    depth: F32,
    labels: npt.NDArray[np.uint8],
    night: bool,
) -> F32:
    """Paint the image-space classes; returns the per-pixel temperature map in [0, 1]."""
    h, w = labels.shape
    scale = w / 320.0
    temp = (0.35 + 0.05 * rng.standard_normal() + 0.03 * (labels == 1)).astype(np.float32)
    temp = np.full((h, w), temp, np.float32) + (labels == 0) * -0.04
    taken = labels == 2
    wall = labels == 1
    wall_classes = ("poster", "radiator") if night else ("panel", "poster", "niche")
    names = THERMAL_CLASSES if night else DEPTH_CLASSES
    for _ in range(int(rng.integers(2, 5))):
        name = wall_classes[int(rng.integers(len(wall_classes)))]
        sh, sw = int(rng.uniform(28, 70) * scale), int(rng.uniform(30, 90) * scale)
        shape = np.ones((sh, sw), np.float32)
        pos = _place(rng, wall, taken, shape)
        if pos is None:
            continue
        y, x = pos
        sl = (slice(y, y + sh), slice(x, x + sw))
        rgb[sl] = _texture(rng, sh, sw) * rgb[sl].mean() / max(float(rgb[sl].mean()), 1e-3) * 0.9
        relief = rng.uniform(0.15, 0.4)
        depth[sl] += {"panel": -relief, "niche": relief}.get(name, 0.0)
        if name == "radiator":
            temp[sl] = rng.uniform(0.8, 0.95)
        labels[sl] = names.index(name)
        taken[sl] = True
    floor_like = (labels == 0) | (labels == 2)
    n_blobs = int(rng.integers(1, 4))
    for _ in range(n_blobs):
        mask, dome = _ellipse(rng, scale * (1.6 if night else 1.0))
        pos = _place(rng, floor_like, taken, mask)
        if pos is None:
            continue
        y, x = pos
        sl = (slice(y, y + mask.shape[0]), slice(x, x + mask.shape[1]))
        m = mask > 0
        if night:
            name = "person"
            col = rng.uniform(0.05, 0.5, 3)
            temp[sl][m] = rng.uniform(0.75, 0.9) + 0.05 * dome[m]
        else:
            name = ("cushion_red", "cushion_green")[int(rng.integers(2))]
            hue = (0.0 if name == "cushion_red" else 120.0) + rng.uniform(-15, 15)
            sat, val = rng.uniform(0.5, 0.9), rng.uniform(0.45, 0.9)
            hsv = np.array([[[hue % 360.0, sat, val]]], np.float32)
            col = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
            depth[sl][m] -= rng.uniform(0.1, 0.3) * dome[m]
        rgb[sl][m] = col * (0.75 + 0.25 * dome[m, None])
        labels[sl][m] = names.index(name)
        taken[sl] |= m
    return temp


def sensor_depth(rng: np.random.Generator, depth: F32, rgb: F32) -> F32:
    """Apply a structured-light sensor model to clean depth (metres; 0 = missing)."""
    z = depth + rng.standard_normal(depth.shape).astype(np.float32) * (
        0.0012 + 0.0019 * (depth - 0.4) ** 2
    )
    gy, gx = np.gradient(depth)
    edges = cv2.dilate((np.hypot(gx, gy) > 0.08).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    missing = edges & (rng.uniform(size=depth.shape) < 0.7)
    missing |= rgb.mean(-1) < 0.08  # dark, absorbing surfaces return nothing
    h, w = depth.shape
    for _ in range(int(rng.integers(0, 3))):  # specular highlights
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 10) * w / 320
        yy, xx = np.ogrid[0:h, 0:w]
        missing |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    missing |= z > 8.0
    return np.where(missing, 0.0, np.maximum(z, 0.0)).astype(np.float32)


def misalignment(
    rng: np.random.Generator, strength: float, h: int, w: int, kind: str
) -> np.ndarray:
    """A random ``aux_from_rgb`` 3×3 transform: ≤ 8 px shift, 3° rotation, 5% scale × strength."""
    ang = np.deg2rad(rng.uniform(-3, 3) * strength)
    s = 1.0 + rng.uniform(-0.05, 0.05) * strength
    tx, ty = rng.uniform(-8, 8, size=2) * strength * w / 320
    c = np.array([w / 2, h / 2])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c - rot @ c + np.array([tx, ty])
    if kind == "homography":
        m[2, :2] = rng.uniform(-2e-5, 2e-5, size=2) * strength * 320 / w
    return m


def render_frame(
    seed: int,
    height: int = 240,
    width: int = 320,
    modality: str = "depth",
    misalign: str = "none",
    misalign_strength: float = 1.0,
    aux_from_rgb: np.ndarray | None = None,
    daylight: bool = False,
) -> Frame:
    """Render one deterministic frame from ``seed``.

    With ``misalign`` other than ``"none"`` the aux image is warped by ``aux_from_rgb`` (3×3,
    pixels) when given (one rig-wide transform), else by a transform drawn for this frame.
    Thermal scenes are lit as at night (a nearly black colour image) unless ``daylight``.
    """
    rng = np.random.default_rng(seed)
    night = modality == "thermal"
    rgb, depth, labels, k = render_room(rng, height, width)
    temp = paint_objects(rng, rgb, depth, labels, night)
    rgb *= rng.uniform(0.75, 1.15)
    observed: npt.NDArray[np.float64]
    if night and daylight:
        observed = rgb + rng.standard_normal(rgb.shape) * 0.012
        noisy = temp + rng.standard_normal(temp.shape).astype(np.float32) * 0.015
        aux = cv2.GaussianBlur(noisy, (0, 0), 1.0)
    elif night:
        observed = rgb * rng.uniform(0.08, 0.2) + rng.standard_normal(rgb.shape) * 0.04
        noisy = temp + rng.standard_normal(temp.shape).astype(np.float32) * 0.015
        aux = cv2.GaussianBlur(noisy, (0, 0), 1.0)
    else:
        observed = rgb + rng.standard_normal(rgb.shape) * 0.012
        aux = sensor_depth(rng, depth, observed.astype(np.float32))
    meta: dict[str, Any] = {"K": k.tolist()}
    if misalign != "none":
        m = (
            misalignment(rng, misalign_strength, height, width, misalign)
            if aux_from_rgb is None
            else np.asarray(aux_from_rgb, np.float64)
        )
        warp = cv2.warpPerspective if misalign == "homography" else cv2.warpAffine
        mat = m if misalign == "homography" else m[:2]
        aux = warp(aux, mat, (width, height), flags=cv2.INTER_NEAREST, borderValue=0.0)
        meta["aux_from_rgb"] = m.tolist()
    rgb8 = np.clip(observed * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Frame(rgb=rgb8, aux=np.asarray(aux, np.float32), labels=labels, meta=meta)
