"""Models for STL-10 (spec tasks 3 and 4): 96x96 RGB images, 10 classes.

- :class:`STL10CNN`: Conv-BN-ReLU blocks with max pooling, global average pooling,
  dropout and a linear classifier (464,682 parameters at ``width=32``).
- :class:`STL10AutoEncoder`: 4 strided convolutions and 4 transposed convolutions, each
  with BatchNorm and ReLU except the output layer (Sigmoid); 188,659 parameters at the
  default ``channels=(24, 48, 64, 96)``.
- :class:`FrozenEncoderClassifier`: a frozen feature extractor (kept in evaluation mode,
  no gradients) feeding a trainable head; :func:`frozen_resnet18` builds torchvision's
  ResNet-18 that way and :func:`load_encoder` takes the encoder of a pretraining run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from ..checkpoint import load_weights
from .classifiers import ConvBNReLU

__all__ = ["STL10CNN", "STL10AutoEncoder", "FrozenEncoderClassifier", "freeze", "frozen_resnet18", "load_encoder",
           "linear_probe_head", "probe_classifier", "encoder_output_shape"]


class STL10CNN(nn.Module):
    """VGG-style CNN for 96x96 images: (N, 3, 96, 96) float, normalised → (N, num_classes) logits.

    Layout for width w (each block Conv 3x3 → BatchNorm → ReLU, then MaxPool 2x2)::

        ConvBNReLU 3 -> w,   pool      (N, w,  48, 48)
        ConvBNReLU w -> 2w,  pool      (N, 2w, 24, 24)
        ConvBNReLU 2w -> 4w, ConvBNReLU 4w -> 4w, pool   (N, 4w, 12, 12)
        ConvBNReLU 4w -> 6w, pool      (N, 6w, 6, 6)
        global average pool, Dropout(p), Linear 6w -> K

    w = 32: 464,682 parameters (10 classes). ``softmax(dim=1)`` of the logits gives probabilities.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        if width < 1 or num_classes < 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need width >= 1, num_classes >= 2 and 0 <= dropout < 1; got width={width}, "
                             f"num_classes={num_classes}, dropout={dropout}")
        w = width
        stages: Sequence[Sequence[int]] = ((w,), (2 * w,), (4 * w, 4 * w), (6 * w,))
        layers: list[nn.Module] = []
        channels = 3
        for stage in stages:
            for out in stage:
                layers.append(ConvBNReLU(channels, out))
                channels = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float (H, W >= 16) → (N, num_classes) float logits."""
        return self.classifier(self.dropout(self.pool(self.features(x))))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class STL10AutoEncoder(nn.Module):
    """Convolutional encoder-decoder: (N, 3, 96, 96) float in [0, 1] → (N, 3, 96, 96) float in [0, 1].

    For ``channels = (c1, c2, c3, c4)`` (each layer 3x3; shapes for 96x96 input)::

        encoder: Conv s2 3->c1, BN, ReLU        (N, c1, 48, 48)
                 Conv s2 c1->c2, BN, ReLU       (N, c2, 24, 24)
                 Conv s2 c2->c3, BN, ReLU       (N, c3, 12, 12)
                 Conv s2 c3->c4, BN, ReLU       (N, c4,  6,  6)   the code, values >= 0
        decoder: ConvT s2 c4->c3, BN, ReLU      (N, c3, 12, 12)
                 ConvT s2 c3->c2, BN, ReLU      (N, c2, 24, 24)
                 ConvT s2 c2->c1, BN, ReLU      (N, c1, 48, 48)
                 ConvT s2 c1->3, Sigmoid        (N, 3,  96, 96)

    (24, 48, 64, 96): 188,659 parameters, a code of 96 x 6 x 6 = 3,456 numbers (8x fewer
    than the 27,648 input values). H and W must be multiples of 16.
    """

    def __init__(self, channels: Sequence[int] = (24, 48, 64, 96)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels must be at least two positive widths, got {channels}")
        self.channels = channels
        widths = (3, *channels)
        self.encoder = nn.Sequential(*(_down(a, b) for a, b in zip(widths[:-1], widths[1:])))
        rev = widths[::-1]
        ups: list[nn.Module] = [_up(a, b) for a, b in zip(rev[:-2], rev[1:-1])]
        ups += [nn.ConvTranspose2d(rev[-2], 3, 3, stride=2, padding=1, output_padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*ups)

    def code_shape(self, size: int = 96) -> tuple[int, int, int]:
        """(C, H, W) of the encoder's output for a size x size input."""
        side = size // 2 ** len(self.channels)
        return self.channels[-1], side, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] → reconstruction (N, 3, H, W) float in [0, 1]."""
        return self.decoder(self.encoder(x))


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module`` and return it (in evaluation mode)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class FrozenEncoderClassifier(nn.Module):
    """A frozen ``encoder`` feeding a trainable ``head``: (N, 3, H, W) float → (N, K) logits.

    The encoder's parameters get ``requires_grad=False`` and it stays in evaluation
    mode even while the whole model trains (its BatchNorm statistics never change),
    and it runs without autograd; only ``head`` learns and counts against the budget.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = freeze(encoder)
        self.head = head

    def train(self, mode: bool = True) -> "FrozenEncoderClassifier":
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.encoder(x)
        return self.head(features)


