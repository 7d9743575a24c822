"""Trainer overhead: ``Trainer.fit`` against a plain hand-written PyTorch loop doing the same work.

Same model (the CIFAR-10 ResNet with the same initial weights), same data (random uint8
images in memory, one epoch of ``steps`` batches, ``num_workers=0``), same precision (the
Trainer's Accelerator and the hand loop both use bf16 autocast when this machine supports
it, else fp32), same channels_last layout, same optimiser, LR schedule and gradient clipping.

The clock is outside both loops and the same for both: it starts when the training set's
first item is read and stops when the validation set's first item is read (right after the
last training step). So it covers the data loading and every training step, and leaves out
set-up, evaluation and checkpoint writing, which ``fit total`` then adds for the Trainer
(Accelerator set-up, evaluation, best.pth, state/, history.json, figures) against the hand
loop plus a plain evaluation pass and one ``torch.save``. A third row times one linear layer on the flattened
images (300 steps) the same way: the difference per step is the Trainer's own work, which a GPU running a small
model cannot hide behind its kernels.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .common import Row, interleaved, median

SECTION = "trainer_overhead"


class ClockedImages(Dataset):
    """n random images (3, 32, 32) uint8 with labels 0..9; ``first_read`` holds the perf_counter time of the
    first ``__getitem__`` since the last ``reset()``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 10, (n,), generator=g)
        self.first_read: float | None = None

    def reset(self) -> None:
        self.first_read = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if self.first_read is None:
            self.first_read = time.perf_counter()
        return self.images[i], self.labels[i]


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def _bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from toolkit.compare import cpu_precision  # the rule the Makefile and the compare scripts use

    return cpu_precision() == "bf16"


class Bench:
    """The Trainer and the hand loop on one model: the ResNet-20, or (``tiny``) one linear layer on the
    flattened image, whose steps cost so little that the difference is the Trainer's own per-step work."""

    def __init__(self, quick: bool, root: Path, tiny: bool = False) -> None:
        from toolkit import TrainConfig
        from toolkit.models.classifiers import CIFARResNet

        self.batch, steps = (8, 6) if quick else (64, 300 if tiny else 30)
        self.width, self.depth = (8, 1) if quick else (16, 3)  # width 4: a 1x1 stride-2 conv 4->8 hangs in
        # channels_last fp32 backward on some AVX2 CPUs (oneDNN in torch 2.14.1)
        self.train = ClockedImages(self.batch * steps, seed=1)
        self.val = ClockedImages(2 * self.batch, seed=2)
        self.precision = "bf16" if _bf16_supported() else "no"
        self.root, self.run = root, 0
        self.cfg = lambda name: TrainConfig(
            output_dir=str(root), run_name=name, epochs=1, batch_size=self.batch, num_workers=0, optimizer="sgd",
            lr=0.05, max_grad_norm=1.0, wandb_mode="disabled", channels_last=True, seed=0)
        self.model = lambda: (torch.manual_seed(0), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(
            3 * 32 * 32, 10)) if tiny else CIFARResNet(width=self.width, depth=self.depth))[1]
        self.wall: dict[str, list[float]] = {"trainer": [], "hand": []}

    def _span(self) -> float:
        return self.val.first_read - self.train.first_read

    def trainer(self) -> float:
        from toolkit import Trainer
        from toolkit.objectives import ClassificationObjective

        self.train.reset(), self.val.reset()
        self.run += 1
        start = time.perf_counter()
        _reset_accelerate()
        os.environ["ACCELERATE_MIXED_PRECISION"] = self.precision
        trainer = Trainer(self.cfg(f"t{self.run}"), recipe="bench")
        trainer.fit(self.model(), ClassificationObjective(), self.train, self.val, metrics=[], monitor="val_loss",
                    mode="min", param_budget=500_000)
        self.wall["trainer"].append(time.perf_counter() - start)
        _reset_accelerate()
        return self._span()

    def hand(self) -> float:
        from toolkit.optim import build_optimizer, build_scheduler

        self.train.reset(), self.val.reset()
        self.run += 1
        start = time.perf_counter()
        cfg = self.cfg(f"h{self.run}")
        torch.manual_seed(cfg.seed)
        model = self.model().to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, cfg)  # a torch.optim.SGD
        train_dl = DataLoader(self.train, batch_size=self.batch, shuffle=True, drop_last=True)
        val_dl = DataLoader(self.val, batch_size=2 * self.batch)
        scheduler, _ = build_scheduler(optimizer, cfg, len(train_dl))  # a torch LambdaLR
        bf16 = self.precision == "bf16"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).train()
        loss_sum = torch.zeros((), device=device)
        for x, y in train_dl:
            x = x.to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
            y = y.to(device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
        loss_sum.item()
        model.eval()
        val_sum, count = 0.0, 0
        with torch.no_grad():
            for x, y in val_dl:
                x = x.to(device).float().div_(255).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(x)
                val_sum += F.cross_entropy(logits.float(), y.to(device)).item() * len(y)
                count += len(y)
        run_dir = self.root / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), run_dir / "best.pth")
        self.wall["hand"].append(time.perf_counter() - start)
        return self._span()


