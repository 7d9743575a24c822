"""Segmentation losses: the soft Dice loss of the spec, Dice + BCE and Dice + CE, and deep supervision over them.

Style follows MONAI ``losses/dice.py``: every option is fixed in ``__init__`` (bad
options raise ``ValueError`` naming the option and its value) and ``forward`` takes
only tensors.

The soft Dice loss is exactly (spec section 5)::

    L = 1 - (2 * sum(p * t) + eps) / (sum(p ** 2) + sum(t ** 2) + eps)

where ``p`` are predicted probabilities and ``t`` the binary ground truth. It is
computed in float32 whatever the input dtype (bf16/fp16 inputs from autocast are
cast up inside), so the reductions over 240x240 pixels do not lose precision.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SoftDiceLoss", "DiceBCELoss", "DiceCELoss", "DeepSupervisionLoss", "segmentation_loss"]


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if pred.ndim < 2:
        raise ValueError(
            f"pred must have shape (N, C, ...) with at least 2 dims, got {tuple(pred.shape)}"
        )


class SoftDiceLoss(nn.Module):
    """Soft Dice loss ``1 - (2·Σ(p·t) + ε) / (Σp² + Σt² + ε)``.

    Args:
        eps: ε added to numerator and denominator (> 0). With ε in both, an empty
            target and an all-zero prediction give loss 0 (ε/ε = 1).
        from_logits: if True (default) ``pred`` holds logits and ``sigmoid`` is
            applied; if False ``pred`` already holds probabilities in [0, 1].
        batch: if False (default) the sums run over the spatial dims of each
            (sample, channel) pair and the N×C losses are averaged; if True the sums
            run over the batch and spatial dims together, one Dice per channel,
            and the C losses are averaged (more stable with many empty masks).

    Shapes:
        - pred: (N, C, *spatial), any float dtype (fp32/bf16/fp16); logits or
          probabilities as set by ``from_logits``.
        - target: same shape as ``pred``, values in {0, 1}, any float, bool or
          integer dtype (e.g. uint8).
        - output: scalar float32 tensor in [0, 1].

    Raises:
        ValueError: on a bad option (in ``__init__``) or when ``pred`` and
            ``target`` shapes differ (in ``forward``).
    """

    def __init__(self, eps: float = 1e-6, from_logits: bool = True, batch: bool = False) -> None:
        super().__init__()
        self.eps = _check_eps(eps)
        self.from_logits = _check_bool("from_logits", from_logits)
        self.batch = _check_bool("batch", batch)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the mean soft Dice loss (float32 scalar) of ``pred`` against ``target``."""
        _check_same_shape(pred, target)
        p = pred.float()
        if self.from_logits:
            p = torch.sigmoid(p)
        t = target.float()
        dims = list(range(2, p.ndim))
        if self.batch:
            dims = [0] + dims
        if dims:
            inter = (p * t).sum(dim=dims)
            denom = (p * p).sum(dim=dims) + (t * t).sum(dim=dims)
        else:  # (N, C) input without spatial dims, batch=False: one value per element
            inter = p * t
            denom = p * p + t * t
        dice = (2.0 * inter + self.eps) / (denom + self.eps)
        return (1.0 - dice).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}, from_logits={self.from_logits}, batch={self.batch}"


