"""Run the STL-10 probe twice, on the pretrained encoder and on a random one, and print both test accuracies.

    LAUNCH="accelerate launch --config_file accelerate_config.yaml" python recipes/stl10_probe_compare.py
    make stl10-probe ARGS="--epochs 20"
    make stl10-probe ARGS="--dataset cifar10 --data-dir ../shared/data/cifar10"   # the CIFAR-10 check

Every argument goes to both runs of ``recipes/stl10_probe.py`` (``--encoder`` picks the
pretrained one, default the newest pretraining run); they are named
``stl10_probe-<time>-pretrained`` and ``stl10_probe-<time>-random``. The table goes to
stdout and to ``<output-dir>/<name>_comparison.{json,md}``; ``<output-dir>/<name>.comparison.json``
is the same table for `toolkit report`; ``<name>`` is ``stl10_probe`` (``--dataset stl10``) or
``cifar10_probe`` (``--dataset cifar10``), so the two checks do not overwrite each other.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from stl10_probe import STL10ProbeConfig, resolve_encoder  # the recipe beside this script
from toolkit import Column, Comparison, RunResult, command_line, parse_config, refuse_flags, train_run
from toolkit import ConfigError, driver_help, run_recipe, split_args, write_comparison

RECIPE = Path(__file__).resolve().with_name("stl10_probe.py")
COLUMNS = [Column("encoder", "frozen encoder"), Column("run", link=True),
           Column("best_accuracy", "best test accuracy", better="higher", format=".4f"),
           Column("best_epoch", "best epoch"),
           Column("final_accuracy", "last-epoch test accuracy", better="higher", format=".4f"),
           Column("trainable_params", "trainable parameters", format=",")]


def result(run_dir: Path) -> dict:
    """Best and last test accuracy of a finished probe run."""
    run = RunResult.load(run_dir)
    s = run.summary
    return {"run": str(run_dir), "encoder": run.json("encoder.json")["encoder"], "best_accuracy": s["best_value"],
            "best_epoch": s["best_epoch"], "final_accuracy": s["final"]["accuracy"],
            "epochs": s["epochs_completed"], "trainable_params": s["trainable_params"]}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # this script's help, not the recipe's (whose --run-name it refuses)
        driver_help(__doc__, STL10ProbeConfig, ("run_name",), "Settings of both runs (recipes/stl10_probe.py); "
                    "--run-name is set here (refused); --encoder names the pretrained one:")
    refuse_flags(argv, {"--run-name", "--run_name"}, "stl10_probe_compare names the two runs itself; drop --run-name")
    cfg = parse_config(STL10ProbeConfig, argv)  # validates the arguments before any training
    if cfg.encoder == "random":
        raise ConfigError("--encoder must name the pretrained encoder (latest or PATH); the random one is the control")
    try:
        weights, _ = resolve_encoder(cfg)
    except ValueError as err:  # no pretraining run found, an unreadable config.json: "error: ...", exit status 2
        raise ConfigError(str(err)) from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    shared = split_args(argv, {"encoder"})[1]  # each run's --encoder is set here (a key given twice is refused)
    results = {kind: result(train_run(RECIPE, [*shared, "--encoder", encoder], f"stl10_probe-{stamp}-{kind}",
                                      cfg.output_dir, reuse=False))
               for kind, encoder in (("pretrained", str(weights)), ("random", "random"))}
    gain = results["pretrained"]["final_accuracy"] - results["random"]["final_accuracy"]
    rows = [{**{c.key: r[c.key] for c in COLUMNS}, "encoder": f"{kind}: {r['encoder']}",
             "run": Path(r["run"]).name} for kind, r in results.items()]
    note = f"pretraining gain over the random-encoder control (last epoch): {gain:+.4f}"
    title = {"stl10": "STL-10", "cifar10": "CIFAR-10"}[cfg.dataset]
    table = Comparison(f"{title} linear probe: pretrained vs random frozen encoder (test set)", COLUMNS, rows,
                       baseline=1, notes=[note])
    command = command_line("recipes/stl10_probe_compare.py", argv)
    write_comparison(table, cfg.output_dir, f"{cfg.dataset}_probe", footer=f"`{command}`",
                     raw={"runs": results, "gain_final": gain, "command": command, "dataset": cfg.dataset})
    return results


if __name__ == "__main__":
    run_recipe(main)
