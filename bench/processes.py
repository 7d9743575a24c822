"""Processes: the same fixed training job (``bench/train_job.py``) in 1 process, in 2 processes on this machine
(the distributed path), and as 2 "machines" of 1 process each on the loopback interface (the multi-node path).

Each variant is a fresh ``accelerate launch`` (CPU, bf16 autocast where supported, no dynamo):

- 1 process:   ``accelerate launch --cpu --num_processes 1 ...``
- 2 processes: ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 ...``
- 2 machines:  two commands ``... --multi_gpu --num_machines 2 --num_processes 2 --machine_rank 0|1
  --main_process_ip 127.0.0.1 --main_process_port PORT``, started together.

Same work in all: the same images, epochs and global batch (split over the processes).
Figures: training images/s from the Trainer's own epoch clocks (``time_s``), and the wall
time of the whole command (start-up, data, training, evaluation, checkpoints). The two
machines must agree: identical final weights on both ranks and one run folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Row, median
from .trainer_overhead import _bf16_supported

SECTION = "processes"
ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (for torch.distributed rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cpu_multi: bool) -> dict:
    env = dict(os.environ, WANDB_MODE="disabled", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cpu_multi:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def launch_commands(kind: str, out: Path, job_args: list[str], precision: str) -> list[list[str]]:
    """The accelerate launch command(s) of a variant: ``one``, ``two`` or ``machines`` (two commands)."""
    common = ["--mixed_precision", precision, "--dynamo_backend", "no"]
    script = [str(ROOT / "bench" / "train_job.py"), "--out", str(out), *job_args]
    if kind == "one":
        return [[*LAUNCH, "--cpu", "--num_processes", "1", "--num_machines", "1", *common, *script]]
    if kind == "two":
        return [[*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
                 str(free_port()), *common, *script]]
    port = str(free_port())
    return [[*LAUNCH, "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
             "--main_process_ip", "127.0.0.1", "--main_process_port", port, *common, *script] for rank in (0, 1)]


def run_variant(kind: str, out: Path, job_args: list[str], precision: str, timeout: int = 300) -> dict:
    """Run one variant to the end; returns wall seconds, the rank records and the run folders made.

    Each command's output goes to ``out/launch<k>.log``, not to a pipe: a pipe that is read only after
    another command ends fills up and blocks its writer, and a blocked machine stalls the other in its
    collectives. On failure or after ``timeout`` seconds (all commands together) every command is killed
    and the error carries the end of each log.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    commands = launch_commands(kind, out, job_args, precision)
    logs = [out / f"launch{k}.log" for k in range(len(commands))]
    procs = []
    for cmd, log in zip(commands, logs):
        with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(kind != "one"), stdout=handle,
                                          stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        killed = [p.poll() is None for p in procs]
        for p, kill in zip(procs, killed):
            if kill:
                os.killpg(p.pid, signal.SIGKILL)  # the launcher and the workers it started
                p.wait()
    wall = time.perf_counter() - start
    failed = [f"command {k} (exit {p.returncode}{', killed after the timeout' if kill else ''}):\n"
              + log.read_text(errors="replace")[-3000:]
              for k, (p, log, kill) in enumerate(zip(procs, logs, killed)) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{kind}: accelerate launch failed or hung ({wall:.0f} s, timeout {timeout} s):\n"
                           + "\n".join(failed))
    ranks = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
    return {"wall_s": wall, "ranks": ranks, "run_dirs": sorted(p.name for p in (out / "runs").iterdir())}


def run(quick: bool = False, repeats: int = 2) -> tuple[list[Row], dict]:
    precision = "bf16" if _bf16_supported() else "no"
    job = (["--images", "128", "--epochs", "1", "--global-batch", "32", "--width", "8", "--depth", "1"] if quick else
           ["--images", "2048", "--epochs", "1", "--global-batch", "64", "--width", "16", "--depth", "2"])
    kinds = ["one", "two"] if quick else ["one", "two", "machines"]  # tests/test_multinode.py covers machines
    repeats = 1 if quick else repeats
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as tmp:
        for r in range(repeats):
            k = r % len(kinds)
            for kind in kinds[k:] + kinds[:k]:  # interleaved, rotated
                results[kind].append(run_variant(kind, Path(tmp) / f"{kind}{r}", job, precision))
    images = results["one"][0]["ranks"][0]["images_seen"]

    def rate(kind: str) -> float:  # training images/s: every rank trains its share in parallel; the slowest counts
        return median([images / max(rk["train_time_s"] for rk in res["ranks"]) for res in results[kind]])

    def wall(kind: str) -> float:
        return median([res["wall_s"] for res in results[kind]])

    note = f"{images} images, global batch {job[job.index('--global-batch') + 1]}, precision {precision}"
    rows = [Row(SECTION, "1 vs 2 processes: training", "2 processes", "1 process", rate("two"), rate("one"),
                "images/s", rate("two") / rate("one"), note=note),
            Row(SECTION, "1 vs 2 processes: whole command", "2 processes", "1 process", wall("two"), wall("one"), "s",
                wall("two") / wall("one"), note="wall time incl. launch, evaluation, checkpoints")]
    info = {"precision": precision, "job_args": job,
            "threads_per_process": {k: results[k][0]["ranks"][0]["torch_threads"] for k in kinds}}
    if "machines" in results:
        rows.append(Row(SECTION, "2 machines x 1 process (loopback)", "2 machines", "2 processes, 1 machine",
                        rate("machines"), rate("two"), "images/s", rate("machines") / rate("two"), note=note))
        agree = [len({rk["weights_sha256"] for rk in res["ranks"]}) == 1 and len(res["ranks"]) == 2
                 and len(res["run_dirs"]) == 1 for res in results["machines"]]
        info["machines_agree"] = all(agree)
    return rows, info
