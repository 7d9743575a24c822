"""K-fold cross-validation of the brain-MRI recipe: score out-of-fold, choose post-processing (the folds and the
models of every patient are trained by :mod:`toolkit.cv_runs`).

``runs/<name>/fold<k>/`` holds fold k's run (validation = fold k's patients). When every fold is
trained, each fold's ``best.pth`` predicts its own validation slices: together these out-of-fold
predictions cover every slice once, by a model that never saw its patient. The post-processing is
chosen on them (``runs/<name>/postprocess.json``; on volumes the component rule is 3D, per patient) and
``runs/<name>/cv.json`` holds the per-fold and out-of-fold scores (per image, pooled, per patient, per
tumour type), before and after it. The CV folder then works as ``toolkit evaluate|predict --weights
runs/<name>``: the folds' ensemble. Optionally (:func:`toolkit.cv_runs.train_final`) ``runs/<name>/all/`` (and
``all1`` …) then trains a model on every patient the folds covered (nnU-Net's ``all`` fold) that takes the
post-processing chosen out of fold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import save_json
from .data.splits import load_split
from .inference import load_ensemble, run_dataset, run_slices, run_target_dataset, stored_target
from .postprocess import POSTPROCESS_FILE, SCALE_TTA, PostProcess
from .target_metrics import TargetMetrics
from .targets import TargetSpec
from .volume_eval import class_accuracy, pack_masks, predict_packed, unpack_masks, volume_scores
from .volume_metrics import are_volumes, json_safe
from .volume_postprocess_run import choose_and_store, report_lines, stored_volume_postprocess
from .seg_eval import (Predictions, choose_postprocess, collect_probs, describe_steps, image_records, slice_meta,
                       summarise)

__all__ = ["out_of_fold", "cv_lines", "run_monitor", "CV_FILE"]

CV_FILE = "cv.json"


def _fold_records(fold_dir: Path, cache: dict):
    cfg = json.loads((fold_dir / "config.json").read_text())
    split_file = fold_dir / "split.json"
    data_dir = json.loads(split_file.read_text())["data_dir"]
    if data_dir not in cache:  # the folds share their data: read the folders once
        cache[data_dir] = run_slices(data_dir, cfg)
    return load_split(split_file, cache[data_dir], names=["val"])["val"], cfg


def _check_disjoint(root: Path, ids: Sequence[str]) -> None:
    if len(set(ids)) != len(ids):
        raise ValueError(f"{root}: the folds' validation splits overlap; they were not made by one --folds run")


def run_monitor(fold_dir: Path) -> str:
    """The figure a finished run (a fold) monitored (its summary.json; "dice" for runs that predate the field)."""
    summary = fold_dir / "summary.json"
    if not summary.is_file():
        return "dice"
    return json.loads(summary.read_text()).get("monitor") or "dice"


def _join(folds: list[Predictions], key: str) -> np.ndarray:
    """The folds' ``key`` arrays ((N_k, S, S) each) joined in fold order, each fold's dropped once copied: the
    peak memory is the joined arrays plus one view's worth, not every view twice."""
    joined = np.concatenate([getattr(p, key) for p in folds])
    for p in folds:
        setattr(p, key, None)
    return joined


