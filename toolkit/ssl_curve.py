"""The label-efficiency curve of self-supervised pretraining: score runs, aggregate over seeds, write the results.

``recipes/brain_mri_ssl_curve.py`` trains, for each label fraction F and seed S, a segmentation run
fine-tuned from pretrained weights and one from scratch into ``<root>/f<F>-s<S>-{pretrained,scratch}/``;
this module scores them (:func:`score_run`), aggregates the per-image Dice over seeds (:func:`curve_summary`)
and writes ``ssl_curve.json``, ``ssl_curve.md``, ``ssl_curve.png`` and ``comparison.json`` (:func:`write_curve`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import atomic_write, save_json
from .compare import read_json
from .comparison import Column, Comparison
from .data.splits import load_split
from .figures import plt, save_figure
from .inference import load_ensemble, run_dataset, run_slices
from .postprocess import PostProcess
from .seg_eval import EMPTY_RULE, collect_probs, image_records, slice_meta, summarise

__all__ = ["SSL_ARMS", "CURVE_FILE", "SCORE_FILE", "run_name", "score_run", "curve_summary", "curve_table", "plot_curve",
           "write_curve"]

SSL_ARMS = ("pretrained", "scratch")
CURVE_FILE = "ssl_curve.json"
SCORE_FILE = "ssl_score.json"  # a run's cached score, beside its best.pth
COLUMNS = [Column("fraction", "labelled patients", format=".0%"),
           Column("train_slices", "training slices", format=".0f"),
           Column("pretrained", "pretrained Dice", better="higher", format=".4f"),
           Column("pretrained_std", "± std", format=".4f"),
           Column("scratch", "scratch Dice", better="higher", format=".4f"),
           Column("scratch_std", "± std", format=".4f"),
           Column("gain", "gain", better="higher", format="+.4f"),
           Column("gain_min", "smallest seed gain", better="higher", format="+.4f"), Column("seeds")]


def run_name(fraction: float, seed: int, arm: str) -> str:
    """The run folder name of one curve point, e.g. ``f0.05-s0-pretrained`` (fraction in (0, 1], arm in SSL_ARMS)."""
    if arm not in SSL_ARMS:
        raise ValueError(f"arm must be one of {SSL_ARMS}, got {arm!r}")
    short = f"{fraction:g}"  # 6 significant digits; every digit when it takes more, so fractions keep apart
    return f"f{short if float(short) == fraction else repr(float(fraction))}-s{seed}-{arm}"


def score_run(run_dir: str | Path, test_data_dir: str = "", cache: dict | None = None) -> dict:
    """Per-image Dice of a finished binary run's ``best.pth`` on patients it never trained on nor was selected on.

    The scored slices: every slice of ``test_data_dir`` when given (split "external"), else the run's ``test``
    split when its split.json has one, else its ``val`` split (which picked the best epoch: optimistic, marked
    ``"selection_split": true``). Predictions at the run's threshold, without post-processing or flips.
    Returns ``{"split", "data_dir", "num_images", "dice" (mean per image, in [0, 1]), "dice_global",
    "per_patient_dice" (or None), "train_slices", "selection_split"}``, cached in ``<run>/ssl_score.json`` (reused
    when split and data_dir match). ``cache`` maps a data folder to its slices across calls. Raises ValueError
    naming the run when it is not binary, lacks best.pth or split.json, the split is empty, or ``test_data_dir``
    holds slices (by id, or by image file and slice) that the run trained or validated on.
    """
    run_dir, cache = Path(run_dir), {} if cache is None else cache
    split_file = run_dir / "split.json"
    split = read_json(split_file)
    name = "external" if test_data_dir else ("test" if split.get("test") else "val")
    source = test_data_dir or split.get("data_dir", "")
    cached = run_dir / SCORE_FILE
    if cached.is_file():
        old = read_json(cached)
        if old.get("split") == name and old.get("data_dir") == source:
            return old
    if not (run_dir / "best.pth").is_file():
        raise ValueError(f"{run_dir}: no best.pth; the run did not finish an epoch")
    ensemble, cfg, _, _ = load_ensemble([run_dir / "best.pth"])
    if source not in cache:
        cache[source] = run_slices(source, cfg)
    records = cache[source] if test_data_dir else load_split(split_file, cache[source], names=[name]).get(name, [])
    if not records:
        raise ValueError(f"{run_dir}: the {name} split of {source} holds no slice to score")
    overlap, shared = _seen_slices(records, split, cfg, cache) if test_data_dir else ([], [])
    if shared:  # not refused: unrelated data sets can reuse patient ids such as "1"
        print(f"note: {len(shared)} patient id(s) of test_data_dir {test_data_dir} also have slices the run "
              f"{run_dir.name} trained or validated on (e.g. {shared[:3]}): if they are the same people, its "
              f"external score is optimistic")
    if overlap:
        raise ValueError(f"{run_dir}: {len(overlap)} slice(s) of test_data_dir {test_data_dir} were trained or "
                         f"validated on (e.g. {overlap[:3]}); give a folder of patients outside data_dir")
    try:
        data = run_dataset(records, cfg)
        preds = collect_probs(ensemble, data, flips=False)
    except ValueError as err:
        raise ValueError(f"{run_dir}: {err}") from None
    masks = PostProcess(threshold=float(cfg.get("threshold", 0.5))).binarize(preds.probs)
    summary = summarise(image_records(data.ids, masks, preds.targets, slice_meta(data.records)))
    result = {"split": name, "data_dir": source, "num_images": len(data), "dice": summary["dice"],
              "dice_global": summary["dice_global"], "per_patient_dice": summary.get("per_patient", {}).get("dice"),
              "train_slices": len(split.get("train", [])), "selection_split": name == "val",
              "shared_patient_ids": len(shared)}
    save_json(cached, result)
    return result


def _seen_slices(records: Sequence, split: dict, cfg: dict, cache: dict) -> tuple[list[str], list[str]]:
    """(ids of ``records`` that the run of ``split`` (its split.json) and ``cfg`` trained or validated on: the same
    id, or the same image file (symlinks resolved) and volume slice; a folder among several gets ids prefixed
    with its name, so one of the training folders given alone as test data matches only by file; the patient ids,
    sorted, of ``records`` that are also patients of those slices: [] when the training data are gone)."""
    used = set(split.get("train", [])) | set(split.get("val", []))
    roots = [d for d in str(split.get("data_dir", "")).split(",") if d]
    files, patients = set(), set()
    if roots and all(Path(d).is_dir() for d in roots):  # the training data still there: compare the files too
        key = split["data_dir"]
        if key not in cache:
            cache[key] = run_slices(key, cfg)
        seen = [r for r in cache[key] if r.id in used]
        files, patients = {_slice_file(r) for r in seen}, {r.patient for r in seen if r.patient}
    shared = sorted({r.patient for r in records if r.patient in patients})
    return [r.id for r in records if r.id in used or _slice_file(r) in files], shared


def _slice_file(record) -> tuple[str, int | None]:
    return str(Path(record.image_path).resolve()), record.index


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None, undefined, for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else None


def curve_summary(scores: dict[tuple[float, int, str], dict], fractions: Sequence[float],
                  seeds: Sequence[int]) -> dict:
    """Aggregate :func:`score_run` results keyed by (fraction, seed, arm) over seeds.

    Returns ``{"fractions": [{"fraction", "seeds", "train_slices" (mean over seeds), "<arm>": {"mean", "std",
    "values" (per seed, in seed order)}, "gain" (pretrained mean - scratch mean), "gain_per_seed", "gain_min"}],
    "split", "selection_split", "metric", "empty_masks"}``. Dice values are in [0, 1]; std has ddof 1 (None for one
    seed: a sample std of one value is undefined, shown as "–" and drawn without error bar).
    Raises ValueError naming the first (fraction, seed, arm) that has no score.
    """
    rows, splits = [], set()
    for f in fractions:
        row: dict = {"fraction": f, "seeds": list(seeds)}
        for arm in SSL_ARMS:
            missing = [s for s in seeds if (f, s, arm) not in scores]
            if missing:
                raise ValueError(f"no score for fraction {f}, seed {missing[0]}, arm {arm}")
            values = [scores[(f, s, arm)]["dice"] for s in seeds]
            mean, std = _stats(values)
            row[arm] = {"mean": mean, "std": std, "values": values}
            splits |= {scores[(f, s, arm)]["split"] for s in seeds}
        gains = [p - s for p, s in zip(row["pretrained"]["values"], row["scratch"]["values"])]
        row.update(gain=row["pretrained"]["mean"] - row["scratch"]["mean"], gain_per_seed=gains, gain_min=min(gains),
                   train_slices=float(np.mean([scores[(f, s, "scratch")]["train_slices"] for s in seeds])))
        rows.append(row)
    first = next(iter(scores.values()))
    return {"fractions": rows, "split": "+".join(sorted(splits)), "selection_split": first["selection_split"],
            "data_dir": first["data_dir"], "empty_masks": EMPTY_RULE,
            "metric": "per-image Dice (mean over slices) at each run's threshold, no post-processing"}


def curve_table(summary: dict, title: str = "Label efficiency: pretrained vs from scratch") -> Comparison:
    """One row per label fraction (the :func:`curve_summary` figures) as a comparison table."""
    rows = [{"fraction": r["fraction"], "train_slices": r["train_slices"],
             "pretrained": r["pretrained"]["mean"], "pretrained_std": r["pretrained"]["std"],
             "scratch": r["scratch"]["mean"], "scratch_std": r["scratch"]["std"],
             "gain": r["gain"], "gain_min": r["gain_min"], "seeds": ",".join(map(str, r["seeds"]))}
            for r in summary["fractions"]]
    where = f"{summary['split']} slices of {summary['data_dir']}"
    notes = [f"{summary['metric']}, on the {where}; mean ± sample std over seeds; gain = pretrained - scratch."]
    if summary["selection_split"]:
        notes.append("These runs have no test split: the scores are on the validation split that chose each run's "
                     "best epoch, so they are optimistic (give --test-data-dir or --test-fraction).")
    return Comparison(title, COLUMNS, rows, notes=notes)


def plot_curve(summary: dict) -> "plt.Figure":
    """Dice (y, [0, 1]) against the label fraction (x, log scale): one line per arm, seed std as error bars."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [r["fraction"] for r in summary["fractions"]]
    for arm, marker in zip(SSL_ARMS, ("o", "s")):
        means, stds = ([r[arm][k] or 0.0 for r in summary["fractions"]] for k in ("mean", "std"))  # None: no bar
        ax.errorbar(x, means, yerr=stds, marker=marker, capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{f:.0%}" for f in x])
    ax.minorticks_off()
    ax.set_xlabel("labelled training patients (fraction, log scale)")
    ax.set_ylabel(f"per-image Dice ({summary['split']})")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def write_curve(root: str | Path, summary: dict, footer: str = "") -> dict[str, Path]:
    """Write ``ssl_curve.json`` (``summary``), ``ssl_curve.md`` (table and notes, then ``footer``), ``ssl_curve.png``
    and ``comparison.json`` (for `toolkit report`) under ``root``, each atomically; returns name → path."""
    root = Path(root)
    table = curve_table(summary)
    text = "\n\n".join([f"## {table.title}", table.to_markdown(), *table.notes, *([footer] if footer else [])])
    paths = {"json": save_json(root / CURVE_FILE, summary),
             "md": atomic_write(root / "ssl_curve.md", lambda f: f.write(text + "\n"), mode="w"),
             "png": save_figure(plot_curve(summary), root / "ssl_curve.png")}
    notes = [*table.notes, *([footer] if footer else [])]
    paths["comparison"] = Comparison(table.title, table.columns, table.rows, notes=notes).save(root / "comparison.json")
    return paths
