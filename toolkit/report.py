"""`toolkit report runs/`: a self-contained HTML page per run and an index that compares them.

    toolkit report runs/            # writes runs/<run>/report.html and runs/index.html
    make report                     # the same for runs/

Reads each run folder of the output contract (``config.json``, ``history.json``,
``summary.json``, ``figures/*.png``, ``eval_*.json``, ``encoder.json``, ``split.json``).
Curves are inline SVG drawn from ``history.json``; figures are embedded as base64 PNG,
so a page opens anywhere without the network or the run folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write
from .report_html import esc, img_data_uri, line_chart, page, table

__all__ = ["Run", "load_run", "find_runs", "run_page", "write_report", "main"]

NOT_CURVES = {"epoch", "val_samples", "num_images", "time_s"}
EPOCH_FIGURE = re.compile(r"^(?P<kind>.+)_epoch(?P<epoch>\d+)\.png$")


@dataclass
class Run:
    """One run folder: its parsed JSON files (summary None while the run is unfinished)."""

    name: str
    path: Path
    config: dict
    history: list[dict]
    summary: dict | None
    extras: dict[str, Any] = field(default_factory=dict)  # eval_<split>.json, encoder.json, split.json

    @property
    def recipe(self) -> str:
        return (self.summary or {}).get("recipe") or self.config.get("recipe") or "unknown"

    @property
    def monitor(self) -> str | None:
        return (self.summary or {}).get("monitor")

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def best_record(self) -> dict | None:
        """The history record of the best epoch (the last one when the run has no summary yet)."""
        epoch = (self.summary or {}).get("best_epoch")
        by_epoch = {h.get("epoch"): h for h in self.history}
        return by_epoch.get(epoch) or (self.history[-1] if self.history else None)

    def value(self, key: str) -> Any:
        """``key`` from the summary, else from the best epoch's history record."""
        if self.summary and key in self.summary:
            return self.summary[key]
        return (self.best_record or {}).get(key)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from err


def load_run(path: Path) -> Run:
    """Parse a run folder. Raises ValueError naming the file when a JSON file is unreadable or malformed."""
    path = Path(path)
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    history = _read_json(path / "history.json") if (path / "history.json").is_file() else []
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{path / 'history.json'}: expected a list of per-epoch objects")
    summary = _read_json(path / "summary.json") if (path / "summary.json").is_file() else None
    if summary is not None and not isinstance(summary, dict):
        raise ValueError(f"{path / 'summary.json'}: expected a JSON object")
    extras = {}
    for file in sorted(path.glob("eval_*.json")) + [path / "encoder.json", path / "split.json"]:
        if file.is_file():
            extras[file.stem] = _read_json(file)
    return Run(path.name, path, config, history, summary, extras)


