"""Image classifiers for 32x32 inputs (spec task 1, CIFAR-10).

:class:`CIFARResNet` is a CNN of Conv → BatchNorm → ReLU blocks with residual
connections (a ResNet-20 at the default ``depth=3, width=16``), global average
pooling, dropout and one linear classifier layer::

    x (N, 3, 32, 32) float, normalised per channel
    stem:    ConvBNReLU 3 -> w                                  (N, w,  32, 32)
    stage 1: depth x ResidualBlock(w  -> w,  stride 1)          (N, w,  32, 32)
    stage 2: depth x ResidualBlock(w  -> 2w, first stride 2)    (N, 2w, 16, 16)
    stage 3: depth x ResidualBlock(2w -> 4w, first stride 2)    (N, 4w,  8,  8)
    head:    global average pool, Dropout(p), Linear 4w -> K    (N, K) logits

A residual block is ``relu(Conv-BN(ConvBNReLU(x)) + shortcut(x))``: a Conv-BN-ReLU
block, then a Conv-BN whose ReLU comes after the sum with the shortcut (identity, or
a 1x1 Conv-BN where the shape changes). Parameters (10 classes): width 16 (ResNet-20)
272,474; width 20 424,910; width 21 468,289; all within the spec's 500,000.

The model returns logits (unnormalised class scores); probabilities are
``softmax(logits, dim=1)`` at inference, which :func:`predict_proba` does.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNReLU", "ResidualBlock", "CIFARResNet", "CIFARFastNet", "build_classifier", "cifar_classifier",
           "predict_proba", "whiten_init_"]


class ConvBNReLU(nn.Sequential):
    """Conv2d (k x k, no bias) → BatchNorm2d → ReLU: (N, C_in, H, W) → (N, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Basic residual block: (N, C_in, H, W) → (N, C_out, H / stride, W / stride), values >= 0 (after ReLU).

    ``relu(bn2(conv2(ConvBNReLU(x))) + shortcut(x))``; the shortcut is the identity
    when the shape is kept, else a 1x1 strided Conv-BN. ``bn2`` starts with zero
    scale, so each block starts as (almost) the identity: faster early training.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, 3, stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class _PooledClassifier(nn.Module):
    """stem → blocks → global pool → Dropout → Linear; a subclass builds ``stem`` and ``blocks``, then
    calls :meth:`_add_head`. (N, C, H, W) float, normalised → (N, K) logits."""

    def _add_head(self, channels: int, num_classes: int, dropout: float, pool: nn.Module) -> None:
        self.pool = nn.Sequential(pool, nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float → (N, channels of the last stage) pooled features (>= 0)."""
        return self.pool(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float, normalised → (N, num_classes) logits."""
        return self.classifier(self.dropout(self.features(x)))


class CIFARResNet(_PooledClassifier):
    """Residual CNN for 32x32 images: (N, in_channels, 32, 32) float → (N, num_classes) logits.

    Args:
        num_classes: classes K (10 for CIFAR-10).
        width: channels of the first stage (stages have width, 2·width, 4·width); 16 = ResNet-20.
        depth: residual blocks per stage (3 = ResNet-20, 5 = ResNet-32); the net has 6·depth + 2 layers.
        dropout: dropout probability before the classifier, in [0, 1).
        in_channels: input channels (3 for RGB).

    Inputs are float images normalised per channel (any H, W >= 8 works: the head
    pools globally). Returns float logits; ``softmax(dim=1)`` gives probabilities.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, depth: int = 3, dropout: float = 0.1,
                 in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or depth < 1 or num_classes < 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need width >= 1, depth >= 1, num_classes >= 2 and 0 <= dropout < 1; got "
                             f"width={width}, depth={depth}, num_classes={num_classes}, dropout={dropout}")
        self.stem = ConvBNReLU(in_channels, width)
        blocks, channels = [], width
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            for i in range(depth):
                blocks.append(ResidualBlock(channels, out, stride=2 if stage > 0 and i == 0 else 1))
                channels = out
        self.blocks = nn.Sequential(*blocks)
        self._add_head(channels, num_classes, dropout, nn.AdaptiveAvgPool2d(1))


class CIFARFastNet(_PooledClassifier):
    """Plain (non-residual) CNN for 32x32 images, built for throughput: (N, in_channels, H, W) float → (N, K) logits.

    Three stages, each two Conv-BN-ReLU blocks with a 2x2 max pool between the first conv and its
    BatchNorm (Conv → MaxPool → BN → ReLU, as airbench: the BN and ReLU then run on a quarter of the
    pixels), then a global max pool, dropout and one linear layer::

        stage k: Conv3x3 c -> w_k, MaxPool 2, BN, ReLU;  Conv3x3 w_k -> w_k, BN, ReLU   (N, w_k, H/2^k, W/2^k)
        head:    global max pool, Dropout(p), Linear w_3 -> K                             (N, K) logits

    Widths (32, 64, 128): 288,746 parameters for 10 classes; at batch 256 in fp32 on a 2-core AVX2 CPU it
    trains about 2.5x faster than the ResNet-20 (``python -m bench.run --only cifar10``).

    Args:
        num_classes: classes K. widths: channels of the three stages. dropout: before the classifier, [0, 1).
        in_channels: input channels (3 for RGB). Inputs: float images normalised per channel, H, W >= 8.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.1,
                 in_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or num_classes < 2 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need three widths >= 1, num_classes >= 2 and 0 <= dropout < 1; got widths={widths}, "
                             f"num_classes={num_classes}, dropout={dropout}")
        layers, channels = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(channels, w, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), ConvBNReLU(w, w)]
            channels = w
        self.stem, self.blocks = nn.Identity(), nn.Sequential(*layers)
        self._add_head(channels, num_classes, dropout, nn.AdaptiveMaxPool2d(1))


