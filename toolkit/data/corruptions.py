"""Models-Genesis image corruptions (Zhou et al., MICCAI 2019 / MedIA 2021) as batched on-device ops.

Every function takes float images (N, C, H, W) in [0, 1] on any device and returns a new tensor of the
same shape, dtype and device with values in [0, 1]; ``selected`` is a bool (N,) tensor saying which
images are corrupted (the others are returned unchanged), and ``generator`` an optional
``torch.Generator`` on the images' device that makes the draws reproducible. Sizes are fractions of
the image side, so the same settings fit 32x32 tests and 240x240 scans.

- :func:`nonlinear_intensity`: a random monotone cubic Bezier curve through (0, 0) and (1, 1) maps
  every intensity (half the time the curve is inverted, 1 - ..., as in Models Genesis);
- :func:`local_pixel_shuffle`: pixels are permuted inside random small square tiles (texture lost,
  global shape kept);
- :func:`inpaint`: random boxes are filled with uniform noise (the model must fill them in);
- :func:`outpaint`: everything outside random boxes is filled with uniform noise (the model must
  extend the image outwards).

:class:`Corrupt` chains them with one probability each, as Models Genesis does: shuffle, then the
intensity curve, then in-painting or out-painting (never both on one image).
"""

from __future__ import annotations

import torch

__all__ = ["Corrupt", "SeededDraws", "inpaint", "local_pixel_shuffle", "nonlinear_intensity", "outpaint"]

_CURVE_POINTS = 256  # samples along each Bezier curve; intensities are interpolated linearly between them


def _check(images: torch.Tensor, selected: torch.Tensor) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if selected.shape != images.shape[:1] or selected.dtype != torch.bool:
        raise ValueError(f"selected must be bool ({images.shape[0]},), got {selected.dtype} {tuple(selected.shape)}")


def _uniform(shape, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, device=images.device, generator=generator, dtype=torch.float32)


