"""Tiny models and data sets for Trainer tests (seconds on a CPU)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset


class TinyImages(Dataset):
    """n images (1, 8, 8) uint8 with label 1 when the left half is brighter; optional random noise
    augmentation drawn from a generator that ``reseed`` resets (as the MRI dataset does)."""

    def __init__(self, n: int = 48, seed: int = 0, augment: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
        self.labels = (self.images[..., :4].mean(axis=(1, 2, 3)) > self.images[..., 4:].mean(axis=(1, 2, 3)))
        self.augment = augment
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i].astype(np.int16)
        if self.augment:
            img = img + self.rng.integers(-8, 9, size=img.shape)
        return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)), int(self.labels[i])


class TinyNet(nn.Module):
    """(N, 1, 8, 8) float → (N, 2) logits; records the dtype its conv produced (autocast check)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 2, 2)
        self.seen_dtype = None

    def forward(self, x):
        h = self.conv(x)
        self.seen_dtype = h.dtype
        h = torch.relu(self.bn(h))
        left, right = h[..., :4].mean(dim=(2, 3)), h[..., 4:].mean(dim=(2, 3))
        return self.head(torch.cat([left, right], dim=1))
