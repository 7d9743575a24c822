"""``toolkit evaluate`` and ``toolkit predict``: a segmentation run, several, or a cross-validation's folds
(an ensemble), with the post-processing stored in the run applied unless ``--postprocess none``;
``toolkit postprocess``: choose a finished run's post-processing again, as its fit end does today."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .checkpoint import json_safe, save_json
from .data.mri.channels import resolve_channels
from .data.mri.discover import given_folder
from .data.mri.folders import folder_tags, parse_data_dirs
from .data.mri.nifti import NIFTI_SOURCES
from .data.splits import load_split
from .inference import (load_ensemble, pick_postprocess, predict_probs, run_dataset, run_layout, run_slices,
                        trained_with_flips)
from .postprocess import PostProcess
from .seg_images import channel_names as _channel_names, input_files as _input_files, output_stem, per_volume
from .seg_images import read_input as _read_input, write_outputs
from .seg_eval import EMPTY_RULE, collect_probs, disagreement_report, image_records, slice_meta, summarise

__all__ = ["evaluate", "predict", "postprocess"]

SUMMARY_KEYS = ("dice", "iou", "dice_global", "iou_global", "dice_tumour", "empty_correct")


def predict(args: argparse.Namespace) -> int:
    """Masks and overlays at each image's own size, in the input folder's subfolders under ``--output``
    (:func:`~toolkit.seg_images.output_stem`); an ensemble also writes ``<name>_disagreement.png``, a
    classes run ``<name>_classes.png`` (:func:`~toolkit.seg_images.write_class_map`); a run on LGG patient
    folders applies its stored 3D rule to each patient's stacked slice masks
    (:func:`~toolkit.seg_images.per_volume`).
    NIfTI input (a volume, a case's channel files, a raw-layout or NIfTI folder) goes to
    :func:`~toolkit.volume_predict.predict_volumes`: ``<case>_seg.nii.gz`` and ``<case>_seg.png``."""
    ensemble, cfg, post_file, files = load_ensemble(args.weights)
    post, source = pick_postprocess(post_file, cfg, args.postprocess, args.threshold, args.flips, args.one_region,
                                    args.scale_tta)
    from .volume_predict import is_nifti_input, predict_volumes  # here: volume_predict imports this module

    if is_nifti_input(Path(args.input)):  # NIfTI volumes: a label volume and an overlay per case
        print(f"{len(files)} model(s); threshold {post.threshold:g}, {post.tta()} ({source})")
        return predict_volumes(ensemble, cfg, post, Path(args.input), Path(args.output), post_source=source,
                               layout=run_layout(files[0].parent))
    if int(cfg.get("context_slices", 0)):
        raise ValueError(f"{files[0]} was trained with context_slices {cfg['context_slices']} (2.5D: each slice with "
                         f"its neighbours), so it predicts volumes: give a .nii.gz case, a case's channel files or a "
                         f"raw-layout folder as --input (got {args.input}), or score LGG folders with toolkit evaluate")
    layout = run_layout(files[0].parent)
    if layout in NIFTI_SOURCES:  # z-scored per volume: a 2D image holds no volume to scale it by
        raise ValueError(f"{files[0]} was trained on NIfTI volumes ({layout} layout, intensities z-scored per "
                         f"volume), so it predicts volumes: give a .nii.gz case, a case's channel files, a "
                         f"raw-layout folder{' or a BraTS case folder' if layout == 'brats' else ''} as --input "
                         f"(got {args.input})")
    channels = resolve_channels(layout, cfg.get("channels") or cfg.get("in_channels", 1))
    in_channels, names = int(cfg.get("in_channels", 1)), _channel_names(layout, channels)
    out, size = Path(args.output), cfg["image_size"]
    print(f"{len(files)} model(s); post-processing: {post.describe()} ({source})")
    images = _input_files(Path(args.input), out)
    vpost, rule = _lgg_volume_rule(layout, ensemble.target, source)
    flip_trained = trained_with_flips(cfg)

    def predicted(path):
        image = _read_input(path, channels, in_channels, names)
        probs, dispute, maps = predict_probs(ensemble, image, size, flips=post.flips, threshold=post.threshold,
                                             flip_trained=flip_trained, scales=post.scales)
        return image, post.at_scale(probs.size / size**2).binarize(probs), dispute, maps

    for path, (image, mask, dispute, maps) in per_volume(images, predicted, vpost, size, rule=rule):
        stem = output_stem(path, Path(args.input), out)  # the input's subfolders kept
        told = write_outputs(stem, image, mask, maps, ensemble.target.to_dict(), dispute)
        print(f"{path}: {int(mask.sum())} tumour pixels of {mask.size}{told}")
    extra = " and disagreement maps (0 = all models agree, 255 = half against half)" if len(files) > 1 else ""
    print(f"wrote {len(images)} masks and overlays{extra} to {out}/")
    return 0


def _lgg_volume_rule(layout: str | None, target, post_source: str):
    """The stored 3D rule (:class:`~toolkit.volume_postprocess.VolumePostprocess`) that ``predict`` applies to the
    slices of each LGG patient folder, as ``evaluate`` does, and the line naming it; (None, "") for other
    layouts, other targets or none stored."""
    if layout != "lgg" or target.kind != "binary":
        return None, ""
    from .volume_postprocess_run import stored_volume_postprocess

    return stored_volume_postprocess(post_source, target)


def _records_to_score(args, cfg: dict, files: list[Path]):
    split_file = files[0].parent / "split.json"
    split = json.loads(split_file.read_text()) if split_file.is_file() else {}
    trained_on = split.get("data_dir") or cfg.get("data_dir") or cfg.get("synthetic_dir", "")
    data_dir = args.data_dir or trained_on
    if args.split is None:  # the run's test split of its own data; every slice of other data
        args.split = "test" if _folders(data_dir) == _folders(trained_on) else "all"
        if args.split == "all":
            print(f"--split all: {data_dir} is not the data the run trained on ({trained_on}), so every slice "
                  f"is scored (--split test scores its test ids there)")
    records = run_slices(data_dir, cfg)
    if args.split != "all":
        splits = load_split(split_file, records, names=[args.split]) if args.split in split else {}
        if args.split not in splits:
            raise ValueError(f"{split_file} has no {args.split!r} split; "
                             f"use --split all, or train with --test-fraction > 0 for a test split")
        records = splits[args.split]
        if not records:  # a run trained with --val-fraction 0 has no validation patients
            raise ValueError(f"{split_file}'s {args.split!r} split is empty (a run trained without validation: "
                             f"--val-fraction 0); score it with --data-dir on other patients and --split all")
        if args.split in ("val", "test"):  # --split train asks for the training slices: nothing to refuse
            _refuse_trained_on(records, files, args.split, str(data_dir))
    return records, data_dir


def _refuse_trained_on(records, files: list[Path], split: str, data_dir: str) -> None:
    """ValueError when a member of the ensemble trained on slices of the ``split`` read from the first member's
    split.json (the folds of a cross-validation validate on each other's training patients): its figures
    would be inflated. Slices are compared by data folder and id (:func:`_folder_ids`), so members trained on
    other folders whose ids clash are not refused."""
    scored = _folder_ids([r.id for r in records], data_dir)
    for f in files[1:]:
        split_file = f.parent / "split.json"
        info = json.loads(split_file.read_text()) if split_file.is_file() else {}
        trained = _folder_ids(info.get("train", []), info.get("data_dir") or data_dir)
        if scored & trained:
            raise ValueError(f"--split {split} is read from {files[0].parent / 'split.json'}, but {f} trained on "
                             f"{len(scored & trained)} of its {len(scored)} slices, so the ensemble would be scored "
                             f"on slices it learnt: use --split test or all on other patients, or the out-of-fold "
                             f"figures of a cross-validation (cv.json)")


def _folders(data_dir: str) -> set[Path]:
    """The resolved folders of ``data_dir`` ("A" or "A, B"; :func:`~toolkit.data.mri.discover.given_folder`); empty
    for none."""
    return {given_folder(d) for d in parse_data_dirs(data_dir)} if str(data_dir).strip() else set()


def _folder_ids(ids, data_dir: str) -> set[tuple[str, str]]:
    """(folder name, id in that folder) of each slice id of a run on ``data_dir`` ("A" or "A, B", as split.json
    stores it): with several folders the ids carry their folder's tag (:func:`~toolkit.data.mri.folders.folder_tags`),
    with one folder its name is added, so a run on A and a run on A, B meet and runs on A and C do not."""
    dirs = parse_data_dirs(data_dir) if str(data_dir).strip() else []
    if len(dirs) > 1:
        return {tuple(str(i).split("/", 1)) for i in ids}
    name = folder_tags([given_folder(dirs[0])])[0] if dirs else ""
    return {(name, str(i)) for i in ids}


def evaluate(args: argparse.Namespace) -> int:
    """Scores per image, pooled, per patient and per tumour type, with and without the post-processing."""
    ensemble, cfg, post_file, files = load_ensemble(args.weights)
    post, source = pick_postprocess(post_file, cfg, args.postprocess, args.threshold, args.flips, args.one_region,
                                    args.scale_tta)
    records, data_dir = _records_to_score(args, cfg, files)
    from . import volume_eval, volume_report  # classes/regions runs and volume data: per patient, per class/region
    if ensemble.target.kind != "binary":
        if args.one_region:  # it would be recorded as applied in the JSON, and not applied
            raise ValueError(f"--one-region: the 2D component rule is for binary runs; {files[0]} predicts "
                             f"{ensemble.target.kind} ({', '.join(ensemble.target.names)}), scored at its threshold "
                             f"(--threshold and --flips apply); leave --one-region out")
        return volume_report.evaluate_volumes(args, ensemble, cfg, post, source, files, records, data_dir)
    dataset = run_dataset(records, cfg)
    preds = collect_probs(ensemble, dataset, flips=post.flips, threshold=post.threshold, scales=post.scales)
    masks = post.binarize(preds.chosen(post))
    volumes = volume_eval.wants_volume_eval(ensemble.target, dataset.records)
    final, in_3d = volume_eval.volume_masks(source, dataset.records, masks) if volumes else (masks, False)
    scored = image_records(dataset.ids, final, preds.targets, slice_meta(dataset.records))  # after skipped files
    summary = summarise(scored)
    bare = PostProcess(threshold=float(cfg.get("threshold", 0.5)))  # the run's threshold, no TTA, all regions
    plain = summarise(image_records(dataset.ids, bare.binarize(preds.probs), preds.targets))
    result = {"weights": [str(f) for f in files], "data_dir": str(data_dir), "split": args.split,
              "postprocess": {**post.to_dict(), "from": source}, "threshold": post.threshold, "flips": post.flips,
              "one_region": post.largest_only, "resolution": cfg["image_size"], "empty_masks": EMPTY_RULE,
              "summary": summary, "without_postprocess": {k: plain[k] for k in SUMMARY_KEYS},
              "per_image": scored}
    if preds.disagreement is not None:
        for r, d in zip(scored, preds.disagreement):
            r["disagreement"] = float(d)
        result["disagreement"] = disagreement_report(scored, preds.disagreement)
    if volumes:  # binary runs on volumes: + per patient (the 3D rule applied there, its effect reported)
        volume_report.add_volumes(result, dataset.records, masks, preds.targets, cfg["image_size"])
    out = volume_report.eval_output(args)  # default: beside the weights (a run or CV folder, or a best.pth's folder)
    save_json(out, json_safe(result))  # NaN (undefined, e.g. no empty slice) as null
    print(f"{'id':>12} {'dice':>6} {'iou':>6} {'true px':>8} {'pred px':>8}")
    for r in sorted(scored, key=lambda r: r["dice"])[: args.show]:
        print(f"{r['id']:>12} {r['dice']:6.3f} {r['iou']:6.3f} {r['true_pixels']:8d} {r['pred_pixels']:8d}")
    print(f"{len(scored)} slices ({args.split} split of {data_dir}), worst {min(args.show, len(scored))} shown; "
          f"{len(files)} model(s); post-processing: {post.describe()} ({source})"
          + (f"; then per patient volume: {result['postprocess']['volume']}" if in_3d else ""))
    for key in SUMMARY_KEYS:
        print(f"  {key:<14} {summary[key]:.4f}   (without post-processing {plain[key]:.4f})")
    print(f"  {summary['tumour_images']} slices with tumour: {summary['tumour_missed']} predicted empty, "
          f"{summary['tumour_elsewhere']} with every predicted pixel outside the tumour (Dice 0)")
    if "per_patient" in summary:
        pp = summary["per_patient"]
        print(f"  per patient    dice {pp['dice']:.4f}, iou {pp['iou']:.4f} over {pp['num_patients']} patients")
    for value, s in summary.get("per_tumour_type", {}).items():
        print(f"  {value:<14} dice {s['dice']:.4f} ({s['num_images']} slices)")
    if "disagreement" in result and "flagged_among_lowest_dice" in result["disagreement"]:
        d = result["disagreement"]
        print(f"  disagreement   the {d['slices_flagged']} most disputed slices: {d['flagged_among_lowest_dice']:.0%} "
              f"among the lowest-Dice {d['top_share']:.0%} (chance {d['chance']:.0%}); Spearman with Dice "
              f"{d['spearman_dice_vs_disagreement']:.3f}")
    print(f"empty masks: {EMPTY_RULE}\nwrote {out}")
    return 0


def postprocess(args: argparse.Namespace) -> int:
    """Choose the post-processing of one finished run again on its validation split, with the rules of the
    code installed now (a run trained before a rule existed gets it: e.g. the 3D per-patient choice on LGG
    folders): the 2D search (binary runs; for the figure the run monitored) and, on volume data, the 3D
    component rules after it, as the recipe's fit-end callbacks do. A cross-validation folder (``cv.json``
    beside ``fold*/``) chooses again on its out-of-fold predictions and rewrites ``cv.json``, as
    ``make brain-mri-cv`` does at its end, and refreshes the copies in its models of every patient (``all``,
    ``all1`` …: ``--final``). The ``postprocess.json`` replaced is kept as ``postprocess.previous.json``."""
    import copy
    import shutil

    from .crossval import CV_FILE, cv_lines, out_of_fold, run_monitor
    from .cv_runs import share_postprocess
    from .ensemble import resolve_weights
    from .inference import run_target_dataset
    from .postprocess import POSTPROCESS_FILE
    from .seg_eval import ChoosePostprocess
    from .volume_postprocess_run import ChooseVolumePostprocess

    root = Path(args.weights[0])
    folds = resolve_weights(args.weights)[0] if (root / CV_FILE).is_file() else []
    if len(folds) > 1:  # a CV folder: its folds' out-of-fold predictions (out_of_fold loads each fold)
        if (root / POSTPROCESS_FILE).is_file():
            shutil.copyfile(root / POSTPROCESS_FILE, root / "postprocess.previous.json")
        result = out_of_fold(root, [f.parent for f in folds])
        print("post-processing chosen out of fold:\n" + "\n".join(cv_lines(result, root)))
        for shared in share_postprocess(root):
            print(f"wrote {shared} (the same choice, for a model of every patient)")
        return 0
    ensemble, cfg, _, files = load_ensemble(args.weights)
    if len(files) != 1:
        raise ValueError(f"--weights: give one run (its folder or best.pth) or a cross-validation folder, "
                         f"got {len(files)} models")
    run_dir, model, target = files[0].parent, ensemble.members[0], ensemble.target
    args.split, args.data_dir = "val", None
    val = run_target_dataset(_records_to_score(args, cfg, files)[0], cfg, target)
    old = run_dir / POSTPROCESS_FILE
    kept = old.is_file()
    if kept:  # each chooser below rewrites it atomically
        shutil.copyfile(old, run_dir / "postprocess.previous.json")
    build = lambda: copy.deepcopy(model)  # noqa: E731  the callbacks load best.pth into it
    threshold = float(cfg.get("threshold", 0.5))
    plane = None
    if target.kind == "binary":
        plane = ChoosePostprocess(build, val, ensemble.preprocess, pooled=run_monitor(run_dir).endswith("_global"),
                                  threshold=threshold)
        plane.choose(run_dir)
    ChooseVolumePostprocess(build, val, ensemble.preprocess, target, threshold, reuse=plane).choose(run_dir)
    if not old.is_file():  # a classes/regions run on 2D slices: neither search applies
        print(f"nothing to choose for {run_dir}: the 2D search is for binary runs and the 3D rules for volume data; "
              f"evaluate and predict apply its threshold {threshold:g}")
        return 0
    print(f"wrote {old}" + (" (the previous one: postprocess.previous.json)" if kept else ""))
    return 0