def _measure(quick: bool, repeats: int, tiny: bool = False) -> tuple[Bench, dict[str, list[float]]]:
    """The bench and the seconds of each timed repeat of the hand loop and the Trainer, interleaved."""
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        b = Bench(quick, Path(tmp), tiny=tiny)
        return b, interleaved({"hand": b.hand, "trainer": b.trainer}, warmup=1, repeats=repeats)


def _step_cost(quick: bool, repeats: int) -> Row:
    """The Trainer's own work per training step: a one-layer model, so that the step itself costs little; what a
    GPU cannot hide behind its kernels when the model is small."""
    b, times = _measure(quick, repeats, tiny=True)
    steps = len(b.train) // b.batch
    hand_ms, trainer_ms = 1000 * median(times["hand"]) / steps, 1000 * median(times["trainer"]) / steps
    return Row(SECTION, "time per training step, one linear layer", "Trainer.fit", "hand loop", trainer_ms, hand_ms,
               "ms", trainer_ms / hand_ms, note=f"batch {b.batch}, {steps} steps, precision {b.precision}; the "
               f"Trainer's own cost {trainer_ms - hand_ms:+.3f} ms a step (lower is better)",
               extra={"trainer_s": times["trainer"], "hand_s": times["hand"]})


def run(quick: bool = False, repeats: int = 7) -> tuple[list[Row], dict]:
    b, times = _measure(quick, repeats)
    images = len(b.train)
    hand_s, trainer_s = median(times["hand"]), median(times["trainer"])
    # the warm-up calls appended wall times too: keep the timed repeats only
    hand_wall, trainer_wall = median(b.wall["hand"][1:]), median(b.wall["trainer"][1:])
    model = f"ResNet-{6 * b.depth + 2} width {b.width}"
    common = f"{model}, batch {b.batch}, {images // b.batch} steps, precision {b.precision}, channels_last"
    rows = [
        Row(SECTION, "training steps", "Trainer.fit", "hand loop", images / trainer_s, images / hand_s, "images/s",
            (images / trainer_s) / (images / hand_s), note=f"{common}; overhead {100 * (trainer_s / hand_s - 1):+.1f}%",
            extra={"trainer_s": times["trainer"], "hand_s": times["hand"]}),
        Row(SECTION, "fit total (1 epoch)", "Trainer.fit", "hand loop + eval + save", trainer_wall, hand_wall, "s",
            trainer_wall / hand_wall, note="incl. Accelerator set-up, evaluation, best.pth, state/, history, figures",
            extra={"trainer_wall_s": b.wall["trainer"][1:], "hand_wall_s": b.wall["hand"][1:]}),
        _step_cost(quick, repeats),
    ]
    return rows, {"overhead_percent": 100 * (trainer_s / hand_s - 1), "precision": b.precision}