def nonlinear_intensity(images: torch.Tensor, selected: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Map the intensities of each selected image through its own random cubic Bezier curve.

    Control points (0, 0), (a, b), (c, d), (1, 1) with a..d uniform in [0, 1]; the curve's x and y
    samples are sorted so the map is monotone from [0, 1] onto [0, 1]; with probability 0.5 it is
    inverted (y -> 1 - y, a decreasing map). (N, C, H, W) float in [0, 1] -> same shape, in [0, 1].
    """
    _check(images, selected)
    n = images.shape[0]
    p = _uniform((n, 4), images, generator)
    t = torch.linspace(0, 1, _CURVE_POINTS, device=images.device).unsqueeze(0)  # (1, T)
    w1, w2, w3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
    xs = (w1 * p[:, :1] + w2 * p[:, 2:3] + w3).sort(dim=1).values  # (N, T), from 0 to 1
    ys = (w1 * p[:, 1:2] + w2 * p[:, 3:4] + w3).sort(dim=1).values
    invert = _uniform((n, 1), images, generator) < 0.5
    ys = torch.where(invert, 1 - ys, ys)
    grid = t.expand(n, _CURVE_POINTS).contiguous()  # the curve on a uniform grid of x, then a table lookup
    hi = torch.searchsorted(xs.contiguous(), grid).clamp(1, _CURVE_POINTS - 1)
    x0, x1, y0, y1 = xs.gather(1, hi - 1), xs.gather(1, hi), ys.gather(1, hi - 1), ys.gather(1, hi)
    table = y0 + ((grid - x0) / (x1 - x0).clamp_min(1e-8)).clamp(0, 1) * (y1 - y0)  # (N, T): y at x = k / (T-1)
    pos = images.reshape(n, -1).float().clamp(0, 1) * (_CURVE_POINTS - 1)
    low = pos.floor().long().clamp_max(_CURVE_POINTS - 2)
    frac = pos - low
    mapped = (table.gather(1, low) * (1 - frac) + table.gather(1, low + 1) * frac).clamp(0, 1).reshape(images.shape).to(images.dtype)
    return torch.where(selected.view(n, 1, 1, 1), mapped, images)


def local_pixel_shuffle(images: torch.Tensor, selected: torch.Tensor, block: float = 0.05, tile_p: float = 0.5,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Permute the pixels inside random square tiles of each selected image.

    The image is cut into tiles of side ``max(2, round(block * min(H, W)))`` pixels (a border that
    does not fill a tile is left alone); each tile of a selected image is shuffled with probability
    ``tile_p`` (one random permutation per tile, shared by the channels). (N, C, H, W) float in
    [0, 1] -> same shape; the values are the input's, moved.
    """
    _check(images, selected)
    if not 0 < block <= 1 or not 0 <= tile_p <= 1:
        raise ValueError(f"need 0 < block <= 1 and 0 <= tile_p <= 1, got block {block}, tile_p {tile_p}")
    n, c, h, w = images.shape
    s = max(2, round(block * min(h, w)))
    th, tw = h // s, w // s
    if not th or not tw:
        return images.clone()
    body = images[:, :, :th * s, :tw * s].reshape(n, c, th, s, tw, s).permute(0, 1, 2, 4, 3, 5)
    body = body.reshape(n, c, th, tw, s * s)
    keys = _uniform((n, th, tw, s * s), images, generator)
    shuffle = (_uniform((n, th, tw, 1), images, generator) < tile_p) & selected.view(n, 1, 1, 1)
    keys = torch.where(shuffle, keys, torch.arange(s * s, device=images.device, dtype=keys.dtype))  # identity
    order = keys.argsort(dim=-1).unsqueeze(1).expand(n, c, th, tw, s * s)
    moved = body.gather(-1, order).reshape(n, c, th, tw, s, s).permute(0, 1, 2, 4, 3, 5)
    out = images.clone()
    out[:, :, :th * s, :tw * s] = moved.reshape(n, c, th * s, tw * s)
    return out


def _boxes(images: torch.Tensor, count: int, low: float, high: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """Union of ``count`` random boxes per image, sides uniform in [low, high] of H and W: bool (N, 1, H, W)."""
    n, _, h, w = images.shape
    dev = images.device
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    union = torch.zeros((n, h, w), dtype=torch.bool, device=dev)
    for _ in range(count):
        u = _uniform((n, 4), images, generator)
        bh = (low + (high - low) * u[:, 0]).mul(h).round().clamp(1, h).long()
        bw = (low + (high - low) * u[:, 1]).mul(w).round().clamp(1, w).long()
        top = (u[:, 2] * (h - bh + 1)).floor().long().clamp_max(h - bh).view(n, 1, 1)
        left = (u[:, 3] * (w - bw + 1)).floor().long().clamp_max(w - bw).view(n, 1, 1)
        union |= ((rows >= top) & (rows < top + bh.view(n, 1, 1))
                  & (cols >= left) & (cols < left + bw.view(n, 1, 1)))
    return union.unsqueeze(1)


def _check_boxes(count: int, low: float, high: float) -> None:
    if count < 1 or not 0 < low <= high <= 1:
        raise ValueError(f"need boxes >= 1 and 0 < low <= high <= 1 (fractions of the side), "
                         f"got boxes {count}, sizes [{low}, {high}]")


def inpaint(images: torch.Tensor, selected: torch.Tensor, boxes: int = 3, low: float = 1 / 6, high: float = 1 / 3,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``boxes`` random boxes (sides between ``low`` and ``high`` of the image side) of each
    selected image with uniform noise in [0, 1] (per pixel and channel). (N, C, H, W) float in
    [0, 1] -> same shape, in [0, 1]. Models Genesis: 1 to 5 boxes of 1/6 to 1/3 of the side."""
    _check(images, selected)
    _check_boxes(boxes, low, high)
    hole = _boxes(images, boxes, low, high, generator) & selected.view(-1, 1, 1, 1)
    return torch.where(hole, _uniform(images.shape, images, generator).to(images.dtype), images)


def outpaint(images: torch.Tensor, selected: torch.Tensor, boxes: int = 3, low: float = 3 / 7, high: float = 4 / 7,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep ``boxes`` random boxes (sides between ``low`` and ``high`` of the image side) of each
    selected image and fill everything outside them with uniform noise in [0, 1]. (N, C, H, W)
    float in [0, 1] -> same shape, in [0, 1]. Models Genesis: 1 to 5 boxes of 3/7 to 4/7 of the side."""
    _check(images, selected)
    _check_boxes(boxes, low, high)
    outside = ~_boxes(images, boxes, low, high, generator) & selected.view(-1, 1, 1, 1)
    return torch.where(outside, _uniform(images.shape, images, generator).to(images.dtype), images)


class SeededDraws:
    """Random draws on the images' device from a ``torch.Generator`` seeded with ``seed`` (made on first use, one
    per device), so a fresh instance repeats the same draws for the same batches; ``reset()`` restarts the
    sequence; ``seed`` None: torch's global RNG. Subclasses set ``seed`` and ``_generators = {}``."""

    seed: int | None
    _generators: dict[str, torch.Generator]

    def reset(self) -> None:
        """Restart the random sequence from ``seed`` (the next call draws as a fresh instance would)."""
        self._generators.clear()

    def generator(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator for ``device`` (None without a seed)."""
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]


class Corrupt(SeededDraws):
    """The Models-Genesis corruption chain for a batch: ``Corrupt(...)(images)``.

    (N, C, H, W) float in [0, 1] -> a new (N, C, H, W) tensor, same dtype and device, in [0, 1].
    Per image, independently: local pixel shuffling with probability ``shuffle_p``, then the
    Bezier intensity curve with ``nonlinear_p``, then in-painting with ``inpaint_p`` or else
    out-painting with ``outpaint_p`` (exclusive: ``inpaint_p + outpaint_p <= 1``). Models Genesis
    uses shuffle 0.5, curve 0.9, painting 0.9 of which 20% in-painting: the defaults. Sizes:
    ``shuffle_block`` (tile side), ``inpaint_sizes`` / ``outpaint_sizes`` ((low, high) box sides),
    all fractions of the image side; ``boxes`` boxes per painted image.

    ``seed``: the draws come from a ``torch.Generator`` on the images' device seeded with it (made
    on first use, one per device), so a fresh ``Corrupt`` with the same seed repeats the same
    corruptions for the same batches; ``reset()`` restarts the sequence. None: torch's global RNG.
    """

    def __init__(self, nonlinear_p: float = 0.9, shuffle_p: float = 0.5, inpaint_p: float = 0.18,
                 outpaint_p: float = 0.72, shuffle_block: float = 0.05, shuffle_tile_p: float = 0.5,
                 inpaint_sizes: tuple[float, float] = (1 / 6, 1 / 3), outpaint_sizes: tuple[float, float] = (3 / 7, 4 / 7),
                 boxes: int = 3, seed: int | None = 0) -> None:
        probs = {"nonlinear_p": nonlinear_p, "shuffle_p": shuffle_p, "inpaint_p": inpaint_p, "outpaint_p": outpaint_p}
        bad = {k: v for k, v in probs.items() if not 0 <= v <= 1}
        if bad or inpaint_p + outpaint_p > 1 + 1e-9:
            raise ValueError(f"corruption probabilities must lie in [0, 1] with inpaint_p + outpaint_p <= 1, got {probs}")
        for name, (low, high) in (("inpaint_sizes", inpaint_sizes), ("outpaint_sizes", outpaint_sizes)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= 1, got {(low, high)}")
        local_pixel_shuffle(torch.zeros(1, 1, 4, 4), torch.zeros(1, dtype=torch.bool), shuffle_block,
                            shuffle_tile_p)  # checks the shuffle settings
        _check_boxes(boxes, 0.5, 0.5)
        self.nonlinear_p, self.shuffle_p, self.inpaint_p, self.outpaint_p = nonlinear_p, shuffle_p, inpaint_p, outpaint_p
        self.shuffle_block, self.shuffle_tile_p, self.boxes = shuffle_block, shuffle_tile_p, boxes
        self.inpaint_sizes, self.outpaint_sizes = tuple(inpaint_sizes), tuple(outpaint_sizes)
        self.seed = seed
        self._generators = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check(images, torch.zeros(images.shape[:1], dtype=torch.bool))
        gen = self.generator(images.device)
        u = _uniform((3, images.shape[0]), images, gen)
        x = local_pixel_shuffle(images, u[0] < self.shuffle_p, self.shuffle_block, self.shuffle_tile_p, gen)
        x = nonlinear_intensity(x, u[1] < self.nonlinear_p, gen)
        x = inpaint(x, u[2] < self.inpaint_p, self.boxes, *self.inpaint_sizes, generator=gen)
        painted_out = (u[2] >= self.inpaint_p) & (u[2] < self.inpaint_p + self.outpaint_p)
        return outpaint(x, painted_out, self.boxes, *self.outpaint_sizes, generator=gen)