def out_of_fold(root: Path, fold_dirs: Sequence[Path]) -> dict:
    """Score every fold on its validation slices (at the folds' threshold: the figures each fold validated), choose
    the post-processing on all of them, write
    ``root/postprocess.json`` and ``root/cv.json``; returns the cv.json content. Binary runs: the 2D search
    (threshold, flips, components) and on volumes the 3D rule; classes/regions runs: :func:`_out_of_fold_targets`."""
    spec = TargetSpec.from_dict(stored_target(fold_dirs[0]))
    if spec.kind != "binary":
        return _out_of_fold_targets(root, fold_dirs, spec)
    folds, ids, meta, per_fold, cache, scored = [], [], [], [], {}, []
    for k, fold_dir in enumerate(fold_dirs):
        records, cfg = _fold_records(fold_dir, cache)
        ensemble, _, _, _ = load_ensemble([fold_dir / "best.pth"])
        data = run_dataset(records, cfg)
        preds = collect_probs(ensemble, data, flips=True, scales=SCALE_TTA)
        fold_meta = slice_meta(data.records)  # the slices read: --skip-bad-files may have left some out
        bare = PostProcess(threshold=float(cfg.get("threshold", 0.5)))  # the fold's own threshold, as it validated
        plain = summarise(image_records(data.ids, bare.binarize(preds.probs), preds.targets, fold_meta))
        per_fold.append({"fold": k, "run": fold_dir.name, "num_images": len(data), **plain})
        folds.append(preds)
        ids += data.ids
        meta += fold_meta
        scored += data.records
    oof = Predictions(scales=folds[0].scales, **{key: _join(folds, key) for key in
                                                 ("probs", "flipped", "targets", "scaled", "scaled_flipped")})
    probs, targets = oof.probs, oof.targets
    del folds  # one copy of the out-of-fold probabilities in memory (4 arrays of N x S x S float32)
    _check_disjoint(root, ids)
    pooled = run_monitor(fold_dirs[0]).endswith("_global")  # the figure the folds picked their best.pth by
    volumes = are_volumes(scored)  # then the component rule is 3D, per patient, as in each fold's own run
    chosen_on = f"out-of-fold predictions of {len(fold_dirs)} folds"
    choice, steps = choose_postprocess(oof, root / POSTPROCESS_FILE, pooled=pooled,
                                       components=not volumes, threshold=bare.threshold, chosen_on=chosen_on)
    source = oof.chosen(choice)
    result = {
        "folds": len(fold_dirs), "target": spec.to_dict(), "num_images": len(ids), "per_fold": per_fold,
        "out_of_fold": summarise(image_records(ids, bare.binarize(probs), targets, meta)),
        "out_of_fold_postprocessed": summarise(image_records(ids, choice.binarize(source), targets, meta)),
        "postprocess": {"choice": choice.to_dict(), "steps": steps, "summary": describe_steps(steps),
                        "file": str(root / POSTPROCESS_FILE)},
        "note": "out-of-fold: every slice is scored once, by the fold model that did not train on its patient; "
                "the post-processing is chosen on these same predictions, so its figure is slightly optimistic",
    }
    if volumes:
        packed = pack_masks(choice.binarize(source)[:, None], targets[:, None])
        report = choose_and_store(root / POSTPROCESS_FILE, TargetSpec.binary(), scored, packed, int(cfg["image_size"]),
                                  choice, chosen_on)
        result["volume_postprocess"] = {"patients": len(report["patients"]), "channels": report["channels"],
                                        "summary": report_lines(report)}
    save_json(root / CV_FILE, json_safe(result))  # NaN (undefined) as null
    return result


def _out_of_fold_targets(root: Path, fold_dirs: Sequence[Path], spec: TargetSpec) -> dict:
    """Classes/regions folds: each fold's best.pth predicts its validation slices at the run's threshold (no 2D
    search: as a single classes/regions run); slice and per-patient scores per fold and out of fold, the type
    accuracy for ``class_column`` classes; on volumes the 3D rules are chosen on the out-of-fold predictions
    (``root/postprocess.json``, the identity 2D choice at the threshold) and the per-patient scores after them
    added. Writes ``root/cv.json``; returns its content."""
    slices, packed, scored, per_fold, cache = TargetMetrics(spec), [], [], [], {}
    pred_px, true_px = [], []
    for k, fold_dir in enumerate(fold_dirs):
        records, cfg = _fold_records(fold_dir, cache)
        ensemble = load_ensemble([fold_dir / "best.pth"])[0]
        data = run_target_dataset(records, cfg, spec)
        fold_packed, fold_pred, fold_true, fold_slices = predict_packed(ensemble, data, float(cfg["threshold"]))
        slices.update_masks(*(torch.from_numpy(m) for m in unpack_masks(fold_packed, len(spec.names))))
        size = int(cfg["image_size"])
        per_fold.append({"fold": k, "run": fold_dir.name, "num_images": len(data.records), "slices": fold_slices,
                         "per_patient": volume_scores(data.records, fold_packed, spec.names, size)["per_patient"]})
        packed.append(fold_packed), pred_px.append(fold_pred), true_px.append(fold_true)
        scored += data.records
    _check_disjoint(root, [r.id for r in scored])
    packed, threshold, column = np.concatenate(packed), float(cfg["threshold"]), cfg.get("class_column") or ""
    plain = volume_scores(scored, packed, spec.names, size)
    oof = {"slices": json_safe(slices.compute()), "per_patient": plain["per_patient"], "spacing": plain["spacing"],
           "units": plain["units"]}
    if column and spec.kind == "classes":
        oof["class_accuracy"] = class_accuracy(np.concatenate(pred_px), np.concatenate(true_px),
                                               [r.attrs.get(column) for r in scored], spec.names)
    result = {"folds": len(fold_dirs), "target": spec.to_dict(), "num_images": len(scored), "per_fold": per_fold,
              "out_of_fold": oof,
              "postprocess": {"summary": f"threshold {threshold:g}, no flips, no 2D component rule "
                                         f"({spec.kind} target: the 2D search is for binary runs)"},
              "note": "out-of-fold: every slice is scored once, by the fold model that did not train on its patient"}
    if are_volumes(scored):
        post_file = root / POSTPROCESS_FILE
        report = choose_and_store(post_file, spec, scored, packed, size, PostProcess(threshold=threshold),
                                  f"out-of-fold predictions of {len(fold_dirs)} folds")
        vpost = stored_volume_postprocess(str(post_file), spec)[0]
        result["postprocess"]["file"] = str(post_file)
        result["out_of_fold_postprocessed"] = {
            "per_patient": volume_scores(scored, packed, spec.names, size, vpost)["per_patient"]}
        result["volume_postprocess"] = {"patients": len(report["patients"]), "channels": report["channels"],
                                        "summary": report_lines(report)}
    save_json(root / CV_FILE, json_safe(result))  # NaN (undefined) as null
    return result


