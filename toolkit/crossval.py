"""K-fold cross-validation of the brain-MRI recipe: train every fold, score out-of-fold, choose post-processing.

``runs/<name>/fold<k>/`` holds fold k's run (validation = fold k's patients). When every fold is
trained, each fold's ``best.pth`` predicts its own validation slices: together these out-of-fold
predictions cover every slice once, by a model that never saw its patient. The post-processing is
chosen on them (``runs/<name>/postprocess.json``; on volumes the component rule is 3D, per patient) and
``runs/<name>/cv.json`` holds the per-fold and out-of-fold scores (per image, pooled, per patient, per
tumour type), before and after it. The CV folder then works as ``toolkit evaluate|predict --weights
runs/<name>``: the folds' ensemble. Optionally (:func:`train_final`) ``runs/<name>/all/`` (and ``all1`` …) then
trains a model on every patient the folds covered (nnU-Net's ``all`` fold) that takes the post-processing chosen
out of fold.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .checkpoint import save_json
from .config_file import given_settings
from .compare import given_flags, has_trained, split_args, started_with, train_run
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

__all__ = ["train_folds", "train_final", "check_final", "final_name", "final_runs", "share_postprocess",
           "out_of_fold", "cv_lines", "run_monitor", "CV_FILE", "CV_ARGS_FILE", "FINAL_RUN"]

CV_FILE = "cv.json"
CV_ARGS_FILE = "cv_args.json"  # the --folds and recipe arguments a CV folder was started with
RECIPE = "recipes/brain_mri.py"
FINAL_RUN = "all"  # the run on every patient beside the folds (nnU-Net's name for it)


def train_folds(folds: int, argv: Sequence[str], root: Path, recipe: str = RECIPE) -> list[Path]:
    """Train fold 0..folds-1 in turn into ``root/fold<k>``: finished folds are kept, interrupted ones resumed.

    ``root/cv_args.json`` records ``folds`` and the recipe arguments ``argv``; once a fold has trained (a state or
    a summary), a start with others raises ValueError naming both (its folds would otherwise be kept from other
    settings)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {folds}")
    clash = given_flags(argv, {"--folds", "--fold", "--run-name", "--output-dir", "--resume"})
    if clash:
        raise ValueError(f"{sorted(clash)} are set by the cross-validation itself; leave them out of ARGS")
    trained = any(has_trained(d) for d in root.glob("fold*") if d.is_dir())
    started = started_with(root / CV_ARGS_FILE, {"folds": folds, "args": list(argv)}, trained)
    if started is not None:
        raise ValueError(f"{root} was started with --folds {started.get('folds')} and the recipe arguments "
                         f"{shlex.join(started.get('args', []))!r}, now --folds {folds} and {shlex.join(argv)!r}; "
                         "continue it with those, or give the new ones another --name")
    return [train_run(recipe, [*argv, "--folds", str(folds), "--fold", str(k), "--output-dir", str(root)],
                      f"fold{k}", root) for k in range(folds)]


def train_final(argv: Sequence[str], root: Path, recipe: str = RECIPE, count: int = 1) -> list[Path]:
    """After the folds: ``count`` models of every patient the folds covered (nnU-Net's ``all`` fold): ``root/all``,
    then ``root/all1`` … with ``--seed`` the folds' seed + 1, + 2 … (another initialisation and augmentation draw).

    The recipe arguments ``argv`` of the folds with ``--val-fraction 0`` (any ``--val-fraction`` in them dropped: the
    folds do not use it; ``--patience`` too: it counts validations): no validation, so ``best.pth`` holds the last
    epoch's weights and no post-processing is chosen in the run; a ``--test-fraction`` hold-out stays out, the same
    patients as in the folds. Then :func:`share_postprocess` gives each the post-processing chosen out of fold. Kept
    when finished, resumed when interrupted, like a fold. Raises ValueError for ``count`` < 1, or ``count`` > 1 with
    arguments whose data the seed draws (:func:`check_final`). Returns the run folders."""
    check_final(argv, count)
    dropped, rest = split_args(list(argv), {"val-fraction", "patience"})
    if given_flags(dropped, {"--patience"}):
        print(f"{FINAL_RUN}: --patience left out (it counts validations; the run of every patient has none)", flush=True)
    base = [*rest, "--val-fraction", "0", "--output-dir", str(root)]
    runs = [train_run(recipe, base, final_name(0), root)]
    if count > 1:  # the others: the folds' seed (as the run read it, default included) + k
        seed = int(json.loads((root / "fold0" / "config.json").read_text())["seed"])
        unseeded = split_args(base, {"seed"})[1]
        runs += [train_run(recipe, [*unseeded, "--seed", str(seed + k)], final_name(k), root) for k in range(1, count)]
    share_postprocess(root)
    return runs


def final_name(k: int) -> str:
    """The folder of the k-th model of every patient: ``all``, ``all1``, ``all2`` …"""
    return FINAL_RUN if k == 0 else f"{FINAL_RUN}{k}"


def check_final(argv: Sequence[str], count: int) -> None:
    """ValueError unless ``count`` models of every patient can train from the recipe arguments ``argv`` (with the
    settings of a ``--config`` file in them): count >= 1; for more than one, their ``--seed`` differs, and the seed
    also draws a ``--test-fraction`` hold-out (> 0), a ``--label-fraction`` subset (< 1) and synthetic data (no
    ``--data-dir``), so those would give each model other data."""
    if count < 1:
        raise ValueError(f"--final takes a number of models >= 1, got {count}")
    if count == 1:
        return
    settings = given_settings(argv)
    drawn = [f"--{key.replace('_', '-')} {settings[key]}" for key, unseeded in (("test_fraction", 0), ("label_fraction", 1))
             if key in settings and not _number_is(settings[key], unseeded)]
    if drawn or not settings.get("data_dir", "").strip():
        what = " and ".join(drawn) if drawn else "synthetic data (no --data-dir)"
        raise ValueError(f"--final {count} trains its models with other seeds, and the seed also draws {what}: each "
                         f"model would train on other slices; leave that out, or use --final 1")


def _number_is(word: str, value: float) -> bool:
    """Whether ``word`` reads as the number ``value``; False for a word that is not a number (the recipe names it
    when it runs)."""
    try:
        return float(word) == value
    except ValueError:
        return False


def final_runs(root: Path) -> list[Path]:
    """The finished models of every patient of the CV folder ``root``: ``all``, ``all1`` … in order."""
    found, k = [], 0
    while (root / final_name(k) / "summary.json").is_file():
        found.append(root / final_name(k))
        k += 1
    return found


def share_postprocess(root: Path) -> list[Path]:
    """Copy the CV's out-of-fold ``postprocess.json`` into each finished model of every patient (atomically), so
    that ``evaluate``/``predict --weights root/all`` apply it; each copy names its source in ``copied_from``.
    Returns the files written (none when there is no such model or no out-of-fold choice yet)."""
    source = root / POSTPROCESS_FILE
    if not source.is_file():
        return []
    data = json.loads(source.read_text())
    return [save_json(run / POSTPROCESS_FILE, {**data, "copied_from": f"{source}: chosen on the folds' out-of-fold "
                                                                        f"predictions, applied to the model of {run}"})
            for run in final_runs(root)]


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
