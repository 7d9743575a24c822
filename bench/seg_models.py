"""The brain-MRI models against each other: ``unet_s2d`` (the default) against ``unet`` (the baseline).

Two figures per model, in the default layout (channels_last; bf16 autocast where the CPU has it):
training images/s on the recipe's input, batches of 16 patches of 96×96 (forward, Dice + BCE-like
loss, backward, AdamW step), and prediction images/s on whole 240×240 slices (forward, no grad).
The two models have the same parameter budget (482,932 and 486,409 parameters).
"""

from __future__ import annotations

import torch

from .common import Row, interleaved, median
from .models import Spec, TrainStep
from .trainer_overhead import _bf16_supported

SECTION = "seg_models"
BASELINE, CANDIDATES = "unet", ("unet_s2d",)


def _predict(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> None:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)


def run(quick: bool = False, repeats: int = 5) -> tuple[list[Row], dict]:
    from toolkit.models.segmentation import build_segmentation_model

    bf16 = _bf16_supported()
    batch, patch, side = (2, 32, 48) if quick else (16, 96, 240)
    steps, train_rate, predict_rate = {}, {}, {}
    for name in (BASELINE, *CANDIDATES):
        torch.manual_seed(0)
        spec = Spec("brain_mri", name, lambda n=name: build_segmentation_model(n), (1, patch, patch), "seg", 16, batch)
        steps[name] = TrainStep(spec.build(), spec, batch, bf16, True)
    x = torch.rand(batch, 1, side, side).contiguous(memory_format=torch.channels_last).to(steps[BASELINE].device)
    train = interleaved({n: (lambda s=s: (s.model.train(), s.run(1), None)[2]) for n, s in steps.items()},
                        warmup=1, repeats=repeats)
    pred = interleaved({n: (lambda m=s.model: (m.eval(), _predict(m, x, bf16))[1]) for n, s in steps.items()},
                       warmup=1, repeats=repeats)
    for n in steps:
        train_rate[n], predict_rate[n] = batch / median(train[n]), batch / median(pred[n])
    rows = []
    for n in CANDIDATES:
        rows.append(Row(SECTION, f"brain_mri: training, {patch}-px patches", n, BASELINE, train_rate[n],
                        train_rate[BASELINE], "images/s", train_rate[n] / train_rate[BASELINE],
                        note=f"batch {batch}, {'bf16' if bf16 else 'fp32'}, channels_last"))
        rows.append(Row(SECTION, f"brain_mri: prediction, {side}-px slices", n, BASELINE, predict_rate[n],
                        predict_rate[BASELINE], "images/s", predict_rate[n] / predict_rate[BASELINE],
                        note=f"batch {batch}, no grad"))
    return rows, {"bf16": bf16, "batch": batch, "patch": patch, "side": side}
