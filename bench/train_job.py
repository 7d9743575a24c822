"""A small fixed training job, run under ``accelerate launch`` by the process benchmarks and the multi-node test.

    accelerate launch --cpu --num_processes 1 bench/train_job.py --out DIR
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 bench/train_job.py --out DIR
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_machines 2 --num_processes 2 --machine_rank 0 \\
        --main_process_ip 127.0.0.1 --main_process_port 29555 bench/train_job.py --out DIR   # and rank 1

The same work whatever the number of processes: ``--images`` random CIFAR-sized uint8 images
(the same in every process), ``--epochs`` passes, a global batch of ``--global-batch``
images split evenly over the processes, the CIFAR-10 ResNet (``--width``, ``--depth``).
Every process writes ``DIR/rank<global rank>.json``: its rank, the number of processes,
the SHA-256 of its final weights (parameters and buffers), the run folder and the
Trainer's training time; the run folder is ``DIR/runs/<--run-name>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit import Accuracy, ClassificationObjective, TrainConfig, Trainer  # noqa: E402
from toolkit.data.cifar import CIFARTensorDataset  # noqa: E402
from toolkit.models.classifiers import CIFARResNet  # noqa: E402


def weights_digest(state: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for rank<k>.json and runs/")
    p.add_argument("--run-name", default="job", help="run folder name under OUT/runs")
    p.add_argument("--images", type=int, default=2048, help="training images (validation: a quarter as many)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training images")
    p.add_argument("--global-batch", type=int, default=64, help="images per optimizer step over all processes")
    p.add_argument("--width", type=int, default=16, help="ResNet width")
    p.add_argument("--depth", type=int, default=2, help="residual blocks per stage")
    args = p.parse_args(argv)
    out = Path(args.out)

    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    if args.global_batch % processes:
        raise SystemExit(f"--global-batch {args.global_batch} does not split over {processes} processes")
    cfg = TrainConfig(output_dir=str(out / "runs"), run_name=args.run_name, epochs=args.epochs, num_workers=0,
                      batch_size=args.global_batch // processes, optimizer="sgd", lr=0.05, wandb_mode="disabled",
                      seed=0)
    trainer = Trainer(cfg, recipe="bench_job")
    acc = trainer.accelerator
    g = torch.Generator().manual_seed(0)  # the same data in every process

    def data(n: int) -> CIFARTensorDataset:
        return CIFARTensorDataset(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                                  torch.randint(0, 10, (n,), generator=g))

    train, val = data(args.images), data(max(args.images // 4, 2 * args.global_batch))
    torch.manual_seed(0)  # the same initial weights in every process
    model = CIFARResNet(width=args.width, depth=args.depth)
    history = trainer.fit(model, ClassificationObjective(), train, val, metrics=[Accuracy()], monitor="val_loss",
                          mode="min", param_budget=500_000)
    record = {"rank": acc.process_index, "num_processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
              "weights_sha256": weights_digest(model.state_dict()), "run_dir": str(trainer.run_dir),
              "train_time_s": sum(h["time_s"] for h in history), "images_seen": args.images * args.epochs,
              "final": history[-1], "torch_threads": torch.get_num_threads()}
    (out / f"rank{acc.process_index}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
