"""Autoencoders for 28x28 grey images (spec section 2: MNIST reconstruction and denoising).

- :class:`LinearAutoEncoder`: the spec's fully connected autoencoder, 784 → 15 → 784
  (223,391 parameters).
- :class:`AutoEncoder_CNN`: a convolutional autoencoder whose encoder ends in a max
  pooling that keeps its indices and whose decoder starts with the matching max
  unpooling (under 35,000 parameters).

Both take (N, 1, 28, 28) float images in [0, 1] and return (N, 1, 28, 28) float in
[0, 1] (a final Sigmoid).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["LinearAutoEncoder", "AutoEncoder_CNN", "build_autoencoder"]


class LinearAutoEncoder(nn.Module):
    """Fully connected autoencoder with a 15-number code, exactly as the spec lays it out.

    ``encoder``: Flatten, Linear 784→128, ReLU, 128→64, ReLU, 64→32, ReLU, 32→15 (no
    activation: the code is any real vector). ``decoder``: Linear 15→32, ReLU, 32→64,
    ReLU, 64→128, ReLU, 128→784, Sigmoid. 223,391 parameters.

    ``forward(x)``: x (N, 1, 28, 28) float in [0, 1] (any (N, 784)-flattenable shape)
    → (N, 1, 28, 28) float in [0, 1]. ``encoder(x)`` gives the (N, 15) code.
    """

    def __init__(self, code_size: int = 15) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, code_size),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_size, 32), nn.ReLU(),
            nn.Linear(32, 64), nn.ReLU(),
            nn.Linear(64, 128), nn.ReLU(),
            nn.Linear(128, 784), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)).reshape(-1, 1, 28, 28)


class AutoEncoder_CNN(nn.Module):  # noqa: N801 - the spec's name
    """Convolutional autoencoder with a max pooling that keeps its indices and the matching unpooling.

    Layout for ``channels = (c1, c2, c3)`` (the spec's sample design; shapes for a 28x28 input)::

        encoder: Conv 3x3 s2 p1 1→c1, ReLU          (N, c1, 14, 14)
                 Conv 3x3 s2 p1 c1→c2, ReLU         (N, c2, 7, 7)
                 Conv 5x5 c2→c3                     (N, c3, 3, 3)
                 MaxPool 3x3, return_indices=True   (N, c3, 1, 1) code + where each max was
        decoder: MaxUnpool 3x3 with those indices   (N, c3, 3, 3)
                 ConvTranspose 5x5 c3→c2, ReLU      (N, c2, 7, 7)
                 ConvTranspose 3x3 s2 p1 op1 c2→c1, ReLU   (N, c1, 14, 14)
                 ConvTranspose 3x3 s2 p1 op1 c1→1, Sigmoid (N, 1, 28, 28)

    The 3x3 pool covers the whole 3x3 map, so the code is c3 numbers plus, per
    channel, which of the 9 positions held the maximum. Default (16, 32, 15): a
    15-number code like :class:`LinearAutoEncoder`'s, 33,616 parameters
    ((8, 16, 32): a 32-number code, 28,129 parameters).

    ``forward(x)``: x (N, 1, 28, 28) float in [0, 1] → (N, 1, 28, 28) float in [0, 1].
    ``encode(x)`` → (code (N, c3, 1, 1) float, indices (N, c3, 1, 1) int64);
    ``decode(code, indices)`` → (N, 1, 28, 28) in [0, 1].
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 15)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, 5),
        )
        self.pool = nn.MaxPool2d(3, return_indices=True)
        self.unpool = nn.MaxUnpool2d(3)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c3, c2, 5), nn.ReLU(),
            nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, 28, 28) in [0, 1] → (code (N, c3, 1, 1) float, pooling indices (N, c3, 1, 1) int64)."""
        return self.pool(self.encoder(x))

    def decode(self, code: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Code and pooling indices from :meth:`encode` → (N, 1, 28, 28) float in [0, 1]."""
        return self.decoder(self.unpool(code, indices, output_size=(3, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.encode(x))


def build_autoencoder(name: str, channels: tuple[int, int, int] = (16, 32, 15)) -> nn.Module:
    """MNIST autoencoder by name (the recipe's ``model``): ``linear`` → :class:`LinearAutoEncoder`,
    ``cnn`` → :class:`AutoEncoder_CNN` with conv widths ``channels``. Raises ValueError for other names."""
    if name == "linear":
        return LinearAutoEncoder()
    if name == "cnn":
        return AutoEncoder_CNN(tuple(channels))
    raise ValueError(f"unknown autoencoder {name!r}; valid: linear, cnn")
