"""The index page of `toolkit report`: every comparison file, then the runs grouped by recipe.

Knows no recipe: comparisons come from comparison files (:mod:`toolkit.comparison`), and each
recipe's section is built from what its runs hold (summary, the config settings that differ
between its runs, ``eval_<split>.json`` scores) with the monitored metric and the validation
loss of its runs overlaid in one chart.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .comparison import Comparison
from .report_html import esc, line_chart, page, table
from .report_pages import comparison_html, eval_html, run_link
from .report_runs import Group, Run, curve, ensemble_members

__all__ = ["index_page", "varying_settings", "eval_columns"]

MAX_CURVES = 9  # runs overlaid in one chart
MAX_SETTINGS = 8  # config columns per recipe table
MAX_EVAL = 6  # eval_<split>.json columns per recipe table
NOT_SETTINGS = {"recipe", "run_name", "output_dir"}


def _status(run: Run) -> str:
    return "complete" if run.complete else "unfinished"


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def varying_settings(runs: list[Run]) -> list[str]:
    """Config keys with a plain value that differs between ``runs``, in first-seen order."""
    keys = list(dict.fromkeys(k for r in runs for k in r.config if k not in NOT_SETTINGS))
    keys = [k for k in keys if all(_scalar(r.config.get(k)) for r in runs)]
    return [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1][:MAX_SETTINGS]


def eval_columns(runs: list[Run]) -> list[tuple[str, str]]:
    """(eval_<split>, metric) of the numeric scores in the runs' ``eval_*.json`` summaries, first seen first;
    an ensemble's evaluation (beside its first member) is no score of that run and is left out."""
    cols = []
    for r in runs:
        for name, data in r.extras.items():
            own = name.startswith("eval_") and isinstance(data, dict) and not ensemble_members(data)
            summary = data.get("summary") if own else None
            if isinstance(summary, dict):
                cols += [(name, k) for k, v in summary.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return list(dict.fromkeys(cols))[:MAX_EVAL]


def _eval_value(run: Run, name: str, key: str) -> Any:
    data = run.extras.get(name)
    return ((data or {}).get("summary") or {}).get(key) if isinstance(data, dict) else None


def _overlay_chart(runs: list[Run], key: str, title: str) -> str:
    series = {run.name: curve(run, key) for run in runs[-MAX_CURVES:] if any(key in h for h in run.history)}
    return line_chart(series, title, width=460, height=260) if series else ""


def _recipe_section(recipe: str, runs: list[Run]) -> str:
    monitor = next((r.monitor for r in runs if r.monitor), None)
    settings, evals = varying_settings(runs), eval_columns(runs)
    rows = [[run_link(r.name), _status(r), *(r.config.get(k) for k in settings), r.monitor,
             r.value("best_value") if r.complete else None, r.value("best_epoch"), len(r.history),
             *(_eval_value(r, name, k) for name, k in evals), r.value("trainable_params"),
             r.value("train_images_per_s"), (r.value("wall_time_s") or 0) / 60 if r.complete else None,
             r.value("num_processes"), r.value("mixed_precision")] for r in runs]
    headers = ["run", "status", *settings, "monitored", "best", "best epoch", "epochs",
               *(f"{name.removeprefix('eval_')} {k}" for name, k in evals), "trainable params", "train images/s",
               "wall time (min)", "processes", "precision"]
    charts = [_overlay_chart(runs, monitor, f"{monitor} per epoch") if monitor else "",
              _overlay_chart(runs, "val_loss", "validation loss per epoch")]
    return (f"<h3 id='recipe-{esc(recipe)}'>{esc(recipe)} <span class='muted'>({len(runs)} run(s))</span></h3>"
            + table(headers, rows, raw_columns=(0,)) + '<div class="charts">' + "".join(charts) + "</div>")


def _bad_list(title: str, bad: list[tuple[Path, str]]) -> str:
    return (f"<p class='warn'>{esc(title)}:</p><ul>"
            + "".join(f"<li><code>{esc(p)}</code>: {esc(why)}</li>" for p, why in bad) + "</ul>")


def _group_section(groups: list[Group]) -> str:
    """Each folder of runs (a cross-validation) with the scores of its own ``eval_*.json`` files."""
    parts = [f"<h3>{esc(g.name)}/</h3>" + "".join(eval_html(n, d, "h4") for n, d in g.evals.items()) for g in groups]
    return "<h2>Evaluations of folders of runs</h2>" + "".join(parts) if parts else ""


def index_page(root: Path, runs: list[Run], bad: list[tuple[Path, str]], generated: str,
               comparisons: list[tuple[Path, Comparison]] = (), bad_comparisons: list[tuple[Path, str]] = (),
               groups: list[Group] = (), bad_evals: list[tuple[Path, str]] = ()) -> str:
    """The HTML of ``<root>/index.html``; ``groups``: the folders of runs with their own evaluations
    (:func:`~toolkit.report_runs.find_groups`), ``bad_evals`` their unreadable eval files."""
    root = Path(root)
    by_recipe: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_recipe[run.recipe].append(run)
    names = {r.name for r in runs}
    body = [f"<h1>Runs in {esc(root)}</h1><p class='muted'>{len(runs)} run(s), {len(by_recipe)} recipe(s), "
            f"{len(comparisons)} comparison(s); generated {esc(generated)} by <code>toolkit report</code>. "
            "Each run name opens its own page.</p>"]
    if bad:
        body.append(_bad_list("Skipped unreadable run folders", bad))
    if bad_comparisons:
        body.append(_bad_list("Skipped unreadable comparison files", bad_comparisons))
    if bad_evals:
        body.append(_bad_list("Skipped unreadable evaluation files", bad_evals))
    body.append("<p>" + " · ".join(f"<a href='#recipe-{esc(r)}'>{esc(r)}</a>" for r in sorted(by_recipe)) + "</p>")
    if comparisons:
        body.append("<h2>Comparisons</h2>")
        body += [comparison_html(c, str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
                                 lambda name: run_link(name) if name in names else None)
                 for path, c in comparisons]
    body.append(_group_section(groups))
    body.append("<h2>All runs by recipe</h2>")
    body += [_recipe_section(recipe, group) for recipe, group in sorted(by_recipe.items())]
    if not runs:
        body.append(f"<p>No run folders (with config.json or history.json) under {esc(root)}.</p>")
    return page(f"Runs in {root}", "\n".join(b for b in body if b))
