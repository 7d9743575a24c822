"""Scoring segmentation on a data set: probabilities of a model or an ensemble, per-image records, summaries.

Used by ``toolkit evaluate``, by cross-validation (out-of-fold predictions) and by the
recipe's choice of post-processing on its validation split. Summaries give Dice/IoU per
image (mean over slices), pooled over all pixels, per patient (each patient's slices pooled,
then the mean over patients) and per tumour type where the metadata names one.

Empty masks: a slice (or patient) whose true and predicted masks are both empty scores
Dice = IoU = 1; one with only one of them empty scores 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .callbacks import ChooseOnRun
from .checkpoint import save_json
from .data.batch_transforms import standardize_per_image
from .data.mri.context import slice_key
from .ensemble import SegmentationEnsemble, slice_disagreement
from .metrics import SegmentationMetrics
from .models.utils import init_from
from .postprocess import POSTPROCESS_FILE, SCALE_TTA, PostProcess, search_postprocess
from .volume_metrics import are_volumes

__all__ = ["Predictions", "collect_probs", "image_records", "slice_meta", "summarise", "disagreement_report",
           "EMPTY_RULE", "GROUP_COLUMNS", "choose_postprocess", "ChoosePostprocess", "describe_steps"]

EMPTY_RULE = ("a slice whose true mask is empty scores Dice = IoU = 1 when the prediction is empty too, "
              "0 when it marks any pixel; global scores pool the pixels of all slices; per-patient scores pool "
              "each patient's slices, then average over patients")
GROUP_COLUMNS = ("tumour_type",)  # metadata columns whose values get a Dice of their own
LOW_SHARE = 0.1  # disagreement report: the share of slices called "lowest Dice" and "most disputed"


@dataclass
class Predictions:
    """Probabilities of every slice of a data set, in the data set's order.

    probs: (N, S, S) float32 in [0, 1], no test-time augmentation; flipped: (N, S, S) the same
    averaged with the horizontally flipped prediction (None when not computed); targets:
    (N, S, S) uint8 {0, 1}; disagreement: (N,) float in [0, 1] per slice between ensemble
    members (None for a single model); scales: the scale-TTA factors of ``scaled`` / ``scaled_flipped``,
    (N, S, S) the probabilities with the scan also predicted at each of them, without / with flips (None
    when not computed; :meth:`~toolkit.ensemble.SegmentationEnsemble.member_probs`).
    """

    probs: np.ndarray
    flipped: np.ndarray | None
    targets: np.ndarray
    disagreement: np.ndarray | None = None
    scales: tuple[float, ...] = ()
    scaled: np.ndarray | None = None
    scaled_flipped: np.ndarray | None = None

    def chosen(self, post: PostProcess) -> np.ndarray:
        """The probabilities ``post`` applies to: with or without flip and scale TTA."""
        if post.scales and tuple(post.scales) != tuple(self.scales):
            raise ValueError(f"scale TTA x{list(post.scales)} chosen but the probabilities were computed at "
                             f"scales {list(self.scales)}")
        chosen = ((self.scaled_flipped if post.flips else self.scaled) if post.scales else
                  self.flipped if post.flips else self.probs)
        if chosen is None:
            raise ValueError(f"{post.tta()} chosen but its probabilities were not computed")
        return chosen


@torch.no_grad()
def collect_probs(ensemble: SegmentationEnsemble, dataset, flips: bool = True, threshold: float = 0.5,
                  batch_size: int = 16, scales: Sequence[float] = ()) -> Predictions:
    """Run ``ensemble`` over ``dataset`` (uint8 image (C, S, S), uint8 mask (1, S, S)) in order.

    ``flips``: also compute the flip-TTA probabilities; ``scales``: also those of scale TTA at these factors
    (with flips too when ``flips``). Per-slice disagreement (2+ members) is taken at ``threshold`` on the
    probabilities with the most test-time augmentation computed.
    """
    if len(dataset) == 0:
        raise ValueError("the data set to score holds no slice")
    if ensemble.target.kind != "binary":
        raise ValueError(f"these scores are for binary tumour masks; the run predicts {ensemble.target.kind} "
                         f"({', '.join(ensemble.target.names)})")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ensemble.eval()
    out, targets, disputed = {"probs": [], "flipped": [], "scaled": [], "scaled_flipped": []}, [], []
    for images, masks in loader:
        x = ensemble.preprocess(images)
        plain = [ensemble.view_probs(x, s) for s in (1.0, *scales)]  # each (M, N, 1, S, S)
        both = [0.5 * (p + ensemble.view_probs(x, s, flip=True)) for p, s in zip(plain, (1.0, *scales))] \
            if flips else []
        views = {"probs": plain[0], "flipped": both[0] if flips else None,
                 "scaled": torch.stack(plain).mean(0) if scales else None,
                 "scaled_flipped": torch.stack(both).mean(0) if scales and flips else None}
        for key, members in views.items():
            if members is not None:
                out[key].append(members.mean(0)[:, 0].numpy())
        targets.append((masks[:, 0] > 0).numpy().astype(np.uint8))
        if len(ensemble.members) > 1:
            richest = [m for m in views.values() if m is not None][-1]
            disputed.append(slice_disagreement(richest, threshold).numpy())
    arrays = {key: np.concatenate(parts) if parts else None for key, parts in out.items()}
    return Predictions(arrays.pop("probs"), arrays.pop("flipped"), np.concatenate(targets),
                       np.concatenate(disputed) if disputed else None, tuple(scales), **arrays)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 1.0


def image_records(ids: Sequence[str], masks: np.ndarray, targets: np.ndarray,
                  meta: Sequence[dict] | None = None) -> list[dict]:
    """One record per slice: id, dice, iou, tp, fp, fn, true and predicted pixels, plus ``meta[i]`` (patient, type).

    masks, targets: (N, H, W) in {0, 1}. Counts and scores are :class:`~toolkit.metrics.SegmentationMetrics`'s.
    """
    metric = SegmentationMetrics()
    metric.update(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)),
                  torch.from_numpy(np.ascontiguousarray(targets, dtype=np.uint8)))
    s = metric.per_image_scores()
    out = []
    for k, i in enumerate(ids):
        a, b, c = int(s["tp"][k]), int(s["fp"][k]), int(s["fn"][k])
        out.append({"id": str(i), "dice": float(s["dice"][k]), "iou": float(s["iou"][k]),
                    "tp": a, "fp": b, "fn": c, "true_pixels": a + c, "pred_pixels": a + b,
                    **(meta[k] if meta is not None else {})})
    return out


def slice_meta(records: Sequence) -> list[dict]:
    """What :func:`image_records` adds per slice from MRI records: ``patient`` (when known; for volume slices the
    volume of :func:`~toolkit.data.mri.context.slice_key`, so two folders' same-named cases stay apart) and the
    metadata attributes (e.g. ``tumour_type``)."""
    return [{"patient": (slice_key(r) or (r.patient,))[0], **r.attrs} if r.patient else dict(r.attrs)
            for r in records]


def _pooled(records: Sequence[dict]) -> dict:
    tp, fp, fn = (sum(r[k] for r in records) for k in ("tp", "fp", "fn"))
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn)}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summarise(records: Sequence[dict]) -> dict:
    """Summary of :func:`image_records`: means per image, pooled, per patient and per group column.

    Returns ``{"dice", "iou", "dice_global", "iou_global", "dice_tumour", "empty_correct", "num_images",
    "tumour_images" (slices with tumour), of them "tumour_missed" (predicted empty) and "tumour_elsewhere" (every
    predicted pixel outside the tumour: Dice 0 although something was found),
    "per_patient": {"dice", "iou", "num_patients"} (when records carry a patient),
    "per_<column>": {value: {"dice", "num_images"}} for each of :data:`GROUP_COLUMNS` present}``.
    """
    pooled = _pooled(records)
    tumour = [r for r in records if r["true_pixels"] > 0]
    empty = [r for r in records if r["true_pixels"] == 0]
    out = {"dice": _mean([r["dice"] for r in records]), "iou": _mean([r["iou"] for r in records]),
           "dice_global": pooled["dice"], "iou_global": pooled["iou"],
           "dice_tumour": _mean([r["dice"] for r in tumour]),
           "empty_correct": _mean([float(r["pred_pixels"] == 0) for r in empty]), "num_images": len(records),
           "tumour_images": len(tumour), "tumour_missed": sum(r["pred_pixels"] == 0 for r in tumour),
           "tumour_elsewhere": sum(r["tp"] == 0 < r["pred_pixels"] for r in tumour)}
    by_patient = defaultdict(list)
    for r in records:
        if r.get("patient"):
            by_patient[r["patient"]].append(r)
    if by_patient:
        scores = [_pooled(rs) for rs in by_patient.values()]
        out["per_patient"] = {"dice": _mean([s["dice"] for s in scores]), "iou": _mean([s["iou"] for s in scores]),
                              "num_patients": len(scores)}
    for column in GROUP_COLUMNS:
        groups = defaultdict(list)
        for r in records:
            if r.get(column):
                groups[r[column]].append(r["dice"])
        if groups:
            out[f"per_{column}"] = {k: {"dice": _mean(v), "num_images": len(v)} for k, v in sorted(groups.items())}
    return out


def disagreement_report(records: Sequence[dict], disagreement: np.ndarray) -> dict:
    """Does ensemble disagreement flag the worst slices? ``disagreement``: (N,) per slice, records in the same order.

    Returns the Spearman rank correlation of disagreement with Dice (negative = disputed slices score
    lower; tied values, e.g. the many slices of Dice 0 or 1, take their mean rank), and the share of the
    :data:`LOW_SHARE` most disputed slices that are among the :data:`LOW_SHARE` lowest-Dice ones (with every slice
    tied with the last of them), beside the share chance would give (the share of all slices that are).
    """
    dice = np.array([r["dice"] for r in records], dtype=np.float64)
    n = len(dice)
    k = max(1, int(round(LOW_SHARE * n)))
    if n < 3:
        return {"num_images": n, "note": "too few slices to rank"}

    from scipy.stats import rankdata  # tied values share their mean rank (Spearman's definition)

    rd, ru = rankdata(dice), rankdata(disagreement)
    rho = float(np.corrcoef(rd, ru)[0, 1]) if rd.std() > 0 and ru.std() > 0 else float("nan")
    lowest = dice <= np.sort(dice)[k - 1]  # the k lowest, and every slice tied with the k-th (e.g. all Dice 0)
    disputed = np.argsort(-disagreement, kind="stable")[:k].tolist()
    hit = float(lowest[disputed].mean())
    return {"spearman_dice_vs_disagreement": rho, "top_share": LOW_SHARE, "slices_flagged": k,
            "flagged_among_lowest_dice": hit, "chance": float(lowest.mean()),
            "mean_dice_flagged": float(dice[disputed].mean()), "mean_dice_all": float(dice.mean())}


def describe_steps(steps: Sequence[dict]) -> str:
    """One line on what each post-processing part bought, from :func:`~toolkit.postprocess.search_postprocess`."""
    first, last = steps[0]["dice"], steps[-1]["dice"]
    parts = ", ".join(f"{s['step']} {'+' if s.get('kept') else 'not kept, '}{s['gain']:.4f}" for s in steps[1:])
    figure = "pooled Dice" if steps[0].get("figure") == "dice_global" else "per-image Dice"
    return f"{steps[-1]['choice']}: {figure} {first:.4f} -> {last:.4f} ({parts})"


def choose_postprocess(preds: Predictions, path, pooled: bool = False, components: bool = True,
                       threshold: float = 0.5, **info) -> tuple[PostProcess, list[dict]]:
    """Search the post-processing on held-out ``preds`` from the run's ``threshold`` (flip and scale TTA tried when
    their probabilities are in ``preds``; ``pooled``: for the pixel-pooled Dice instead of the mean per-image Dice; ``components=False``: no
    2D component rule; :func:`~toolkit.postprocess.search_postprocess`) and write
    it to ``path`` (``postprocess.json``: ``{"choice": {...}, "steps": [...], "num_images": N, **info}``);
    returns (choice, steps).
    """
    choice, steps = search_postprocess(preds.probs, preds.targets, preds.flipped, pooled=pooled,
                                       components=components, threshold=threshold, scaled_probs=preds.scaled,
                                       scaled_flipped_probs=preds.scaled_flipped, scales=preds.scales)
    save_json(path, {"choice": choice.to_dict(), "steps": steps, "num_images": len(preds.targets), **info})
    return choice, steps


class ChoosePostprocess(ChooseOnRun):
    """At the end of fit the main process picks the post-processing on the validation split with ``best.pth``
    and writes ``<run>/postprocess.json``, which ``toolkit evaluate`` and ``predict`` then apply.

    build_model: returns a fresh model of the run's architecture (its weights are replaced by ``best.pth``);
    val_data: the validation dataset (uint8 image (C, S, S), uint8 mask (1, S, S));
    preprocess: the run's uint8 → float input map (its objective's ``preprocess``);
    pooled: choose for the pixel-pooled Dice (a run that monitors ``dice_global``) instead of per-image Dice;
    threshold: the run's probability threshold in (0, 1), where the search starts;
    components: try the 2D component rules; None (default): unless the validation records are volumes (NIfTI
    cases, LGG patient folders), where :class:`~toolkit.volume_postprocess_run.ChooseVolumePostprocess` chooses
    3D ones per patient afterwards (on LGG validation patients the 2D rule dropped the small true tumour at
    the top and bottom of a volume that the 3D rule keeps, see docs/brain-mri.md).
    """

    def __init__(self, build_model, val_data, preprocess=standardize_per_image, pooled: bool = False,
                 components: bool | None = None, threshold: float = 0.5) -> None:
        self.build_model, self.val_data, self.preprocess, self.pooled = build_model, val_data, preprocess, pooled
        self.threshold = float(threshold)
        self.volumes = are_volumes(getattr(val_data, "records", []))
        self.components = not self.volumes if components is None else components
        self._kept: tuple[tuple, Predictions] | None = None  # volume data: for the 3D chooser that follows

    def take(self, best: Path) -> Predictions | None:
        """The validation probabilities (all TTA views) of the last :meth:`choose`, once, if it predicted with this
        ``best.pth`` as it is now (the same file, size and modification time); else None. The 3D chooser of volume data
        (:class:`~toolkit.volume_postprocess_run.ChooseVolumePostprocess`) takes them instead of predicting the
        validation patients a second time."""
        kept, self._kept = self._kept, None
        return kept[1] if kept is not None and kept[0] == _file_key(best) else None

    def choose(self, run_dir: Path, print_fn=print) -> None:
        """Choose with ``<run_dir>/best.pth`` and write ``<run_dir>/postprocess.json`` (nothing without
        ``best.pth`` or validation slices); ``toolkit postprocess`` calls it on a finished run."""
        best = run_dir / "best.pth"
        if not best.is_file() or len(self.val_data) == 0:
            return
        model = init_from(self.build_model(), best).eval()
        preds = collect_probs(SegmentationEnsemble([model], self.preprocess), self.val_data, flips=True,
                              scales=SCALE_TTA)
        self._kept = (_file_key(best), preds) if self.volumes else None
        _, steps = choose_postprocess(preds, run_dir / POSTPROCESS_FILE, pooled=self.pooled,
                                      components=self.components, threshold=self.threshold,
                                      chosen_on=f"validation split of {run_dir.name}")
        print_fn(f"post-processing chosen on {len(self.val_data)} validation slices: {describe_steps(steps)}")


def _file_key(path: Path) -> tuple:
    """(path, inode, size, modification time in ns): a weights file rewritten since (atomically: a new inode) gives
    another key."""
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns
