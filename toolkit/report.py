"""`toolkit report runs/`: a self-contained HTML page per run and an index that compares them.

    toolkit report runs/            # writes runs/<run>/report.html and runs/index.html
    make report                     # the same for runs/

Reads each run folder of the output contract (:mod:`toolkit.report_runs`) and every
comparison file (:mod:`toolkit.comparison`). Curves are inline SVG drawn from
``history.json``; figures are embedded as base64 PNG, so a page opens anywhere without
the network or the run folder. Modules, each importing only those before it:
report_html, report_runs → report_pages → report_index → report.
"""

from __future__ import annotations

import time
from pathlib import Path

from .checkpoint import atomic_write
from .report_index import index_page
from .report_pages import run_link, run_page, up_to_runs
from .report_runs import find_comparisons, find_groups, find_runs, is_run

__all__ = ["write_report"]


def write_report(root: str | Path) -> list[Path]:
    """Write ``<root>/<run>/report.html`` for every run and ``<root>/index.html``; return the paths written."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    if is_run(root):  # its pages would be none: the report reads the run folders inside the folder given
        raise ValueError(f"{root} is a run folder (it holds config.json or history.json); toolkit report takes the "
                         f"folder that holds run folders: toolkit report {root.parent}")
    runs, bad = find_runs(root)
    comparisons, bad_comparisons = find_comparisons(root)
    groups, bad_evals = find_groups(root)
    names = {r.name for r in runs}
    written = []
    for run in runs:
        own = [(f"{run.name}/{path.name}", c) for path, c in comparisons if path.parent == run.path]
        up = up_to_runs(run.name)
        text = run_page(run, own, lambda name, up=up: run_link(name, up) if name in names else None)
        written.append(atomic_write(run.path / "report.html", lambda f, t=text: f.write(t), mode="w"))
    text = index_page(root, runs, bad, time.strftime("%Y-%m-%d %H:%M:%S %Z"), comparisons, bad_comparisons, groups,
                      bad_evals)
    written.append(atomic_write(root / "index.html", lambda f: f.write(text), mode="w"))
    return written
