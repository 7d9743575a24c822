"""Ensembles of segmentation runs: the folds of a cross-validation, or several ``--weights``.

:func:`resolve_weights` turns what a user passes (a ``best.pth``, a run folder, a
cross-validation folder holding ``fold*/best.pth``) into weight files and the
post-processing stored with them; :class:`SegmentationEnsemble` averages the members'
tumour probabilities and measures where they disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .data.batch_transforms import standardize_per_image
from .postprocess import POSTPROCESS_FILE, scaled_side
from .targets import TargetSpec

__all__ = ["SegmentationEnsemble", "resolve_weights", "disagreement", "slice_disagreement", "scaled_side"]

def resolve_weights(paths: Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """Weight files of the members and the ``postprocess.json`` that applies to them (or None).

    Each path is a ``best.pth`` (its run folder's ``postprocess.json`` applies), a run folder
    (its ``best.pth``), or a cross-validation folder (every ``fold*/best.pth``, and the
    ``postprocess.json`` chosen on its out-of-fold predictions). With several paths the
    post-processing of the first one that has any is used. Raises FileNotFoundError naming
    the path that holds no weights, ValueError for a cross-validation whose folds have not all finished or a
    model given twice.
    """
    files, post = [], None
    for raw in paths:
        path = Path(raw)
        if path.is_file() or path.suffix in (".pth", ".safetensors"):  # a missing file is named by the loader
            found, root = [path], path.parent
        elif (path / "best.pth").is_file():
            found, root = [path / "best.pth"], path
        elif path.is_dir():
            _refuse_unfinished_cv(path)
            found, root = sorted(path.glob("fold*/best.pth")), path
        else:
            found, root = [], path
        if not found:
            raise FileNotFoundError(f"--weights {path}: no best.pth there (expected a best.pth, a run folder or a "
                                    f"cross-validation folder with fold*/best.pth)")
        twice = [f for f in found if f.resolve() in {g.resolve() for g in files}]
        if twice:  # it would count twice in the average
            raise ValueError(f"--weights {path}: {twice[0]} is given twice (each model is one member of the "
                             f"ensemble's average)")
        files += found
        if post is None and (root / POSTPROCESS_FILE).is_file():
            post = root / POSTPROCESS_FILE
    return files, post


def _refuse_unfinished_cv(root: Path) -> None:
    """ValueError when ``root`` is a cross-validation started by ``make brain-mri-cv`` (its ``cv_args.json``) whose
    folds have not all finished (``fold<k>/summary.json``): a killed CV's last fold holds the ``best.pth`` of a run
    cut short, and the CV's post-processing is chosen only once every fold has trained."""
    import json

    from .cv_runs import CV_ARGS_FILE  # here, not at the top: cv_runs loads the CV driver (compare) with it

    if not (root / CV_ARGS_FILE).is_file():
        return  # folds gathered by hand: taken as they are
    try:
        folds = int(json.loads((root / CV_ARGS_FILE).read_text())["folds"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{root / CV_ARGS_FILE}: not readable as the record of a cross-validation ({err})") from None
    unfinished = [f"fold{k}" for k in range(folds) if not (root / f"fold{k}" / "summary.json").is_file()]
    if unfinished:
        raise ValueError(f"--weights {root}: this {folds}-fold cross-validation has not finished "
                         f"({', '.join(unfinished)} without summary.json: not trained, or stopped): run the same "
                         f"brain_mri_cv command again to finish it, or give the finished folds' best.pth")


def disagreement(member_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per-pixel disagreement of M members: (M, N, 1, H, W) probabilities → (N, 1, H, W) in [0, 1].

    With u the share of members whose probability reaches ``threshold``, the map is ``4·u·(1−u)``:
    0 where all agree, 1 where half say tumour and half do not.
    """
    u = (member_probs >= threshold).float().mean(0)
    return 4 * u * (1 - u)


def slice_disagreement(member_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """One score per slice in [0, 1]: the mean disagreement over the pixels any member calls tumour (0 if none).

    member_probs: (M, N, 1, H, W) probabilities. Returns (N,) float.
    """
    votes = member_probs >= threshold
    union = votes.any(0).flatten(1).float()
    total = (disagreement(member_probs, threshold).flatten(1) * union).sum(1)
    return total / union.sum(1).clamp_min(1)


class SegmentationEnsemble(torch.nn.Module):
    """Averages the probabilities of models that take the same input and predict the same target.

    members: models mapping (N, C, H, W) float scans to (N, K, H, W) logits, K = ``target.out_channels``
    (1 for binary). One member is exactly that model: its probabilities are unchanged.
    preprocess: uint8 (N, C, H, W) scans → the members' float input (the runs' own; default per-image
    standardisation; see :func:`~toolkit.data.batch_transforms.input_preprocess`).
    target: the members' :class:`~toolkit.targets.TargetSpec` (default binary): how logits become
    probabilities (sigmoid, or softmax over classes).
    """

    def __init__(self, members: Sequence[torch.nn.Module], preprocess=standardize_per_image,
                 target: TargetSpec | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = torch.nn.ModuleList(members)
        self.preprocess = preprocess
        self.target = target if target is not None else TargetSpec.binary()

    @torch.no_grad()
    def view_probs(self, x: torch.Tensor, scale: float = 1.0, flip: bool = False) -> torch.Tensor:
        """(N, C, H, W) float scans → (M, N, K, H, W) probabilities in [0, 1] of each member for one view of them:
        resized by ``scale`` (bilinear, sides :func:`scaled_side`) and/or flipped left-right, the probabilities
        mapped back to the scans' pixels (flipped back, resized back to H x W bilinearly)."""
        h, w = x.shape[-2:]
        size = (scaled_side(h, scale), scaled_side(w, scale)) if scale != 1.0 else (h, w)
        view = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
        out = []
        for model in self.members:
            probs = self.target.probs(model(view.flip(-1) if flip else view))
            probs = probs.flip(-1) if flip else probs
            out.append(F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
                       if size != (h, w) else probs)
        return torch.stack(out)

    @torch.no_grad()
    def member_probs(self, x: torch.Tensor, flips: bool = False, scales: Sequence[float] = ()) -> torch.Tensor:
        """(N, C, H, W) float scans → (M, N, K, H, W) probabilities in [0, 1], one slab per member.

        ``flips`` averages each member with its prediction of the horizontally flipped scan; ``scales`` (factors
        of the side, e.g. (0.8, 1.25)) adds the scan predicted at each scale (each with its flip when ``flips``)
        to the average (:meth:`view_probs`).
        """
        views = []
        for scale in (1.0, *scales):
            probs = self.view_probs(x, scale)
            views.append(0.5 * (probs + self.view_probs(x, scale, flip=True)) if flips else probs)
        return views[0] if len(views) == 1 else torch.stack(views).mean(0)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, flips: bool = False, scales: Sequence[float] = ()) -> torch.Tensor:
        """(N, C, H, W) float scans → (N, K, H, W) mean probabilities in [0, 1] (``flips``, ``scales``: see
        :meth:`member_probs`)."""
        return self.member_probs(x, flips, scales).mean(0)

