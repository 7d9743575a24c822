"""Kill harness: SIGKILL a training run at random moments, resume it, repeat; compare with an unkilled run.

    nice -n 19 python tools/kill_harness.py --trials 20 --seed 0 --workdir /tmp/kill-harness

Trains the MNIST denoising autoencoder (recipes/mnist_autoencoder.py, the CNN at small
widths) on generated MNIST-format files, on the CPU with one thread, saving a state every
``--checkpoint-every`` optimizer steps. It first runs once without interruption (the
reference), then starts the same run and kills it with SIGKILL after a random delay drawn
(seeded) from (0.5 s, reference duration), classifies where the kill landed (before the
first state, during a state write = a hidden ``state/.tmp-*`` folder was left, otherwise
during a training step or evaluation), checks that the state ``--resume`` will use is
complete and loads with ``weights_only=True``, and relaunches with ``--resume``. After
``--trials`` kills it lets the run finish and compares the final state's weights and
``best.safetensors`` with the reference's using ``torch.equal`` (bit-exact).
Prints a JSON report (also written to ``<workdir>/report.json``); exit status 0 when every
trial survived and the weights are equal.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fake_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """MNIST/raw/*.gz idx files of Gaussian blobs (uint8 28 x 28 images, labels 0..9)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        cy, cx, r = rng.uniform(9, 19, (3, n, 1, 1))
        images = np.clip(255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r / 3) ** 2)), 0, 255)
        for name, array in ((f"{prefix}-images-idx3-ubyte", images.astype(np.uint8)),
                            (f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(k).to_bytes(4, "big") for k in array.shape)
            (raw / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))


def command(workdir: Path, run_name: str, args: argparse.Namespace, resume: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "recipes" / "mnist_autoencoder.py"), "--data-dir", str(workdir / "data"),
           "--download", "false", "--model", "cnn", "--cnn-channels", "4,8,4", "--task", "denoising",
           "--epochs", str(args.epochs), "--batch-size", "32", "--val-images", "64", "--num-workers", "0",
           "--checkpoint-every", str(args.checkpoint_every), "--keep-states", "2", "--wandb-mode", "disabled",
           "--output-dir", str(workdir / "runs"), "--run-name", run_name, "--seed", "0"]
    return cmd + ["--resume"] * resume


def env() -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "WANDB_MODE": "disabled",
              "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1",
              "PYTHONPATH": str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")})
    return e


def state_is_sound(run_dir: Path) -> tuple[bool, str]:
    """(whether the state --resume would use is complete and safely loadable, its name or the problem)."""
    from safetensors.torch import load_file

    from toolkit.state_folders import STATE_MARKER, check_state_files, find_state

    state = find_state(run_dir)
    if state is None:
        return True, "none"
    try:
        check_state_files(state)
        load_file(str(state / "model.safetensors"))
        json.loads((state / STATE_MARKER).read_text())
    except Exception as err:  # noqa: BLE001 - reported
        return False, f"{state.name}: {err}"
    return True, state.name


def wait_for_training(proc: subprocess.Popen, log: Path, timeout: float) -> float:
    """Wait until the run prints its parameter line (start-up done, training begins); return the time."""
    end = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < end:
        if "trainable /" in log.read_text():
            break
        time.sleep(0.02)
    return time.perf_counter()


def wait_for_state_write(proc: subprocess.Popen, run_dir: Path, after_s: float, timeout: float) -> None:
    """After ``after_s`` seconds, return as soon as a state is being written (a ``state/.tmp-*`` folder exists)."""
    time.sleep(after_s)
    end = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < end:
        if (run_dir / "state").is_dir() and any((run_dir / "state").glob(".tmp-*")):
            return
        time.sleep(0.001)


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from toolkit.state_folders import find_state

    return {"state": load_file(str(find_state(run_dir) / "model.safetensors")),
            "best": load_file(str(run_dir / "best.safetensors"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="number of SIGKILLs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moments")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the training run")
    parser.add_argument("--checkpoint-every", type=int, default=2, help="optimizer steps between states")
    parser.add_argument("--workdir", default="/tmp/kill-harness", help="data, runs and logs go here (emptied)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one launch may take")
    args = parser.parse_args(argv)
    import shutil

    import torch

    from toolkit.state_folders import find_state

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "logs").mkdir(parents=True)
    fake_mnist(workdir / "data", n_train=640, n_test=64)
    rng = random.Random(args.seed)

    ref_log = workdir / "logs" / "reference.log"
    with open(ref_log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command(workdir, "reference", args, False), env=env(), stdout=out,
                                stderr=subprocess.STDOUT)
        started = wait_for_training(proc, ref_log, args.timeout)
        proc.wait(timeout=args.timeout)
    train_s = time.perf_counter() - started  # training + evaluation + state writes, without start-up
    reference_s = time.perf_counter() - start
    if proc.returncode != 0:
        print(ref_log.read_text()[-3000:], file=sys.stderr)
        return 2

    trials, launches, runs = [], 0, []
    while len(trials) < args.trials:  # one cycle: a fresh run, killed and resumed until it finishes
        run_dir = workdir / "runs" / f"killed-{len(runs)}"
        while True:
            resume = find_state(run_dir) is not None
            log = workdir / "logs" / f"launch{launches:03d}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(command(workdir, run_dir.name, args, resume), env=env(), stdout=out,
                                        stderr=subprocess.STDOUT)
                launches += 1
                if len(trials) < args.trials:
                    mode = rng.choice(["random moment", "state write"])
                    wait_for_training(proc, log, args.timeout)
                    if mode == "random moment":
                        time.sleep(rng.uniform(0.0, train_s))
                    else:
                        wait_for_state_write(proc, run_dir, rng.uniform(0.0, train_s / 2), args.timeout)
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        tmp_left = (run_dir / "state").is_dir() and any((run_dir / "state").glob(".tmp-*"))
                        sound, state = state_is_sound(run_dir)
                        where = ("before the first state" if state == "none" else
                                 "during a state write" if tmp_left else "during a step or evaluation")
                        trials.append({"run": run_dir.name, "aimed_at": mode, "landed": where,
                                       "state_after_kill": state, "state_sound": sound})
                        continue
                proc.wait(timeout=args.timeout)
            if proc.returncode != 0:
                print(log.read_text()[-3000:], file=sys.stderr)
                return 1
            break  # this run finished
        a, b = final_weights(workdir / "runs" / "reference"), final_weights(run_dir)
        equal = all(a[k].keys() == b[k].keys() and all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in a)
        epochs = [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())]
        runs.append({"run": run_dir.name, "kills": sum(t["run"] == run_dir.name for t in trials),
                     "weights_equal": equal, "history_epochs_ok": epochs == list(range(1, args.epochs + 1))})
    # a trial survived when the state the kill left was sound and its run then finished equal to the reference
    good_runs = {r["run"] for r in runs if r["weights_equal"] and r["history_epochs_ok"]}
    survived = sum(t["state_sound"] and t["run"] in good_runs for t in trials)
    count = lambda key: {k: sum(t[key] == k for t in trials) for k in sorted({t[key] for t in trials})}  # noqa: E731
    report = {
        "trials_run": len(trials), "trials_survived": survived, "launches": launches,
        "launches_that_resumed": sum("resumed" in f.read_text() for f in (workdir / "logs").glob("launch*.log")),
        "aimed_at": count("aimed_at"), "landed": count("landed"), "runs": runs,
        "comparison": "torch.equal on every tensor of the final state's model.safetensors and of "
                      "best.safetensors against the uninterrupted reference run",
        "reference_run_s": round(reference_s, 1), "reference_training_s": round(train_s, 1), "seed": args.seed,
        "epochs": args.epochs, "checkpoint_every": args.checkpoint_every, "trials": trials,
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "trials"}, indent=2))
    return 0 if survived == len(trials) and len(good_runs) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