class DiceBCELoss(nn.Module):
    """``dice_weight · SoftDiceLoss + bce_weight · BCEWithLogits`` on logits.

    Args:
        dice_weight: weight of the soft Dice term (>= 0).
        bce_weight: weight of the binary cross-entropy term (>= 0); the two weights
            must not both be 0.
        eps: ε of the soft Dice term (> 0).
        batch: ``batch`` option of the soft Dice term (see :class:`SoftDiceLoss`).
        pos_weight: optional weight of positive pixels in the BCE term (> 0), a
            number or a tensor broadcastable to ``pred`` (e.g. shape (C, 1, 1) for
            one weight per channel), as in ``F.binary_cross_entropy_with_logits``.

    Shapes:
        - pred: (N, C, *spatial) LOGITS, any float dtype.
        - target: same shape, values in {0, 1}, any float, bool or integer dtype.
        - output: scalar float32 tensor (>= 0).

    Both terms are computed in float32.
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        eps: float = 1e-6,
        batch: bool = False,
        pos_weight: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, w in (("dice_weight", dice_weight), ("bce_weight", bce_weight)):
            if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if dice_weight == 0 and bce_weight == 0:
            raise ValueError(
                f"dice_weight and bce_weight must not both be 0, got dice_weight={dice_weight!r}, "
                f"bce_weight={bce_weight!r}"
            )
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = SoftDiceLoss(eps=eps, from_logits=True, batch=batch)
        if pos_weight is not None:
            pw = torch.as_tensor(pos_weight, dtype=torch.float32)
            if not torch.isfinite(pw).all() or (pw <= 0).any():
                raise ValueError(f"pos_weight must be finite and > 0, got {pos_weight!r}")
            self.register_buffer("pos_weight", pw, persistent=False)
        else:
            self.pos_weight = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the weighted Dice + BCE loss (float32 scalar) of logits ``pred``."""
        _check_same_shape(pred, target)
        logits = pred.float()
        t = target.float()
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, t)
        if self.bce_weight:
            bce = F.binary_cross_entropy_with_logits(logits, t, pos_weight=self.pos_weight)
            loss = loss + self.bce_weight * bce
        return loss

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, bce_weight={self.bce_weight}"


class DiceCELoss(nn.Module):
    """Multi-class ``dice_weight · soft Dice + ce_weight · cross-entropy`` on softmax logits.

    The soft Dice term is the spec formula per foreground class,
    ``1 - (2·Σ(p_k·t_k) + ε) / (Σp_k² + Σt_k² + ε)`` with ``p = softmax(logits)`` and ``t`` the
    one-hot target, averaged over the foreground classes k = 1..K-1 (and over images unless
    ``batch``); the background class enters only through the cross-entropy.

    Args:
        dice_weight, ce_weight: weights (>= 0, not both 0).
        eps: ε of the Dice term (> 0).
        batch: sum the Dice over the batch too, one Dice per class (see :class:`SoftDiceLoss`).

    Shapes:
        - pred: (N, K, *spatial) LOGITS, K >= 2, any float dtype.
        - target: (N, *spatial) int64 class indices in [0, K).
        - output: scalar float32 tensor (>= 0).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, eps: float = 1e-6,
                 batch: bool = False) -> None:
        super().__init__()
        for name, w in (("dice_weight", dice_weight), ("ce_weight", ce_weight)):
            if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("dice_weight and ce_weight must not both be 0")
        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.dice = SoftDiceLoss(eps=eps, from_logits=False, batch=batch)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the weighted Dice + cross-entropy loss (float32 scalar) of logits ``pred``."""
        if pred.ndim < 3 or pred.shape[1] < 2 or target.shape != pred.shape[:1] + pred.shape[2:]:
            raise ValueError(f"pred must be (N, K>=2, ...) logits and target (N, ...) class indices, got pred "
                             f"{tuple(pred.shape)} and target {tuple(target.shape)}")
        logits = pred.float()
        target = target.long()
        loss = logits.new_zeros(())
        if self.dice_weight:
            probs = torch.softmax(logits, 1)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
            loss = loss + self.dice_weight * self.dice(probs[:, 1:], onehot[:, 1:])
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, target)
        return loss

    def extra_repr(self) -> str:
        return f"dice_weight={self.dice_weight}, ce_weight={self.ce_weight}"


