"""HTML of `toolkit report`: the page of one run, and the table of one comparison file.

Generic over recipes: a run page shows whatever its folder holds (summary, curves of every
numeric history key, figures, ``eval_*.json``, ``encoder.json``, ``split.json``, config);
a comparison is drawn from its columns alone.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from .comparison import Comparison, best_rows
from .report_html import esc, fmt, img_data_uri, line_chart, page, table
from .report_runs import Run, curve, curve_keys, ensemble_members

__all__ = ["run_charts", "pick_figures", "run_page", "comparison_html", "eval_html", "run_link", "up_to_runs"]

EPOCH_FIGURE = re.compile(r"^(?P<kind>.+)_epoch(?P<epoch>\d+)\.png$")
ARROWS = {"higher": " ↑", "lower": " ↓", "none": ""}


def up_to_runs(name: str) -> str:
    """The relative way from run ``name``'s folder back to the runs folder: ``../``, or ``../../`` for a fold
    (``<cv>/fold<k>``)."""
    return "../" * (name.count("/") + 1)


def run_link(name: str, prefix: str = "") -> str:
    """``<a>`` to the page of run ``name``; ``prefix`` is the way from the linking page to the runs folder."""
    return f'<a href="{prefix}{quote(name)}/report.html">{esc(name)}</a>'


def run_charts(run: Run) -> str:
    """Inline SVG charts: losses together, the monitored metric with its best epoch ringed, then the rest."""
    keys = curve_keys(run.history)
    charts = []
    losses = [k for k in ("train_loss", "val_loss") if k in keys]
    if losses:
        charts.append(line_chart({k: curve(run, k) for k in losses}, "loss"))
    monitor = run.monitor
    if monitor in keys and monitor not in losses:
        best = (run.summary or {}).get("best_epoch"), (run.summary or {}).get("best_value")
        charts.append(line_chart({monitor: curve(run, monitor)}, f"{monitor} (monitored, best ringed)",
                                 mark=best if None not in best else None))
    for key in keys:
        if key not in losses and key != monitor:
            charts.append(line_chart({key: curve(run, key)}, key))
    return '<div class="charts">' + "".join(c for c in charts if c) + "</div>"


def pick_figures(run: Run) -> list[tuple[str, Path]]:
    """(caption, file) of the figures worth showing: per kind the best and the last epoch's; other PNGs as they are.

    ``history.png`` is left out: the page draws the same curves as SVG.
    """
    folder = run.path / "figures"
    if not folder.is_dir():
        return []
    kinds: dict[str, dict[int, Path]] = {}
    plain = []
    for file in sorted(folder.glob("*.png")):
        match = EPOCH_FIGURE.match(file.name)
        if match:
            kinds.setdefault(match["kind"], {})[int(match["epoch"])] = file
        elif file.name != "history.png":
            plain.append((file.stem, file))
    best = (run.summary or {}).get("best_epoch")
    chosen = []
    for kind, files in kinds.items():
        last = max(files)
        if best in files and best != last:
            chosen.append((f"{kind}, epoch {best} (best)", files[best]))
        chosen.append((f"{kind}, epoch {last} (last{', best' if best == last else ''})", files[last]))
    return chosen + plain


SUMMARY_ROWS = (("monitor", "monitored metric"), ("mode", "better is"), ("best_value", "best value"),
                ("best_epoch", "best epoch"), ("epochs_completed", "epochs completed"),
                ("trainable_params", "trainable parameters"), ("total_params", "total parameters"),
                ("param_budget", "parameter budget"), ("train_images_per_s", "training images/s (mean of epochs)"),
                ("wall_time_s", "wall time (s)"), ("train_time_s", "training time (s)"),
                ("num_processes", "processes"), ("mixed_precision", "mixed precision"))


def _summary_html(run: Run) -> str:
    if run.summary is None:
        last = run.history[-1] if run.history else {}
        return ('<p class="warn">No summary.json: the run is unfinished or was interrupted.</p>'
                + table(["key", "last epoch"], [[k, v] for k, v in last.items()]))
    rows = [[label, run.summary.get(key)] for key, label in SUMMARY_ROWS if key in run.summary]
    if run.summary.get("stopped_early"):  # --patience ended the run before its planned epochs
        rows.append(["stopped early",
                     f"after epoch {run.summary.get('stopped_epoch')}: {run.summary.get('stop_reason')}"])
    out = table(["", "value"], rows)
    final = run.summary.get("final") or {}
    best = run.best_record or {}
    keys = [k for k in curve_keys(run.history) if k in final or k in best]
    if keys:
        out += "<h3>Best and last epoch</h3>" + table(
            ["", *keys], [[f"best (epoch {best.get('epoch')})", *(best.get(k) for k in keys)],
                          [f"last (epoch {final.get('epoch')})", *(final.get(k) for k in keys)]])
    return out


def _flat(summary: dict, prefix: str = "") -> dict:
    """Nested figures of an eval summary as one level: ``{"per_patient": {"tumour": {"dice": x}}}`` →
    ``{"per_patient.tumour.dice": x}`` (lists left out)."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = value
    return out