def cv_lines(result: dict, root: Path | None = None) -> list[str]:
    """What a :func:`out_of_fold` result says, as lines to print: per fold, out of fold, post-processing; with the
    CV folder ``root``, last the files written."""
    def dice(scores: dict | None, key: str = "dice") -> str:  # None: undefined (NaN before cv.json was written)
        value = (scores or {}).get(key)
        return "n/a" if value is None else f"{value:.4f}"

    n, lines = result["num_images"], []
    if TargetSpec.from_dict(result.get("target")).kind == "binary":  # cv.json before 2 Dec 2026: no "target"
        post = result["out_of_fold_postprocessed"]
        lines += [f"fold {f['fold']}: {f['num_images']} validation slices, per-image Dice {dice(f)}, per patient "
                  f"{dice(f.get('per_patient'))}" for f in result["per_fold"]]
        lines.append(f"out-of-fold ({n} slices): per-image Dice {dice(result['out_of_fold'])}, pooled "
                     f"{dice(result['out_of_fold'], 'dice_global')}; post-processed: per-image {dice(post)}, pooled "
                     f"{dice(post, 'dice_global')} ({result['postprocess']['summary']})")
        lines += [f"  {value}: Dice {s['dice']:.4f} ({s['num_images']} slices)"
                  for value, s in post.get("per_tumour_type", {}).items()]
    else:
        names = result["target"]["names"]
        lines += [f"fold {f['fold']}: {f['num_images']} validation slices, slice Dice {dice(f['slices'])}, per "
                  f"patient {dice(f['per_patient']['mean'])}" for f in result["per_fold"]]
        oof = result["out_of_fold"]
        lines.append(f"out-of-fold ({n} slices, {result['postprocess']['summary']}): slice Dice "
                     f"{dice(oof['slices'])}; per patient " + ", ".join(
                         f"{name} {dice(oof['per_patient'][name])}" for name in [*names, "mean"]))
        after = result.get("out_of_fold_postprocessed")
        if after:
            lines.append("  after the 3D post-processing, per patient: " + ", ".join(
                f"{name} {dice(after['per_patient'][name])}" for name in [*names, "mean"]))
        acc = oof.get("class_accuracy")
        if acc:
            lines.append(f"  class accuracy {acc['accuracy']:.4f} ({acc['correct']}/{acc['num_slices']} tumour "
                         "slices)")
    lines += [f"  3D {line}" for line in result.get("volume_postprocess", {}).get("summary", [])]
    if root is not None:
        post = result["postprocess"].get("file")
        lines.append(f"wrote {Path(root) / CV_FILE}" + (f" and {post}" if post else ""))
    return lines
