"""The index page of `toolkit report`: runs side by side, grouped by recipe, plus the task comparisons.

Comparisons, each shown only when its runs exist: the MNIST autoencoders (and the PCA
baseline of ``mnist_comparison.json``), STL-10 (supervised CNN, frozen ImageNet ResNet-18
probe, frozen autoencoder probe, random-encoder control), and segmentation models per data set.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

from .report import Run, _curve
from .report_html import esc, line_chart, page, table

__all__ = ["index_page", "stl10_approach", "dataset_label"]

STL10_APPROACHES = (  # (recipe, encoder kind or None, label), in the order of the comparison table
    ("stl10_supervised", None, "supervised CNN (trained from scratch on the labelled images)"),
    ("stl10_resnet18", None, "ImageNet ResNet-18, frozen, linear probe"),
    ("stl10_probe", "pretrained", "autoencoder encoder, frozen, linear probe"),
    ("stl10_probe", "random", "random encoder, frozen, linear probe (control)"),
    ("stl10_pretrain", None, "autoencoder pretraining (reconstruction, unlabelled images)"),
)
MAX_CURVES = 9  # runs overlaid in one chart


def _link(run: Run) -> str:
    return f'<a href="{quote(run.name)}/report.html">{esc(run.name)}</a>'


def _status(run: Run) -> str:
    return "complete" if run.complete else "unfinished"


def stl10_approach(run: Run) -> str | None:
    """The STL-10 comparison row a run belongs to (a label of :data:`STL10_APPROACHES`), or None."""
    encoder = run.extras.get("encoder")
    kind = None
    if run.recipe == "stl10_probe":
        name = str(encoder.get("encoder", "")) if isinstance(encoder, dict) else ""
        kind = "random" if name == "random" or run.config.get("encoder") == "random" else "pretrained"
    for recipe, want, label in STL10_APPROACHES:
        if run.recipe == recipe and want == kind:
            return label
    return None


def dataset_label(run: Run) -> str:
    """Data set of a segmentation run: the name of its data folder, or "synthetic (built-in)"."""
    folder = str(run.config.get("data_dir") or "").rstrip("/")
    return Path(folder).name if folder else "synthetic (built-in)"


def _overlay_chart(runs: list[Run], key: str, title: str) -> str:
    series = {run.name: _curve(run, key) for run in runs[-MAX_CURVES:] if any(key in h for h in run.history)}
    return line_chart(series, title, width=460, height=260) if series else ""


def _recipe_section(recipe: str, runs: list[Run]) -> str:
    monitor = next((r.monitor for r in runs if r.monitor), None)
    rows = [[_link(r), _status(r), r.monitor, r.value("best_value") if r.complete else None,
             r.value("best_epoch"), len(r.history), r.value("trainable_params"), r.value("train_images_per_s"),
             (r.value("wall_time_s") or 0) / 60 if r.complete else None, r.value("num_processes"),
             r.value("mixed_precision")] for r in runs]
    headers = ["run", "status", "monitored", "best", "best epoch", "epochs", "trainable params", "train images/s",
               "wall time (min)", "processes", "precision"]
    charts = [_overlay_chart(runs, monitor, f"{monitor} per epoch") if monitor else "",
              _overlay_chart(runs, "val_loss", "validation loss per epoch")]
    return (f"<h3 id='recipe-{esc(recipe)}'>{esc(recipe)} <span class='muted'>({len(runs)} run(s))</span></h3>"
            + table(headers, rows, raw_columns=(0,)) + '<div class="charts">' + "".join(charts) + "</div>")


def _mnist_section(root: Path, runs: list[Run]) -> str:
    mnist = [r for r in runs if r.recipe.startswith("mnist_")]
    comparison = root / "mnist_comparison.json"
    data = json.loads(comparison.read_text()) if comparison.is_file() else {}
    if not mnist and not data:
        return ""
    rows = []
    for r in sorted(mnist, key=lambda r: (str(r.config.get("task")), str(r.config.get("model")), r.name)):
        best = r.best_record or {}
        rows.append([r.config.get("model"), r.config.get("task"), _link(r), r.value("trainable_params"),
                     best.get("mse"), best.get("psnr"), r.value("best_epoch"), len(r.history), _status(r)])
    pca = data.get("pca15")
    if isinstance(pca, dict):
        for task in ("reconstruction", "denoising"):
            rows.append(["PCA-15 (baseline)", task, "–", pca.get("params"), pca.get(task), None, None, None, "–"])
    out = ("<h2>MNIST autoencoders</h2><p class='muted'>Test set; MSE and PSNR (dB) of each run's best epoch; "
           "denoising scores the clean target from a noisy input.</p>"
           + table(["model", "task", "run", "parameters", "MSE", "PSNR (dB)", "best epoch", "epochs", "status"],
                   rows, raw_columns=(2,)))
    if data.get("command"):
        out += f"<p class='muted'>From <code>{esc(comparison.name)}</code>: <code>{esc(data['command'])}</code></p>"
    return out


def _stl10_section(root: Path, runs: list[Run]) -> str:
    order = {label: i for i, (_, _, label) in enumerate(STL10_APPROACHES)}
    rows_runs = sorted(((stl10_approach(r), r) for r in runs if stl10_approach(r)), key=lambda p: (order[p[0]], p[1].name))
    if not rows_runs:
        return ""
    rows = []
    for label, r in rows_runs:
        last = r.history[-1] if r.history else {}
        rows.append([label, _link(r), r.monitor, r.value("best_value") if r.complete else None, r.value("best_epoch"),
                     last.get(r.monitor) if r.monitor else None, r.value("trainable_params"), len(r.history),
                     r.value("train_images_per_s"), _status(r)])
    out = ("<h2>STL-10: supervised vs pretrained features</h2><p class='muted'>Accuracy on the 8,000 test images "
           "(the probe rows train only a linear head on a frozen encoder; the random encoder is the control).</p>"
           + table(["approach", "run", "monitored", "best", "best epoch", "last epoch", "trainable params", "epochs",
                    "train images/s", "status"], rows, raw_columns=(1,)))
    classifiers = [r for label, r in rows_runs if r.monitor == "accuracy"]
    out += '<div class="charts">' + _overlay_chart(classifiers, "accuracy", "STL-10 test accuracy per epoch") + "</div>"
    comparison = root / "stl10_probe_comparison.json"
    if comparison.is_file():
        data = json.loads(comparison.read_text())
        if isinstance(data.get("gain_final"), (int, float)):
            out += (f"<p>Pretraining gain of the probe over the random-encoder control (last epoch): "
                    f"<b>{data['gain_final']:+.4f}</b> <span class='muted'>({esc(comparison.name)})</span></p>")
    return out


def _segmentation_section(runs: list[Run]) -> str:
    seg = [r for r in runs if r.recipe == "brain_mri" or r.monitor == "dice"]
    if not seg:
        return ""
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in seg:
        groups[dataset_label(r)].append(r)
    out = ["<h2>Segmentation models per data set</h2><p class='muted'>Validation Dice (mean over slices) of the "
           "best epoch; test scores from <code>toolkit evaluate</code> (eval_test.json) where it was run.</p>"]
    for name, group in sorted(groups.items()):
        rows = []
        for r in group:
            best = r.best_record or {}
            test = (r.extras.get("eval_test") or {}).get("summary") or {}
            split = r.extras.get("split") if isinstance(r.extras.get("split"), dict) else {}
            rows.append([r.config.get("model"), r.config.get("loss"), _link(r), split.get("source"),
                         r.config.get("image_size"), r.value("trainable_params"),
                         best.get("dice"), best.get("iou"), best.get("dice_global"), r.value("best_epoch"),
                         test.get("dice"), test.get("dice_global"), r.value("train_images_per_s"), len(r.history),
                         _status(r)])
        out.append(f"<h3>{esc(name)}</h3>" + table(
            ["model", "loss", "run", "layout", "size (px)", "parameters", "val Dice", "val IoU", "val Dice (pooled)", "best epoch",
             "test Dice", "test Dice (pooled)", "train images/s", "epochs", "status"], rows, raw_columns=(2,))
            + '<div class="charts">' + _overlay_chart(group, "dice", f"validation Dice per epoch: {name}") + "</div>")
    return "".join(out)


def index_page(root: Path, runs: list[Run], bad: list[tuple[Path, str]], generated: str) -> str:
    """The HTML of ``<root>/index.html``."""
    by_recipe: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_recipe[run.recipe].append(run)
    body = [f"<h1>Runs in {esc(root)}</h1><p class='muted'>{len(runs)} run(s), {len(by_recipe)} recipe(s); "
            f"generated {esc(generated)} by <code>toolkit report</code>. Each run name opens its own page.</p>"]
    if bad:
        body.append("<p class='warn'>Skipped unreadable run folders:</p><ul>"
                    + "".join(f"<li><code>{esc(p)}</code>: {esc(why)}</li>" for p, why in bad) + "</ul>")
    body.append("<p>" + " · ".join(f"<a href='#recipe-{esc(r)}'>{esc(r)}</a>" for r in sorted(by_recipe)) + "</p>")
    body += [_mnist_section(root, runs), _stl10_section(root, runs), _segmentation_section(runs)]
    body.append("<h2>All runs by recipe</h2>")
    body += [_recipe_section(recipe, group) for recipe, group in sorted(by_recipe.items())]
    if not runs:
        body.append(f"<p>No run folders (with config.json or history.json) under {esc(root)}.</p>")
    return page(f"Runs in {root}", "\n".join(b for b in body if b))