CLASSIFIERS = {"resnet": CIFARResNet, "fast": CIFARFastNet}


def build_classifier(name: str = "resnet", num_classes: int = 10, **kwargs) -> nn.Module:
    """Classifier by name: ``"resnet"`` → :class:`CIFARResNet` (``width``, ``depth``, ``dropout``, ``in_channels``);
    ``"fast"`` → :class:`CIFARFastNet` (``widths``, ``dropout``, ``in_channels``)."""
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; valid: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](num_classes=num_classes, **kwargs)


def cifar_classifier(model: str = "resnet", width: int = 16, depth: int = 3, widths: str = "32,64,128",
                     dropout: float = 0.1, num_classes: int = 10) -> nn.Module:
    """The CIFAR-10 recipe's classifier from its settings: ``model`` "resnet" uses ``width`` and ``depth``,
    "fast" the comma-separated ``widths`` (three stage widths). (N, 3, 32, 32) normalised → (N, K) logits."""
    if model == "fast":
        parts = [p.strip() for p in str(widths).split(",")]
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"widths must be three comma-separated positive ints such as '32,64,128', got {widths!r}")
        return build_classifier("fast", num_classes, widths=tuple(int(p) for p in parts), dropout=dropout)
    return build_classifier(model, num_classes, width=width, depth=depth, dropout=dropout)


@torch.no_grad()
def whiten_init_(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4, chunk: int = 500) -> nn.Conv2d:
    """Patch-whitening initialisation of a first convolution (as airbench's whitening layer), in place.

    The weights become the eigenvectors of the (uncentred) covariance of all ``k x k`` patches of
    ``images``, each divided by ``sqrt(eigenvalue + eps)``, strongest first and each followed by its
    negation (``+v1, -v1, +v2, -v2, ...``): the layer starts out decorrelating the input patches. Filters
    beyond twice the patch size (2·C·k·k) keep their random initialisation. The weights stay trainable.

    Args:
        conv: an ungrouped Conv2d, weight (out, C, k, k).
        images: (N, C, H, W) float, the model's normalised inputs (a few thousand training images), H, W >= k.
        eps: added to each eigenvalue (> 0). chunk: images per step of the covariance sum (memory only).

    Returns ``conv``.
    """
    if images.dim() != 4 or images.shape[1] != conv.in_channels or conv.groups != 1 or len(images) == 0:
        raise ValueError(f"whiten_init_ needs images (N >= 1, {conv.in_channels}, H, W) and an ungrouped conv, "
                         f"got images of shape {tuple(images.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    kh, kw = conv.kernel_size
    dim = conv.in_channels * kh * kw
    cov, count = torch.zeros(dim, dim, dtype=torch.float64), 0
    for start in range(0, len(images), chunk):
        patches = F.unfold(images[start:start + chunk].float(), (kh, kw))  # (n, C·kh·kw, positions)
        cov += torch.bmm(patches, patches.transpose(1, 2)).sum(0).double()
        count += patches.shape[0] * patches.shape[2]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)
    filters = eigenvectors.T.flip(0) / torch.sqrt(eigenvalues.flip(0) + eps)[:, None]  # strongest first
    filters = torch.stack((filters, -filters), 1).reshape(-1, conv.in_channels, kh, kw)
    n = min(conv.out_channels, filters.shape[0])
    conv.weight[:n] = filters[:n].to(conv.weight)
    return conv


@torch.no_grad()
def predict_proba(model: nn.Module, images: torch.Tensor,
                  preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  batch_size: int = 1024) -> torch.Tensor:
    """Class probabilities for a batch of images, in evaluation mode.

    Args:
        model: a classifier returning (N, K) logits.
        images: (N, C, H, W); uint8 0..255 or float, as ``preprocess`` expects
            (for CIFAR-10: uint8 with ``preprocess=Normalize(CIFAR10_MEAN, CIFAR10_STD)`` from
            :mod:`toolkit.data.batch_transforms` and :mod:`toolkit.data.cifar`);
            with ``preprocess=None`` they must already be the model's float input.
        preprocess: batch → float model input (N, C, H, W), e.g. the recipe's normalisation.
        batch_size: images per forward pass.

    Returns (N, K) float32 probabilities on the CPU, each row summing to 1
    (``argmax(dim=1)`` is the predicted class). The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start: start + batch_size].to(device)
            if preprocess is not None:
                x = preprocess(x)
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
