"""The benchmark suite's smoke run: every section runs and reports finite positive ratios."""

import json
import math
import subprocess
import sys

from bench.run import SECTIONS, table

from .utils import ROOT, run_env


def test_quick_suite_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)], cwd=ROOT, env=run_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] is True and result["machine"]["cpus"] >= 1
    assert set(result["sections"]) == set(SECTIONS)
    for name, section in result["sections"].items():
        assert "error" not in section, (name, section.get("error"))
        assert section["rows"], f"section {name} has no rows"
        for row in section["rows"]:
            for key in ("ratio", "value", "baseline_value"):
                assert math.isfinite(row[key]) and row[key] > 0, (name, row["name"], key, row[key])
            assert abs(row["ratio"] - row["value"] / row["baseline_value"]) < 1e-6 * row["ratio"]
    names = {r["name"] for s in result["sections"].values() for r in s["rows"]}
    assert {"training steps", "1 vs 2 processes: training", "recipe training (fast)",
            "recipe epoch wall (fast)"} <= names
    assert any(n.startswith("brain MRI") for n in names) and any(n.startswith("bottleneck") for n in names)
    # every recipe's model is in the precision section, each in three variants against fp32
    precision = result["sections"]["precision"]["rows"]
    assert len(precision) == 3 * len({r["name"] for r in precision}) >= 24
    assert "| trainer_overhead | training steps |" in proc.stdout


def test_table_formats_rows():
    row = {"section": "s", "name": "n", "candidate": "c", "baseline": "b", "value": 1234.5, "baseline_value": 0.5,
           "unit": "images/s", "ratio": 2469.0, "note": ""}
    text = table([row])
    assert text.splitlines()[2] == "| s | n | c | b | 1,234 | 0.5 | images/s | 2469.00 |  |"
