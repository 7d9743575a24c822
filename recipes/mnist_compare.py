"""Compare the MNIST autoencoders: parameters, test MSE and PSNR, both models x both tasks, and PCA-15.

    LAUNCH="accelerate launch --cpu --mixed_precision bf16" python recipes/mnist_compare.py --data-dir DIR
    make compare-mnist ARGS="--data-dir ../shared/data/mnist"

Every other argument goes to each of the four runs of ``recipes/mnist_autoencoder.py``,
named ``mnist-<model>-<task>`` under ``--output-dir``; a run whose ``summary.json``
exists is reused, an interrupted one is resumed. The table goes to stdout and to
``<output-dir>/mnist_comparison.{json,md}``; ``<output-dir>/mnist.comparison.json`` is the
same table for `toolkit report`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mnist_autoencoder import MNISTConfig  # the recipe beside this script
from toolkit import Column, Comparison, RunResult, command_line, parse_config, refuse_flags, train_run
from toolkit import ConfigError, driver_help, run_recipe, write_comparison
from toolkit.data import add_gaussian_noise, load_mnist, to_unit_range

RECIPE = Path(__file__).resolve().with_name("mnist_autoencoder.py")
MODELS, TASKS = ("linear", "cnn"), ("reconstruction", "denoising")
COLUMNS = [Column("model"), Column("params", "parameters", format=","), Column("code"),
           Column("reconstruction_mse", "reconstruction MSE", better="lower", format=".4f"),
           Column("reconstruction_psnr", "PSNR", "dB", better="higher", format=".2f"),
           Column("denoising_mse", "denoising MSE", better="lower", format=".4f"),
           Column("denoising_psnr", "PSNR", "dB", better="higher", format=".2f")]


def pca_mse(cfg: MNISTConfig, k: int = 15) -> dict[str, float]:
    """Test MSE of a k-component PCA fitted on the train images: clean input and noisy input (clean target).

    Reconstructions are clamped to [0, 1] like the autoencoders' outputs; noise is
    ``add_gaussian_noise(std=cfg.noise_std)`` drawn from seed ``cfg.seed``.
    """
    train, test = (to_unit_range(load_mnist(cfg.data_dir, t, cfg.download).tensors[0]).flatten(1).double()
                   for t in (True, False))
    mean = train.mean(0)
    basis = torch.linalg.eigh((train - mean).T @ (train - mean))[1][:, -k:]  # top-k principal axes (784, k)
    torch.manual_seed(cfg.seed)
    noisy = add_gaussian_noise(test, cfg.noise_std).double()
    mse = {task: float((((x - mean) @ basis @ basis.T + mean).clamp(0, 1) - test).pow(2).mean())
           for task, x in (("reconstruction", test), ("denoising", noisy))}
    return {"params": basis.numel() + mean.numel(), **mse}


def result(run_dir: Path) -> dict:
    """The best-epoch test record of a finished run."""
    run = RunResult.load(run_dir)
    s = run.summary
    return {"params": s["trainable_params"], "mse": run.best["mse"], "psnr": run.best["psnr"],
            "best_epoch": s["best_epoch"], "epochs": s["epochs_completed"], "wall_time_s": s["wall_time_s"],
            "mixed_precision": s["mixed_precision"]}


def comparison(results: dict, pca: dict, cfg: MNISTConfig) -> Comparison:
    """One row per model, MSE and PSNR (dB) of both tasks on the test set; PCA-15 is the baseline row."""
    c3 = cfg.cnn_channels[-1]
    codes = {"linear": "15 numbers", "cnn": f"{c3} numbers + {c3} pool positions"}
    rows = [{"model": m, "params": results[f"{m}-reconstruction"]["params"], "code": codes[m],
             **{f"{t}_{k}": results[f"{m}-{t}"][k] for t in TASKS for k in ("mse", "psnr")}} for m in MODELS]
    rows.append({"model": "PCA-15 (baseline)", "params": pca["params"], "code": "15 numbers",
                 **{f"{t}_mse": pca[t] for t in TASKS}})
    return Comparison("MNIST autoencoders (test set)", COLUMNS, rows, baseline=len(rows) - 1)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # this script's help, not the recipe's (whose --run-name it refuses)
        driver_help(__doc__, MNISTConfig, ("run_name", "model", "task"), "Settings of the four runs "
                    "(recipes/mnist_autoencoder.py); --model, --task and --run-name are set here (refused):")
    cfg = parse_config(MNISTConfig, argv)  # validates the arguments before any training
    refuse_flags(argv, {"--model", "--task", "--run-name", "--run_name"},
                 "mnist_compare sets --model, --task and --run-name itself")
    if cfg.val_images:  # the runs would report held-out training images in a table of test-set figures
        raise ConfigError("mnist_compare scores the four runs and the PCA baseline on the test set; drop "
                         f"--val-images {cfg.val_images} (it scores held-out training images instead)")
    results = {f"{m}-{t}": result(train_run(RECIPE, [*argv, "--model", m, "--task", t], f"mnist-{m}-{t}",
                                            cfg.output_dir))
               for m in MODELS for t in TASKS}
    pca = pca_mse(cfg)
    command = command_line("recipes/mnist_compare.py", argv)
    write_comparison(comparison(results, pca, cfg), cfg.output_dir, "mnist",
                     raw={"runs": results, "pca15": pca, "noise_std": cfg.noise_std, "command": command},
                     footer=f"Test set (10,000 images); `{command}`")
    return {"runs": results, "pca15": pca}


if __name__ == "__main__":
    run_recipe(main)
