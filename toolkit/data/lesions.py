"""Synthetic lesions painted onto unlabelled slices: a self-supervised segmentation task for pretraining.

Each selected image gets one to ``max_lesions`` blobs drawn on the device: an ellipse of random size, aspect
and rotation whose outline is bent by a few low harmonics, a soft edge of random sharpness (sharp like a
meningioma, diffuse like a glioma), a textured fill that is bright (enhancing tumour on T1c), dark, or a
bright rim around a dark core (a ring-enhancing glioma), blended in at a random opacity. The model is then
trained to segment the blobs it was not told about, from the image alone (as synthetic-tumour training:
Hu et al., "Label-free liver tumor segmentation", CVPR 2023). Real slices of tumour data sets hold real,
unlabelled tumours, so the task is scored only inside a region of interest around each synthetic lesion
(``roi_factor`` times its radius): the model learns to find a lesion's outline against the tissue around
it and is never told that the real tumour elsewhere on the slice is background.

Images are float (N, C, H, W) in [0, 1]; every channel gets the same blob with its own intensity. Sizes
are fractions of the image side, so the same settings fit 32x32 tests and 240x240 slices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .corruptions import SeededDraws

__all__ = ["SyntheticLesions"]

_HARMONICS = (2, 3, 4)  # outline harmonics: bends of the ellipse (angular frequencies)


class SyntheticLesions(SeededDraws):
    """Paint random lesions onto images; callable ``(images) -> (lesioned, masks, roi)``.

    Args:
        p: probability that an image gets lesions (the others come back unchanged, with an empty ``roi``).
        max_lesions: most lesions per selected image (each gets 1..max_lesions, uniformly).
        sizes: (low, high) lesion radius as a fraction of the image side, drawn uniformly.
        ring_p: share of lesions drawn as a bright rim around a dark core.
        dark_p: share of the other lesions drawn darker than the tissue instead of brighter.
        roi_factor: the region of interest of a lesion reaches ``roi_factor`` times its radius (>= 1).
        seed: the draws come from a ``torch.Generator`` seeded with it (one per device, made on first use),
            so a fresh instance repeats the same lesions for the same batches; ``reset()`` restarts the
            sequence; None: torch's global RNG.

    Call: images (N, C, H, W) float in [0, 1] -> ``lesioned`` (same shape and dtype, in [0, 1]), ``masks``
    (N, 1, H, W) float {0, 1} (1 inside a lesion's outline), ``roi`` (N, 1, H, W) float {0, 1} (1 where the
    task is scored: around every lesion; 0 on images without lesions; pixels outside it are left unchanged).
    Raises ValueError for bad settings or an image batch that is not float (N, C, H, W).
    """

    def __init__(self, p: float = 1.0, max_lesions: int = 2, sizes: tuple[float, float] = (0.02, 0.14),
                 ring_p: float = 0.3, dark_p: float = 0.2, roi_factor: float = 2.0, seed: int | None = 0) -> None:
        for name, v in (("p", p), ("ring_p", ring_p), ("dark_p", dark_p)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        if isinstance(max_lesions, bool) or not isinstance(max_lesions, int) or max_lesions < 1:
            raise ValueError(f"max_lesions must be an int >= 1, got {max_lesions!r}")
        low, high = sizes
        if not 0 < low <= high <= 0.5:
            raise ValueError(f"sizes must be (low, high) with 0 < low <= high <= 0.5 (fractions of the side), "
                             f"got {sizes!r}")
        if not (math.isfinite(roi_factor) and roi_factor >= 1):
            raise ValueError(f"roi_factor must be a finite number >= 1, got {roi_factor!r}")
        self.p, self.max_lesions, self.sizes = p, max_lesions, (float(low), float(high))
        self.ring_p, self.dark_p, self.roi_factor, self.seed = ring_p, dark_p, float(roi_factor), seed
        self._generators = {}

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be float (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        gen = self.generator(images.device)
        n, c, h, w = images.shape
        k = self.max_lesions
        dev = images.device

        def u(*shape):
            return torch.rand(shape, device=dev, generator=gen, dtype=torch.float32)

        count = (u(n) * k).long() + 1  # 1..k lesions per image
        active = (torch.arange(k, device=dev) < count[:, None]) & (u(n) < self.p)[:, None]  # (N, K)
        # centres inside the head: pixels brighter than a tenth of the image's maximum (any pixel if none is)
        grey = images.float().mean(1).reshape(n, -1)
        weights = (grey > 0.1 * grey.amax(1, keepdim=True)).float() + 1e-6
        flat = torch.multinomial(weights, k, replacement=True, generator=gen)  # (N, K)
        cy, cx = (flat // w).float(), (flat % w).float()
        side = min(h, w)
        radius = (self.sizes[0] + (self.sizes[1] - self.sizes[0]) * u(n, k)) * side
        aspect, angle = 0.6 + 0.4 * u(n, k), math.pi * u(n, k)
        bends, phases = 0.12 * u(n, k, len(_HARMONICS)), 2 * math.pi * u(n, k, len(_HARMONICS))
        sharp = 4 + 16 * u(n, k)  # edge steepness per unit of normalised radius: diffuse (4) to sharp (20)
        kind = u(n, k)
        ring = kind < self.ring_p
        dark = ~ring & (kind < self.ring_p + (1 - self.ring_p) * self.dark_p)
        level = torch.where(dark, 0.25 * u(n, k), 0.45 + 0.55 * u(n, k))  # fill intensity, [0, 1]
        core, core_size = 0.05 + 0.3 * u(n, k), 0.4 + 0.35 * u(n, k)  # ring lesions: dark core, its radius share
        opacity = 0.6 + 0.4 * u(n, k, c)  # per channel: how strongly the lesion shows

        yy = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1)
        xx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w)
        dy, dx = yy - cy[..., None, None], xx - cx[..., None, None]  # (N, K, H, W)
        cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
        along, across = dx * cos + dy * sin, (dy * cos - dx * sin) / aspect[..., None, None]
        theta = torch.atan2(across, along)
        outline = torch.ones_like(theta)
        for i, m in enumerate(_HARMONICS):
            outline = outline + bends[..., i, None, None] * torch.cos(m * theta + phases[..., i, None, None])
        dist = torch.sqrt(along ** 2 + across ** 2) / (radius[..., None, None] * outline)  # < 1 inside
        near = (dist < self.roi_factor) & active[..., None, None]  # the roi of each lesion: nothing changes outside
        soft = torch.sigmoid((1 - dist) * sharp[..., None, None]) * near
        ring_fill = level[..., None, None] + (core - level)[..., None, None] * torch.sigmoid(
            (core_size[..., None, None] - dist) * sharp[..., None, None])
        fill = torch.where(ring[..., None, None], ring_fill, level[..., None, None].expand_as(dist))
        texture = 1 + 0.15 * F.interpolate(torch.randn(n, 1, max(1, h // 8), max(1, w // 8), device=dev,
                                                      generator=gen), size=(h, w), mode="bilinear", align_corners=False)

        out = images.float().clone()
        for j in range(k):  # later lesions over earlier ones
            alpha = soft[:, j, None] * opacity[:, j, :, None, None]  # (N, C, H, W)
            out = out * (1 - alpha) + alpha * (fill[:, j, None] * texture).clamp(0, 1)
        inside = (dist < 1) & active[..., None, None]
        masks = inside.any(1, keepdim=True).float()
        roi = near.any(1, keepdim=True).float()
        return out.clamp(0, 1).to(images.dtype), masks, roi