class DeepSupervisionLoss(nn.Module):
    """A loss over the outputs of a deeply supervised model: ``Σ_i w_i · loss(out_i, target_i)``.

    nnU-Net's deep supervision: output i (0 = full resolution, then coarser ones) is scored against the target
    resized to its size by nearest neighbour (``nearest-exact``: the pixel at each block's centre), with weights
    ``w_i ∝ 2**-i`` normalised to sum to 1 (``weights`` overrides them: one per output, >= 0, not all 0; they
    are normalised too). A single tensor (a model in eval mode, or without auxiliary heads) is scored as
    ``loss(out, target)`` unchanged.

    Shapes:
        - pred: (N, C, H, W) logits, or a list of them at (N, C, H_i, W_i), H_i <= H (the first the full size).
        - target: what ``loss`` takes at full size: (N, C, H, W) float in [0, 1] (binary, regions) or
          (N, H, W) int64 class indices.
        - output: scalar float32 tensor.
    """

    def __init__(self, loss: nn.Module, weights: tuple[float, ...] | None = None) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise ValueError(f"loss must be an nn.Module, got {type(loss).__name__}")
        if weights is not None:
            weights = tuple(weights)
            if not weights or any(isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(w) or w < 0
                                  for w in weights) or not sum(weights) > 0:
                raise ValueError(f"weights must be finite numbers >= 0, not all 0, got {weights!r}")
        self.loss, self.weights = loss, weights

    def forward(self, pred: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Return the weighted loss (float32 scalar) of ``pred`` (one tensor or a list of outputs)."""
        if isinstance(pred, torch.Tensor):
            return self.loss(pred, target)
        weights = self.weights or tuple(2.0 ** -i for i in range(len(pred)))
        if len(weights) != len(pred):
            raise ValueError(f"{len(weights)} weights for {len(pred)} outputs")
        total = sum(weights)
        loss = pred[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, pred):
            if w:
                loss = loss + (w / total) * self.loss(out, _resize_target(target, out.shape[-2:]))
        return loss

    def extra_repr(self) -> str:
        return f"weights={self.weights or '2**-i'}"


def _resize_target(target: torch.Tensor, size) -> torch.Tensor:
    """``target`` (N, C, H, W) float or (N, H, W) class indices, resized to ``size`` (h, w) by nearest-exact."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    grid = target.unsqueeze(1) if target.ndim == 3 else target
    out = F.interpolate(grid.float(), size=tuple(size), mode="nearest-exact").to(target.dtype)
    return out.squeeze(1) if target.ndim == 3 else out


def segmentation_loss(kind: str, loss: str = "dice", bce_weight: float = 1.0,
                      batch_dice: bool = False, deep_supervision: bool = False) -> nn.Module:
    """The training loss of a target kind (see :mod:`toolkit.targets`).

    kind "binary" or "regions" (sigmoid outputs): ``loss="dice"`` → :class:`SoftDiceLoss`,
    ``"dice_bce"`` → :class:`DiceBCELoss` with ``bce_weight``. kind "classes" (softmax):
    :class:`DiceCELoss`, with the cross-entropy weighted ``bce_weight`` for ``"dice_bce"`` and
    ``0.1 * bce_weight`` for ``"dice"`` (a little CE keeps the background class trained).

    Binary: the spec's per-image soft Dice, or with ``batch_dice`` the same formula summed over the whole
    batch (one Dice per batch: patches without tumour then pay for their false positives through the shared
    denominator, where per image their Dice is ~0 whatever they predict). Classes and regions: batch Dice (one
    Dice per class or region over the whole batch, as nnU-Net's ``batch_dice``): per image, every class or region
    absent from a slice scores a loss near 1 for any non-zero probability, which on slices holding
    one tumour type out of three pushed a classes model to predict background everywhere
    (docs/volumes.md). ``deep_supervision``: the loss wrapped in :class:`DeepSupervisionLoss`.
    """
    if _check_bool("deep_supervision", deep_supervision):
        return DeepSupervisionLoss(segmentation_loss(kind, loss, bce_weight, batch_dice))
    if loss not in ("dice", "dice_bce"):
        raise ValueError(f"loss must be dice or dice_bce, got {loss!r}")
    if kind == "classes":
        return DiceCELoss(ce_weight=bce_weight if loss == "dice_bce" else 0.1 * bce_weight, batch=True)
    if kind not in ("binary", "regions"):
        raise ValueError(f"kind must be binary, classes or regions, got {kind!r}")
    batch = kind == "regions" or _check_bool("batch_dice", batch_dice)
    return SoftDiceLoss(batch=batch) if loss == "dice" else DiceBCELoss(bce_weight=bce_weight, batch=batch)
