"""The ``toolkit evaluate`` output of the per-patient path: its JSON, its file name and its printed table.

:func:`evaluate_volumes` is ``toolkit evaluate`` for runs that predict classes or regions; :func:`add_volumes` adds
the per-patient scores to a binary run's result on volume data; both print the table of :func:`_print_volumes`.
The scores themselves come from :mod:`toolkit.volume_eval` (masks stacked per patient, Dice, IoU, HD95, volumes).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import save_json
from .inference import run_target_dataset
from .postprocess import PostProcess
from .seg_eval import EMPTY_RULE as SLICE_EMPTY_RULE
from .targets import TargetSpec
from .volume_eval import class_accuracy, pack_masks, predict_packed, volume_scores
from .volume_metrics import json_safe
from .volume_postprocess_run import stored_volume_postprocess

__all__ = ["eval_output", "add_volumes", "evaluate_volumes"]


def eval_output(args: argparse.Namespace) -> Path:
    """``--output``, or ``eval_<split>.json`` beside the first ``--weights`` (a run or CV folder, or a best.pth's);
    several ``--weights`` (an ensemble of runs) ``eval_<split>_ensemble.json`` there, so that the first run's own
    evaluation is neither overwritten nor shown by ``toolkit report`` as that run's."""
    first = Path(args.weights[0])
    name = f"eval_{args.split}{'_ensemble' if len(args.weights) > 1 else ''}.json"
    return Path(args.output) if args.output else (first if first.is_dir() else first.parent) / name


def add_volumes(result: dict, records: Sequence, masks: np.ndarray, targets: np.ndarray, size: int) -> None:
    """Binary runs on volume data: add per-patient volume scores to today's evaluate ``result`` (in place).

    records: the scored MRISlice records in order; masks, targets: (N, S, S) {0, 1} post-processed prediction
    (2D) and truth; the stored 3D rule applies here (the scores without it kept apart). Adds ``spacing``,
    ``empty_volumes``, ``hd95_definition``, ``patients`` and, beside today's pooled-slice keys of
    ``summary.per_patient``, ``summary.per_patient.tumour`` and ``.mean``; prints them.
    """
    vpost, line = stored_volume_postprocess(result.get("postprocess", {}).get("from"), TargetSpec.binary())
    result.setdefault("postprocess", {})["volume"] = line  # applied here per patient; to slices by volume_masks
    packed = pack_masks(np.asarray(masks)[:, None], np.asarray(targets)[:, None])
    part = volume_scores(records, packed, ("tumour",), size, vpost)
    result["summary"].setdefault("per_patient", {}).update(part.pop("per_patient"))
    result.update(part)
    _print_volumes(result, ("tumour",), {}, 0)


def evaluate_volumes(args: argparse.Namespace, ensemble, cfg: dict, post: PostProcess, source: str,
                     files: Sequence[Path], records: Sequence, data_dir) -> int:
    """``toolkit evaluate`` for classes/regions runs: writes the JSON, prints a table, returns 0 (flip TTA only
    when asked; the threshold is the run's or ``--threshold``; 2D component filtering is binary only; the 3D
    choice of the applied postprocess.json, if any, is applied per patient)."""
    spec, size, column = ensemble.target, int(cfg["image_size"]), cfg.get("class_column") or ""
    records = list({r.id: r for r in records}.values())  # a record listed twice is scored once
    dataset = run_target_dataset(records, cfg, spec)
    records = dataset.records
    packed, pred_px, true_px, slices = predict_packed(ensemble, dataset, post.threshold, post.flips,
                                                      scales=post.scales)
    vpost, line = stored_volume_postprocess(source, spec)
    part = volume_scores(records, packed, spec.names, size, vpost)
    summary = {"per_patient": part.pop("per_patient"), "slices": slices, "num_patients": len(part["patients"]),
               "num_slices": len(records)}
    if column and spec.kind == "classes":
        summary["class_accuracy"] = class_accuracy(pred_px, true_px, [r.attrs.get(column) for r in records],
                                                   spec.names)
    result = {"weights": [str(f) for f in files], "data_dir": str(data_dir), "split": args.split,
              "target": spec.to_dict(), "threshold": post.threshold, "flips": post.flips, "resolution": size,
              "postprocess": {"applied": f"threshold {post.threshold:g}, {post.tta()}",
                              "from": source, "volume": line},
              "empty_masks": SLICE_EMPTY_RULE, **part, "summary": summary}
    out = eval_output(args)
    save_json(out, json_safe(result))  # NaN (undefined, e.g. no empty slice) as null
    print(f"{summary['num_patients']} patients, {len(records)} slices ({args.split} split of {data_dir}); "
          f"{len(files)} model(s); {spec.kind} target; {result['postprocess']['applied']}")
    _print_volumes(result, spec.names, slices, args.show)
    print(f"wrote {out}")
    return 0


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:6.3f}"


def _headers(units: dict[str, str]) -> tuple[str, str]:
    """The table headers of the HD95 and |dV| columns in the units of :func:`score_units`."""
    hd = {"voxels": "hd95 vx"}.get(units["hd95_mm"], "hd95" if units["hd95_mm"].startswith("mm") else "hd95 -")
    dv = {"thousands of voxels": "|dV| kvx", "thousands of pixels": "|dV| kpx"}.get(units["abs_volume_diff_ml"],
                                                                                 "|dV| ml")
    return hd, dv


def _print_volumes(result: dict, names: Sequence[str], slices: dict, show: int) -> None:
    s = result["summary"]
    print(f"per patient (spacing: {result['spacing']}); 3D post-processing: {result['postprocess'].get('volume')}")
    hd, dv = _headers(result["units"])
    print(f"  {'channel':<20} {'dice':>6} {'iou':>6} {hd:>7} {dv:>8} {'hd95 undef':>10}"
          + (f" {'slice dice':>10}" if slices else ""))
    for name in [*names, "mean"]:
        p = s["per_patient"][name]
        sl = f" {_fmt(slices.get(f'dice_{name}' if name != 'mean' else 'dice')):>10}" if slices else ""
        print(f"  {name:<20} {_fmt(p['dice'])} {_fmt(p['iou'])} {_fmt(p['hd95_mm']):>7} "
              f"{_fmt(p['abs_volume_diff_ml']):>8} {p['hd95_undefined']:>10d}{sl}")
    for name, p in result.get("without_volume_postprocess", {}).items():
        print(f"  {name:<20} {_fmt(p['dice'])} {_fmt(p['iou'])} {_fmt(p['hd95_mm']):>7} (without the 3D post-processing)")
    for r in sorted(result["patients"], key=lambda r: np.mean([r[n]["dice"] for n in names]))[:show]:
        print(f"  {r['case']:<28} " + " ".join(f"{n} {r[n]['dice']:.3f}" for n in names) + f" ({r['num_slices']} slices)")
    acc = s.get("class_accuracy")
    if acc:
        print(f"class accuracy {_fmt(acc['accuracy'])} ({acc['correct']}/{acc['num_slices']} tumour slices); "
              + ", ".join(f"{n} {_fmt(e['accuracy']).strip()} ({e['correct']}/{e['num_slices']})"
                          for n, e in acc["per_class"].items()))
    print(f"empty volumes: {result['empty_volumes']}")
