"""Run the STL-10 probe twice, on the pretrained encoder and on a random one, and print both test accuracies.

    LAUNCH="accelerate launch --config_file accelerate_config.yaml" python recipes/stl10_probe_compare.py
    make stl10-probe ARGS="--epochs 20"

Every argument goes to both runs of ``recipes/stl10_probe.py`` (``--encoder`` picks the
pretrained one, default the newest pretraining run); they are named
``stl10_probe-<time>-pretrained`` and ``stl10_probe-<time>-random``. The table goes to
stdout and to ``<output-dir>/stl10_probe_comparison.{json,md}``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from toolkit.checkpoint import atomic_write, save_json  # noqa: E402
from toolkit.config import parse_config  # noqa: E402

from stl10_probe import STL10ProbeConfig, resolve_encoder  # noqa: E402

RECIPE = Path(__file__).resolve().with_name("stl10_probe.py")


def run(name: str, argv: list[str], output_dir: Path) -> dict:
    """Train probe run ``name`` with ``argv`` and return its best and last test accuracy."""
    launch = os.environ.get("LAUNCH") or "accelerate launch --cpu --num_processes 1 --mixed_precision bf16"
    args = [str(RECIPE), *argv, "--run-name", name]
    print(f"training {name}: {launch} {shlex.join(args)}", flush=True)
    subprocess.run(f"{launch} {shlex.join(args)}", shell=True, check=True)
    run_dir = output_dir / name
    summary = json.loads((run_dir / "summary.json").read_text())
    encoder = json.loads((run_dir / "encoder.json").read_text())["encoder"]
    return {"run": str(run_dir), "encoder": encoder, "best_accuracy": summary["best_value"],
            "best_epoch": summary["best_epoch"], "final_accuracy": summary["final"]["accuracy"],
            "epochs": summary["epochs_completed"], "trainable_params": summary["trainable_params"]}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"--run-name", "--run_name"} & {a.split("=")[0] for a in argv}:
        raise SystemExit("error: stl10_probe_compare names the two runs itself; drop --run-name")
    cfg = parse_config(STL10ProbeConfig, argv)  # validates the arguments before any training
    if cfg.encoder == "random":
        raise SystemExit("error: --encoder must name the pretrained encoder (latest or PATH); the random one is the control")
    try:
        weights, _ = resolve_encoder(cfg)
    except ValueError as err:  # ConfigError: no pretraining run found
        raise SystemExit(f"error: {err}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pre_argv = argv + ["--encoder", str(weights)]
    results = {"pretrained": run(f"stl10_probe-{stamp}-pretrained", pre_argv, Path(cfg.output_dir)),
               "random": run(f"stl10_probe-{stamp}-random", argv + ["--encoder", "random"], Path(cfg.output_dir))}
    lines = ["| frozen encoder | best test accuracy (epoch) | last-epoch test accuracy | trainable parameters |",
             "|---|---:|---:|---:|"]
    for key, r in results.items():
        lines.append(f"| {key}: {r['encoder']} | {r['best_accuracy']:.4f} ({r['best_epoch']}) "
                     f"| {r['final_accuracy']:.4f} | {r['trainable_params']:,} |")
    gain = results["pretrained"]["final_accuracy"] - results["random"]["final_accuracy"]
    text = "\n".join(lines) + f"\n\npretraining gain over the random-encoder control (last epoch): {gain:+.4f}"
    out = Path(cfg.output_dir)
    command = f"LAUNCH={shlex.quote(os.environ.get('LAUNCH', ''))} python recipes/stl10_probe_compare.py {shlex.join(argv)}"
    save_json(out / "stl10_probe_comparison.json", {"runs": results, "gain_final": gain, "command": command})
    atomic_write(out / "stl10_probe_comparison.md", lambda f: f.write(f"{text}\n\n`{command}`\n"), mode="w")
    print(text)
    return results


if __name__ == "__main__":
    main()
