"""Drawing one synthetic brain-MRI-like slice and its tumour mask (:func:`render_slice`).

The files and the command line are :mod:`toolkit.data.mri.synthetic`.

Each slice is drawn from its own generator ``np.random.default_rng(seed + id)``, so the
output is deterministic, independent of the order or parallelism of generation, and
byte-identical between runs. The on-disk layout is that of the public figshare PNG
conversion: ``root/images/<id>.png`` and ``root/masks/<id>_mask.png``, ids 1..N.

What a slice contains (T1 post-contrast look): dark noisy background; a head of random
elliptical-but-irregular shape, position, rotation and scale; skin, a bright fat ring,
a dark skull with bright marrow patches and a thin CSF layer; brain tissue with a grey /
white matter pattern, dark sulci and ventricles; bright vessels, a bright midline and
small bright spots (hard negatives); 1–3 bright, irregular, lobulated tumours inside the
brain (varied size and contrast, some with a dark necrotic core or a dark oedema halo);
a smooth multiplicative bias field and Rician noise. A fraction of slices has no tumour.
"""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

__all__ = ["GENERATOR_VERSION", "render_slice"]

#: Bumped whenever the drawing changes, so that old folders are regenerated.
GENERATOR_VERSION = 1


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: (yy, xx), each float32 (size, size), read-only."""
    ax = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise: float32 ``shape`` (h, w), about zero mean and unit std.

    ``cells`` is the number of independent values across the field (its frequency).
    """
    h, w = shape
    ch = max(2, round(cells * h / max(h, w)))
    cw = max(2, round(cells * w / max(h, w)))
    small = rng.standard_normal((ch, cw), dtype=np.float32)
    # Cubic upsampling of a white field lowers its std to about 0.6; rescale to ~1.
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * np.float32(1.6)


def _to_image(a: float, b: float, theta: float, cx: float, cy: float, u, v):
    """Head-normalised coordinates (u, v) → image coordinates (x, y)."""
    c, s = math.cos(theta), math.sin(theta)
    return cx + a * u * c - b * v * s, cy + a * u * s + b * v * c