def find_runs(root: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Run folders directly under ``root`` (those with config.json or history.json), sorted by name,
    and the (folder, reason) of those that could not be read."""
    runs, bad = [], []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        if not ((folder / "config.json").is_file() or (folder / "history.json").is_file()):
            continue
        try:
            runs.append(load_run(folder))
        except ValueError as err:
            bad.append((folder, str(err)))
    return runs, bad


def _curve(run: Run, key: str) -> list[tuple[float, float]]:
    return [(h["epoch"], h[key]) for h in run.history if key in h and "epoch" in h]


def curve_keys(history: list[dict]) -> list[str]:
    """Numeric per-epoch keys worth a chart, in first-seen order."""
    keys: list[str] = []
    for record in history:
        for key, value in record.items():
            if key not in keys and key not in NOT_CURVES and isinstance(value, (int, float)) \
                    and not isinstance(value, bool):
                keys.append(key)
    return keys


def run_charts(run: Run) -> str:
    """Inline SVG charts: losses together, the monitored metric with its best epoch ringed, then the rest."""
    keys = curve_keys(run.history)
    charts = []
    losses = [k for k in ("train_loss", "val_loss") if k in keys]
    if losses:
        charts.append(line_chart({k: _curve(run, k) for k in losses}, "loss"))
    monitor = run.monitor
    if monitor in keys and monitor not in losses:
        best = (run.summary or {}).get("best_epoch"), (run.summary or {}).get("best_value")
        charts.append(line_chart({monitor: _curve(run, monitor)}, f"{monitor} (monitored, best ringed)",
                                 mark=best if None not in best else None))
    for key in keys:
        if key not in losses and key != monitor:
            charts.append(line_chart({key: _curve(run, key)}, key))
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
    out = table(["", "value"], rows)
    final = run.summary.get("final") or {}
    best = run.best_record or {}
    keys = [k for k in curve_keys(run.history) if k in final or k in best]
    if keys:
        out += "<h3>Best and last epoch</h3>" + table(
            ["", *keys], [[f"best (epoch {best.get('epoch')})", *(best.get(k) for k in keys)],
                          [f"last (epoch {final.get('epoch')})", *(final.get(k) for k in keys)]])
    return out


def _extras_html(run: Run) -> str:
    out = []
    for name, data in run.extras.items():
        if name.startswith("eval_") and isinstance(data, dict) and isinstance(data.get("summary"), dict):
            opts = ", ".join(f"{k} {data[k]}" for k in ("split", "threshold", "flips", "one_region") if k in data)
            out.append(f"<h3>{esc(name)}.json <span class='muted'>({esc(opts)})</span></h3>"
                       + table(list(data["summary"]), [list(data["summary"].values())]))
    if isinstance(run.extras.get("encoder"), dict):
        out.append(f"<p>Frozen encoder: <code>{esc(run.extras['encoder'].get('encoder'))}</code></p>")
    split = run.extras.get("split")
    if isinstance(split, dict):
        sizes = ", ".join(f"{k} {len(v)}" for k, v in split.items() if isinstance(v, list))
        source = f"<code>{esc(split['source'])}</code> layout at " if split.get("source") else ""
        out.append(f"<p>Data: {source}<code>{esc(split.get('data_dir', '?'))}</code>; split {esc(sizes)}</p>")
    return "".join(out)


def run_page(run: Run) -> str:
    """The HTML page of one run."""
    status = "complete" if run.complete else "unfinished (no summary.json)"
    body = [f"<h1>{esc(run.name)}</h1><p class='muted'>recipe <b>{esc(run.recipe)}</b> · {status} · "
            f"{len(run.history)} epoch(s) in history.json · <a href='../index.html'>all runs</a></p>",
            "<h2>Summary</h2>", _summary_html(run), _extras_html(run), "<h2>Curves</h2>",
            run_charts(run) if run.history else "<p>No history yet.</p>", "<h2>Figures</h2>"]
    figures = pick_figures(run)
    body += [f'<div class="fig"><div>{esc(cap)}</div><img alt="{esc(cap)}" src="{img_data_uri(f)}"></div>'
             for cap, f in figures] or ["<p>No figures.</p>"]
    if run.history:
        keys = list(dict.fromkeys(k for h in run.history for k in h))
        body.append(f"<h2>History</h2><details><summary>{len(run.history)} epochs</summary>"
                    + table(keys, [[h.get(k) for k in keys] for h in run.history]) + "</details>")
    body.append("<h2>Config</h2>" + table(["setting", "value"], [[k, v] for k, v in run.config.items()]))
    return page(f"{run.name} — {run.recipe}", "\n".join(body))


def write_report(root: str | Path) -> list[Path]:
    """Write ``<root>/<run>/report.html`` for every run and ``<root>/index.html``; return the paths written."""
    from .report_index import index_page

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    runs, bad = find_runs(root)
    written = []
    for run in runs:
        text = run_page(run)
        written.append(atomic_write(run.path / "report.html", lambda f, t=text: f.write(t), mode="w"))
    text = index_page(root, runs, bad, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    written.append(atomic_write(root / "index.html", lambda f: f.write(text), mode="w"))
    for path in written:
        path.chmod(0o644)  # atomic_write's temporary file is owner-only; pages are meant to be shared
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="toolkit report", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default="runs", help="folder holding run folders (default: runs)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.runs_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written) - 1} run page(s) and {written[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