def eval_html(name: str, data: Any, heading: str = "h3") -> str:
    """The scores of one ``eval_*.json`` (``name`` its stem): a heading with its options (split, threshold,
    flips, the 3D rule) and, for an ensemble, its member runs, then its summary flattened into one table row;
    "" when ``data`` holds no summary object."""
    if not (isinstance(data, dict) and isinstance(data.get("summary"), dict)):
        return ""
    opts = ", ".join(f"{k} {data[k]}" for k in ("split", "threshold", "flips", "one_region") if k in data)
    post = data.get("postprocess")
    volume = post.get("volume") if isinstance(post, dict) else None
    opts += f"; 3D: {volume}" if volume else ""
    flat, members = _flat(data["summary"]), ensemble_members(data)
    whose = f" of an ensemble of {len(members)} runs: {', '.join(members)}" if members else ""
    return (f"<{heading}>{esc(name)}.json{esc(whose)} <span class='muted'>({esc(opts)})</span></{heading}>"
            + table(list(flat), [list(flat.values())]))


def _extras_html(run: Run) -> str:
    out = [eval_html(name, data) for name, data in run.extras.items() if name.startswith("eval_")]
    if isinstance(run.extras.get("encoder"), dict):
        out.append(f"<p>Frozen encoder: <code>{esc(run.extras['encoder'].get('encoder'))}</code></p>")
    split = run.extras.get("split")
    if isinstance(split, dict):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in split.items() if isinstance(v, list))
        source = f"<code>{esc(split['source'])}</code> layout at " if split.get("source") else ""
        out.append(f"<p>Data: {source}<code>{esc(split.get('data_dir', '?'))}</code>; split {esc(sizes)}</p>")
    return "".join(out)


def _cell(comparison: Comparison, column, value, link: Callable[[str], str | None]) -> str:
    if column.link and isinstance(value, str) and value:
        html = link(Path(value).name)
        if html:
            return html
    if isinstance(value, float) and not math.isfinite(value) or value is None:
        return "–"
    if column.format is None and isinstance(value, (int, float)):
        return fmt(value)
    return esc(comparison.cell_text(column, value))


def comparison_html(comparison: Comparison, source: str, link: Callable[[str], str | None]) -> str:
    """A comparison as an HTML section: the best cell of each higher/lower column in bold, the baseline row
    in italics. ``link(run_name)`` gives the ``<a>`` of a run of a link column (None: shown as text)."""
    cols = comparison.columns
    best = {c.key: best_rows(comparison, c) for c in cols}
    out = [f"<h3>{esc(comparison.title)}</h3><p class='muted'>From <code>{esc(source)}</code>. "
           "Best value per column in bold (↑ higher is better, ↓ lower is better)"
           + ("; the baseline row in italics" if comparison.baseline is not None else "") + ".</p>",
           "<table class='comparison'><thead><tr>",
           *(f"<th>{esc(c.heading)}{ARROWS[c.better]}</th>" for c in cols), "</tr></thead><tbody>"]
    for i, row in enumerate(comparison.rows):
        out.append('<tr class="baseline" title="baseline">' if i == comparison.baseline else "<tr>")
        for c in cols:
            value = row.get(c.key)
            classes = [k for k, yes in (("num", isinstance(value, (int, float)) and not isinstance(value, bool)),
                                        ("top", i in best[c.key])) if yes]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<td{attr}>{_cell(comparison, c, value, link)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    out += [f"<p class='muted'>{esc(note)}</p>" for note in comparison.notes]
    return "".join(out)


def run_page(run: Run, comparisons: list[tuple[str, Comparison]] = (),
             link: Callable[[str], str | None] = lambda name: None) -> str:
    """The HTML page of one run; ``comparisons`` are (source, comparison) found in its folder."""
    status = "complete" if run.complete else "unfinished (no summary.json)"
    up = up_to_runs(run.name)
    body = [f"<h1>{esc(run.name)}</h1><p class='muted'>recipe <b>{esc(run.recipe)}</b> · {status} · "
            f"{len(run.history)} epoch(s) in history.json · <a href='{up}index.html'>all runs</a></p>",
            "<h2>Summary</h2>", _summary_html(run), _extras_html(run)]
    if comparisons:
        body += ["<h2>Comparison</h2>", *(comparison_html(c, src, link) for src, c in comparisons)]
    body += ["<h2>Curves</h2>", run_charts(run) if run.history else "<p>No history yet.</p>", "<h2>Figures</h2>"]
    figures = pick_figures(run)
    body += [f'<div class="fig"><div>{esc(cap)}</div><img alt="{esc(cap)}" src="{img_data_uri(f)}"></div>'
             for cap, f in figures] or ["<p>No figures.</p>"]
    if run.history:
        keys = list(dict.fromkeys(k for h in run.history for k in h))
        body.append(f"<h2>History</h2><details><summary>{len(run.history)} epochs</summary>"
                    + table(keys, [[h.get(k) for k in keys] for h in run.history]) + "</details>")
    body.append("<h2>Config</h2>" + table(["setting", "value"], [[k, v] for k, v in run.config.items()]))
    return page(f"{run.name} — {run.recipe}", "\n".join(body))