def linear_probe_head(in_shape: Sequence[int], num_classes: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """Flatten → BatchNorm1d (no affine: standardises features) → Dropout → Linear: (N, *in_shape) → (N, K)."""
    features = 1
    for d in in_shape:
        features *= int(d)
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(features, affine=False), nn.Dropout(dropout),
                         nn.Linear(features, num_classes))


def frozen_resnet18(weights: str | None, num_classes: int = 10) -> FrozenEncoderClassifier:
    """torchvision's ResNet-18, every parameter frozen, with a new trainable Linear 512 → ``num_classes``.

    ``weights``: a torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``; downloaded by
    torchvision into its cache when not there yet, which needs a network) or the path of a
    ResNet-18 state dict (e.g. a copy of ``resnet18-f37072fd.pth``); None: random weights (to load a
    trained run's state dict into). Input: (N, 3, H, W)
    float normalised with ImageNet mean/std (224x224 as in ImageNet training).
    Raises FileNotFoundError / ConnectionError / ValueError with what to do instead.
    """
    from torchvision.models import ResNet18_Weights, resnet18

    path = Path(os.path.expanduser(weights or ""))
    if weights is None:
        model = resnet18(weights=None)
    elif path.suffix in (".pth", ".pt", ".bin") or path.exists():
        model = resnet18(weights=None)
        state = load_weights(path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} is not a torchvision ResNet-18 state dict: {err}") from None
    else:
        try:
            chosen = ResNet18_Weights[weights]
        except KeyError:
            names = ", ".join(w.name for w in ResNet18_Weights)
            raise ValueError(f"weights {weights!r} is neither a file nor a ResNet-18 weights name ({names}, DEFAULT)") from None
        try:
            model = resnet18(weights=chosen)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; no network, or a broken download
            raise ConnectionError(
                f"could not get the ImageNet weights {weights!r} for ResNet-18 ({err}): torchvision downloads them "
                f"from {chosen.url} into its cache ($TORCH_HOME/hub/checkpoints), which needs a network. Offline, "
                f"put a copy of that file on this machine and pass --weights PATH/{Path(chosen.url).name}") from None
    model.fc = nn.Identity()
    return FrozenEncoderClassifier(model, nn.Linear(512, num_classes))


def encoder_output_shape(encoder: nn.Module, size: int, in_channels: int = 3) -> tuple[int, ...]:
    """Shape (C, H, W) of ``encoder``'s output for one (1, in_channels, size, size) input, by a dummy forward
    (no autograd, evaluation mode, the module's training flag restored); 96 → (c4, 6, 6), 32 → (c4, 2, 2)."""
    was_training = encoder.training
    try:
        with torch.no_grad():
            probe = next(encoder.parameters(), torch.empty(0))
            out = encoder.eval()(torch.zeros(1, in_channels, size, size, dtype=probe.dtype, device=probe.device))
    finally:
        encoder.train(was_training)
    return tuple(out.shape[1:])


def probe_classifier(channels: Sequence[int], num_classes: int = 10, dropout: float = 0.0,
                     encoder: nn.Module | None = None, size: int = 96) -> FrozenEncoderClassifier:
    """The STL-10 probe: the frozen encoder of a :class:`STL10AutoEncoder` (``channels``; ``encoder``
    when given, else a random one) feeding :func:`linear_probe_head` sized by :func:`encoder_output_shape`
    for ``size`` x ``size`` input (96: 3,456 features at the default channels; 32, CIFAR-10: 384).
    (N, 3, size, size) float in [0, 1] → (N, num_classes) logits."""
    encoder = STL10AutoEncoder(channels).encoder if encoder is None else encoder
    head = linear_probe_head(encoder_output_shape(encoder, size), num_classes, dropout)
    return FrozenEncoderClassifier(encoder, head)


def load_encoder(weights: str | os.PathLike, channels: Sequence[int]) -> nn.Module:
    """The ``encoder`` of a :class:`STL10AutoEncoder` (``channels`` as in its run) from a pretraining ``best.pth``.

    Raises ValueError naming the file when it holds no matching encoder weights.
    """
    state = load_weights(weights)
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    encoder = STL10AutoEncoder(channels).encoder
    if not encoder_state:
        raise ValueError(f"{weights} holds no 'encoder.*' weights: pass the best.pth of a stl10_pretrain run")
    try:
        encoder.load_state_dict(encoder_state)
    except RuntimeError as err:
        raise ValueError(f"{weights}: its encoder does not match channels={tuple(channels)}: {err}") from None
    return encoder
