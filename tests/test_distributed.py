"""Two processes on the CPU: gathered validation metrics count every sample exactly once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from toolkit import Accuracy, ClassificationObjective, SegmentationMetrics, SegmentationObjective, SoftDiceLoss
from toolkit import TrainConfig, Trainer

from .utils import ACCELERATE, ROOT, TinyImages, TinyNet, free_port, run_env


class TinySeg(torch.utils.data.Dataset):
    """37 pairs of (1, 16, 16) uint8 images and masks (bright pixels are tumour, some masks empty)."""

    def __init__(self, n: int = 37) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
        self.masks = (self.images > 200).to(torch.uint8)
        self.masks[::5] = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.masks[i]


def evaluate_fixed_models(out: Path) -> None:
    """Evaluate fixed-weight models on 37 samples and write the main process's results to ``out``."""
    cfg = TrainConfig(output_dir=str(out / "runs"), run_name=f"eval{os.environ.get('WORLD_SIZE', '1')}",
                      wandb_mode="disabled", num_workers=0, eval_batch_size=4)
    trainer = Trainer(cfg, recipe="tiny")
    torch.manual_seed(0)  # the same weights in every process
    classifier = TinyNet()
    seg_model = torch.nn.Conv2d(1, 1, 3, padding=1)
    cls = trainer.evaluate_dataset(classifier, ClassificationObjective(), TinyImages(37, seed=2), [Accuracy()])
    seg = trainer.evaluate_dataset(seg_model, SegmentationObjective(SoftDiceLoss()), TinySeg(),
                                   [SegmentationMetrics()])
    if trainer.accelerator.is_main_process:
        result = {"processes": trainer.accelerator.num_processes, "cls": cls, "seg": seg}
        (out / f"result{trainer.accelerator.num_processes}.json").write_text(json.dumps(result))
    trainer.close()  # every rank leaves the process group together


def test_two_processes_count_each_sample_once(tmp_path):
    evaluate_fixed_models(tmp_path)
    cmd = [*ACCELERATE, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "tests.test_distributed", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = json.loads((tmp_path / "result1.json").read_text())
    two = json.loads((tmp_path / "result2.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    for task in ("cls", "seg"):
        assert one[task]["val_samples"] == two[task]["val_samples"] == 37
    assert two["cls"]["num_samples"] == 37 and two["seg"]["num_images"] == 37
    assert two["cls"]["accuracy"] == one["cls"]["accuracy"]
    for key in ("dice", "iou", "dice_global", "iou_global"):
        assert abs(two["seg"][key] - one["seg"][key]) < 1e-6, key
    # val_loss is the sample-weighted mean of batch losses; a padded last batch shifts it slightly
    assert abs(two["seg"]["val_loss"] - one["seg"]["val_loss"]) < 1e-2


if __name__ == "__main__":
    evaluate_fixed_models(Path(sys.argv[1]))
