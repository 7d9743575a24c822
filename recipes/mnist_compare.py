"""Compare the MNIST autoencoders: parameters, test MSE and PSNR, both models x both tasks, and PCA-15.

    LAUNCH="accelerate launch --cpu --mixed_precision bf16" python recipes/mnist_compare.py --data-dir DIR
    make compare-mnist ARGS="--data-dir ../shared/data/mnist"

Every other argument goes to each of the four runs of ``recipes/mnist_autoencoder.py``,
named ``mnist-<model>-<task>`` under ``--output-dir``; a run whose ``summary.json``
exists is reused, an interrupted one is resumed. The table goes to stdout and to
``<output-dir>/mnist_comparison.{json,md}``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from toolkit.checkpoint import find_state, save_json  # noqa: E402
from toolkit.config import parse_config  # noqa: E402
from toolkit.data.batch_transforms import add_gaussian_noise, to_unit_range  # noqa: E402
from toolkit.data.mnist import load_mnist  # noqa: E402

from mnist_autoencoder import MNISTConfig  # noqa: E402

RECIPE = Path(__file__).resolve().with_name("mnist_autoencoder.py")
MODELS, TASKS = ("linear", "cnn"), ("reconstruction", "denoising")


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


def run(name: str, model: str, task: str, cfg: MNISTConfig, argv: list[str]) -> dict:
    """The best-epoch test record of run ``name``, training (or resuming) it first if needed."""
    run_dir = Path(cfg.output_dir) / name
    if not (run_dir / "summary.json").is_file():
        launch = os.environ.get("LAUNCH") or "accelerate launch --cpu --mixed_precision bf16"
        args = [str(RECIPE), *argv, "--model", model, "--task", task, "--run-name", name]
        args += ["--resume"] * (find_state(run_dir) is not None)
        print(f"training {name}: {launch} {shlex.join(args)}", flush=True)
        subprocess.run(f"{launch} {shlex.join(args)}", shell=True, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    best = json.loads((run_dir / "history.json").read_text())[summary["best_epoch"] - 1]
    return {"params": summary["trainable_params"], "mse": best["mse"], "psnr": best["psnr"],
            "best_epoch": summary["best_epoch"], "epochs": summary["epochs_completed"],
            "wall_time_s": summary["wall_time_s"], "mixed_precision": summary["mixed_precision"]}


def table(results: dict, pca: dict, cfg: MNISTConfig) -> str:
    """Markdown table: one row per model, MSE and PSNR (dB) of both tasks on the test set."""
    c3 = cfg.cnn_channels[-1]
    codes = {"linear": "15 numbers", "cnn": f"{c3} numbers + {c3} pool positions"}
    lines = ["| model | parameters | code | reconstruction MSE | PSNR (dB) | denoising MSE | PSNR (dB) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for model in MODELS:
        rec, den = results[f"{model}-reconstruction"], results[f"{model}-denoising"]
        lines.append(f"| {model} | {rec['params']:,} | {codes[model]} | {rec['mse']:.4f} | {rec['psnr']:.2f} "
                     f"| {den['mse']:.4f} | {den['psnr']:.2f} |")
    lines.append(f"| PCA-15 (baseline) | {pca['params']:,} | 15 numbers | {pca['reconstruction']:.4f} | – "
                 f"| {pca['denoising']:.4f} | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(MNISTConfig, argv)  # validates the arguments before any training
    if {"--model", "--task", "--run-name", "--run_name"} & {a.split("=")[0] for a in argv}:
        raise SystemExit("error: mnist_compare sets --model, --task and --run-name itself")
    results = {f"{m}-{t}": run(f"mnist-{m}-{t}", m, t, cfg, argv) for m in MODELS for t in TASKS}
    pca = pca_mse(cfg)
    text = table(results, pca, cfg)
    command = f"LAUNCH={shlex.quote(os.environ.get('LAUNCH', ''))} python recipes/mnist_compare.py {shlex.join(argv)}"
    out = Path(cfg.output_dir)
    save_json(out / "mnist_comparison.json", {"runs": results, "pca15": pca, "noise_std": cfg.noise_std,
                                              "command": command})
    (out / "mnist_comparison.md").write_text(f"{text}\n\nTest set (10,000 images); `{command}`\n")
    print(text)
    return {"runs": results, "pca15": pca}


if __name__ == "__main__":
    main()
