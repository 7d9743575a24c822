"""The benchmark suite: every figure a ratio against a baseline measured in the same run.

    make bench                                  # the full suite (about 10 minutes on a 2-core CPU)
    make bench ARGS="--quick"                   # a smoke run on tiny sizes (about a minute)
    python -m bench.run --only precision,compile --out runs/bench/bench.json

Sections (one module each): trainer_overhead, precision, seg_models, pipelines, processes, compile, cifar10.
Prints a markdown table and writes ``--out`` (JSON): the machine, the command, and per
section its rows (candidate, baseline, both values, unit, ratio) and its findings.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_info  # noqa: E402

SECTIONS = ("trainer_overhead", "precision", "seg_models", "pipelines", "processes", "compile", "cifar10")


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def table(rows: list[dict]) -> str:
    """Markdown table of result rows (dicts of :class:`bench.common.Row`)."""
    lines = ["| section | benchmark | candidate | baseline | value | baseline value | unit | ratio | notes |",
             "|---|---|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['section']} | {r['name']} | {r['candidate']} | {r['baseline']} | {_fmt(r['value'])} | "
                     f"{_fmt(r['baseline_value'])} | {r['unit']} | {r['ratio']:.2f} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 repeats: a smoke run, not figures")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats per figure (0 = each section's default)")
    parser.add_argument("--out", default="runs/bench/bench.json", help="JSON results file")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")

    from toolkit.checkpoint import save_json

    result = {"machine": machine_info(), "command": " ".join(["python -m bench.run", *(argv or sys.argv[1:])]),
              "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": {}}
    failed = []
    for name in chosen:
        module = importlib.import_module(f"bench.{name}")
        kwargs = {"quick": args.quick}
        if args.repeats or args.quick:
            kwargs["repeats"] = args.repeats or 2
        rates = result["sections"].get("precision", {}).get("info", {}).get("default_rates")
        if name == "pipelines" and rates:
            kwargs["model_rates"] = rates  # the model side of the bottleneck figures, measured just before
        print(f"== {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            rows, info = module.run(**kwargs)
        except Exception as err:  # report the section as failed and go on with the others
            traceback.print_exc()
            failed.append(name)
            result["sections"][name] = {"error": f"{type(err).__name__}: {err}", "rows": []}
            continue
        rows = [r.as_dict() for r in rows]
        result["sections"][name] = {"rows": rows, "info": info, "seconds": time.perf_counter() - start}
        print(table(rows), flush=True)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    all_rows = [r for s in result["sections"].values() for r in s["rows"]]
    print("\n" + table(all_rows))
    m = result["machine"]
    print(f"\nmachine: {m['cpu_model']}, {m['cpus']} CPUs, GPU {m['gpu'] or 'none'}, torch {m['torch']}; "
          f"load average {m['loadavg'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end")
    for name, sec in result["sections"].items():
        if sec.get("info"):
            print(f"{name}: {json.dumps(sec['info'], default=str)}")
    save_json(args.out, result)
    print(f"results in {args.out}")
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