def render_slice(rng: np.random.Generator, size: int = 512, with_tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic T1 slice and its tumour mask.

    Args:
        rng: the generator all randomness is drawn from (consumed in a fixed order).
        size: side of the square output in pixels (>= 32).
        with_tumour: False gives an empty mask and no tumour in the image.

    Returns:
        (image, mask): both uint8 arrays of shape (size, size); image values 0..255,
        mask values exactly {0, 255} (255 = tumour, always inside the brain).
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    s = float(size)
    f32 = np.float32
    yy, xx = _grid(size)

    # --- head geometry: centre, semi-axes (pixels), rotation, irregular outline ----------
    cx = s / 2 + rng.normal(0.0, 0.03 * s)
    cy = s / 2 + rng.normal(0.0, 0.03 * s)
    a = s * rng.uniform(0.33, 0.44)
    b = a * rng.uniform(0.72, 0.92)
    theta = rng.uniform(0.0, math.pi)
    egg = rng.uniform(-0.08, 0.08)
    cth, sth = math.cos(theta), math.sin(theta)
    dx = xx - f32(cx)
    dy = yy - f32(cy)
    u = (dx * f32(cth) + dy * f32(sth)) * f32(1.0 / a)
    v = (dy * f32(cth) - dx * f32(sth)) * f32(1.0 / b)
    r = np.sqrt(u * u + v * v)
    r *= f32(1.0) + f32(0.035) * _smooth_noise(rng, (size, size), 4) + f32(egg) * np.clip(u, -1.2, 1.2)

    # --- concentric layers: skin, fat, skull, CSF, brain (radii in head units) ----------
    px = 1.0 / a  # one pixel in head units
    t_skin, t_fat = rng.uniform(0.008, 0.016), rng.uniform(0.022, 0.045)
    t_skull, t_csf = rng.uniform(0.035, 0.06), rng.uniform(0.01, 0.025)
    e0 = 1.0
    e1 = e0 - max(t_skin, 1.5 * px)
    e2 = e1 - max(t_fat, 2.0 * px)
    e3 = e2 - max(t_skull, 2.0 * px)
    e4 = e3 - max(t_csf, 1.0 * px)  # brain edge
    w = min(0.8 * px, 0.25 * min(e0 - e1, e1 - e2, e2 - e3, e3 - e4))
    v_skin, v_fat = rng.uniform(0.30, 0.50), rng.uniform(0.70, 0.95)
    v_skull, v_csf = rng.uniform(0.03, 0.08), rng.uniform(0.06, 0.14)
    xp = [e4, e3 - w, e3 + w, e2 - w, e2 + w, e1 - w, e1 + w, e0 - w, e0 + w]
    fp = [v_csf, v_csf, v_skull, v_skull, v_fat, v_fat, v_skin, v_skin, 0.0]
    outer = np.interp(r, xp, fp).astype(f32)
    mottle = _smooth_noise(rng, (size, size), 24)
    outer *= f32(1.0) + f32(0.12) * mottle
    # bright marrow (diploe) patches inside the skull band
    mid_skull = 0.5 * (e2 + e3)
    diploe = np.clip(1.0 - np.abs(r - f32(mid_skull)) * f32(1.0 / (0.3 * (e2 - e3))), 0.0, 1.0)
    outer += diploe * np.clip(mottle, 0.0, 1.0) * f32(rng.uniform(0.25, 0.6))

    # --- brain: grey/white matter, sulci, texture --------------------------------------
    rb = r * f32(1.0 / e4)  # 1 at the brain edge
    gm = rng.uniform(0.32, 0.42)
    wm = gm + rng.uniform(0.04, 0.10)
    n_wm = _smooth_noise(rng, (size, size), 9)
    wm_w = np.clip(f32(0.5) + f32(2.5) * (f32(0.35) * n_wm + (f32(0.62) - rb) * f32(3.0)), 0.0, 1.0)
    brain = f32(gm) + f32(wm - gm) * wm_w
    n_sulci = _smooth_noise(rng, (size, size), 16)
    cortex = np.clip((rb - f32(0.62)) * f32(4.0), 0.0, 1.0)
    sulci = np.clip(f32(1.0) - np.abs(n_sulci) * f32(1.0 / 0.14), 0.0, 1.0) * cortex
    brain -= sulci * (brain - f32(v_csf)) * f32(0.6)
    brain *= f32(1.0) + f32(0.04) * _smooth_noise(rng, (size, size), 48)

    # ventricles: two dark, slightly tilted blobs near the centre (drawn in a local box)
    if rng.random() < 0.8:
        v0 = rng.uniform(-0.15, 0.1)
        sep = rng.uniform(0.06, 0.14)
        rx, ry = rng.uniform(0.04, 0.08), rng.uniform(0.12, 0.25)
        vx, vy = _to_image(a, b, theta, cx, cy, 0.0, v0)
        ext = (sep + rx + ry) * max(a, b) + 2
        x0, x1 = max(0, int(vx - ext)), min(size, int(vx + ext) + 2)
        y0, y1 = max(0, int(vy - ext)), min(size, int(vy + ext) + 2)
        ub, vb, bb = u[y0:y1, x0:x1], v[y0:y1, x0:x1], brain[y0:y1, x0:x1]
        for side in (-1.0, 1.0):
            tilt = side * rng.uniform(0.0, 0.5)
            uu = ub - f32(side * sep)
            vv = vb - f32(v0)
            ur = uu * f32(math.cos(tilt)) + vv * f32(math.sin(tilt))
            vr = vv * f32(math.cos(tilt)) - uu * f32(math.sin(tilt))
            q = (ur * f32(1.0 / rx)) ** 2 + (vr * f32(1.0 / ry)) ** 2
            ven = np.clip((f32(1.0) - q) * f32(3.0), 0.0, 1.0)
            bb += ven * (f32(v_csf) - bb)

    # bright vessels, midline (falx) and small bright spots: hard negatives for a threshold
    canvas = np.zeros((size, size), np.uint8)
    scale_px = s / 512.0
    for _ in range(int(rng.integers(2, 7))):
        ang = rng.uniform(0, 2 * math.pi)
        rho = rng.uniform(0.0, 0.75)
        pu, pv = rho * math.cos(ang), rho * math.sin(ang)
        heading = rng.uniform(0, 2 * math.pi)
        pts = []
        for _ in range(int(rng.integers(10, 30))):
            pts.append(_to_image(a, b, theta, cx, cy, pu, pv))
            heading += rng.normal(0.0, 0.35)
            pu += 0.025 * math.cos(heading)
            pv += 0.025 * math.sin(heading)
        pts_i = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        val = int(rng.uniform(0.55, 0.95) * 255)
        cv2.polylines(canvas, [pts_i], False, val, max(1, round(rng.uniform(1, 3) * scale_px)), cv2.LINE_AA)
    if rng.random() < 0.5:
        for v_a, v_b in ((-0.95, -0.35), (0.35, 0.95)):
            p = np.round(np.array([_to_image(a, b, theta, cx, cy, 0.0, v_a), _to_image(a, b, theta, cx, cy, 0.0, v_b)]))
            val = int(rng.uniform(0.45, 0.8) * 255)
            thick = max(1, round(1.5 * scale_px))
            cv2.line(canvas, tuple(int(t) for t in p[0]), tuple(int(t) for t in p[1]), val, thick, cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        ang, rho = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.7)
        x, y = _to_image(a, b, theta, cx, cy, rho * math.cos(ang), rho * math.sin(ang))
        rad = max(1, round(rng.uniform(2, 6) * scale_px))
        cv2.circle(canvas, (round(x), round(y)), rad, int(rng.uniform(0.55, 0.9) * 255), -1, cv2.LINE_AA)
    bright = canvas.astype(f32) * f32(1.0 / 255.0)
    brain = np.maximum(brain, bright)

    # --- tumours ---------------------------------------------------------------------------
    mask = np.zeros((size, size), bool)
    if with_tumour:
        n_tum = 1 + int(rng.random() < 0.2) + int(rng.random() < 0.05)
        inside = rb < f32(0.97)
        min_area = max(12, int(2e-4 * s * s))
        for _ in range(n_tum):
            for _attempt in range(20):
                placed = _draw_tumour(rng, brain, mask, inside, rb, a, b, theta, cx, cy, gm, v_csf, s, min_area)
                if placed:
                    break

    # --- compose, bias field, Rician noise, 8-bit ----------------------------------------
    wb = np.clip((f32(1.0) - rb) * f32(e4 / (2 * w)) + f32(0.5), 0.0, 1.0)
    img = outer + wb * (brain - outer)
    img *= np.exp(f32(rng.uniform(0.08, 0.3)) * _smooth_noise(rng, (size, size), 3))
    sigma = f32(rng.uniform(0.01, 0.035))
    # Rician magnitude |I + n1 + i n2|; n2 is n1 point-mirrored (independent at every
    # pixel but the centre), which halves the cost of drawing the noise.
    n1 = rng.standard_normal((size, size), dtype=f32)
    n1 *= sigma
    n2 = n1[::-1, ::-1]
    img += n1
    img = np.sqrt(img * img + n2 * n2)
    img *= f32(rng.uniform(200.0, 250.0))
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * np.uint8(255)


def _draw_tumour(rng, brain, mask, inside, rb, a, b, theta, cx, cy, gm, v_csf, s, min_area) -> bool:
    """Paint one irregular tumour into ``brain`` (in place) and OR it into ``mask``.

    Returns False (painting nothing) when the drawn shape would be smaller than
    ``min_area`` pixels once clipped to the brain, so that the caller redraws.
    """
    f32 = np.float32
    size = brain.shape[0]
    radius = math.exp(rng.uniform(math.log(0.025 * s), math.log(0.14 * s)))  # pixels
    ang = rng.uniform(0, 2 * math.pi)
    rho = math.sqrt(rng.uniform(0.0, 1.0)) * 0.8
    tx, ty = _to_image(a, b, theta, cx, cy, rho * math.cos(ang), rho * math.sin(ang))
    elong = rng.uniform(0.6, 1.0)
    psi = rng.uniform(0, math.pi)
    n_harm = 5
    amps = rng.uniform(0.0, 1.0, n_harm) * rng.uniform(0.05, 0.3) / np.arange(1, n_harm + 1) ** 0.7
    phases = rng.uniform(0, 2 * math.pi, n_harm)
    rough = rng.uniform(0.03, 0.12)
    contrast = rng.uniform(0.10, 0.42)
    necrotic = rng.random() < 0.35
    core = rng.uniform(0.3, 0.65)
    v_core = rng.uniform(0.12, 0.28)
    oedema = rng.uniform(0.15, 0.6) if rng.random() < 0.5 else 0.0
    edge = rng.uniform(0.06, 0.2)  # partial-volume ramp, in shape-level units

    ext = 1.7 * radius * (1.0 + oedema)
    x0, x1 = max(0, int(tx - ext)), min(size, int(tx + ext) + 2)
    y0, y1 = max(0, int(ty - ext)), min(size, int(ty + ext) + 2)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return False
    yy, xx = _grid(size)
    lx = xx[y0:y1, x0:x1] - f32(tx)
    ly = yy[y0:y1, x0:x1] - f32(ty)
    cp, sp = f32(math.cos(psi)), f32(math.sin(psi))
    pu = lx * cp + ly * sp
    pv = (ly * cp - lx * sp) * f32(1.0 / elong)
    dist = np.sqrt(pu * pu + pv * pv)
    phi = np.arctan2(pv, pu)
    shape_r = np.ones_like(phi)
    for k in range(n_harm):
        shape_r += f32(amps[k]) * np.cos(f32(k + 2) * phi + f32(phases[k]))
    shape_r = np.maximum(shape_r, f32(0.35)) * f32(radius)
    noise = _smooth_noise(rng, (y1 - y0, x1 - x0), max(3, round(6 * (x1 - x0) / (3.4 * radius))))
    level = dist / shape_r + f32(rough) * noise  # < 1 inside the tumour

    ins = inside[y0:y1, x0:x1]
    tum = (level < f32(1.0)) & ins
    if int(np.count_nonzero(tum & ~mask[y0:y1, x0:x1])) < min_area:
        return False

    reg = brain[y0:y1, x0:x1]
    if oedema > 0:  # T1-dark halo around the tumour, inside the brain only
        halo = np.clip((f32(1.0 + oedema) - level) * f32(1.0 / oedema), 0.0, 1.0) * ins
        reg *= f32(1.0) - f32(0.15) * halo
    tex = f32(gm + contrast) * (f32(1.0) + f32(0.08) * _smooth_noise(rng, reg.shape, 8))
    if necrotic:
        wcore = np.clip((f32(core) - level) * f32(1.0 / 0.1) + f32(0.5), 0.0, 1.0)
        tex += wcore * (f32(v_core) - tex)
    alpha = np.clip((f32(1.0) - level) * f32(1.0 / edge) + f32(0.5), 0.0, 1.0) * ins
    reg += alpha * (tex - reg)
    mask[y0:y1, x0:x1] |= tum
    return True
