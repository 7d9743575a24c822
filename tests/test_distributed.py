"""Two processes on the CPU: gathered validation metrics count every sample exactly once, and the per-patient
(3D) evaluation at fit end counts every patient once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from toolkit import Accuracy, ClassificationObjective, SegmentationMetrics, SegmentationObjective, SoftDiceLoss
from toolkit import ChooseVolumePostprocess, TargetMetrics, TrainConfig, Trainer, build_segmentation_model
from toolkit import resolve_target, save_weights, segmentation_loss
from toolkit.data.batch_transforms import input_preprocess
from toolkit.data.mri import MRISegmentationDataset, discover_folders

from .mri_fake import make_raw
from .utils import ACCELERATE, ROOT, TinyImages, TinyNet, free_port, run_env

RAW_CASES = 3  # fake BraTS-like patients (2 channels, regions) in the per-patient check


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
    volumes = _per_patient(trainer, out / "raw")
    if trainer.accelerator.is_main_process:
        result = {"processes": trainer.accelerator.num_processes, "cls": cls, "seg": seg, **volumes}
        (out / f"result{trainer.accelerator.num_processes}.json").write_text(json.dumps(result))
    trainer.close()  # every rank leaves the process group together


def _per_patient(trainer: Trainer, raw: Path) -> dict:
    """Gathered slice metrics and the fit-end 3D choice (per-patient Dice/HD95) of a fixed regions model on the
    fake raw-layout patients under ``raw``: {"volume_slices", "volume_records", "volume_dice_global", "volume_patients",
    "volume_dice"}."""
    found = discover_folders(str(raw), channels=2)
    target = resolve_target("", labels=found.labels, regions=found.regions)
    val = MRISegmentationDataset(found.slices, size=32, labels=True)
    preprocess = input_preprocess(found.intensity)

    def build():
        torch.manual_seed(0)  # the same weights in every process
        return build_segmentation_model("unet", in_channels=2, out_channels=target.out_channels, widths=(8, 16, 32))

    objective = SegmentationObjective(segmentation_loss(target.kind, "dice_bce", 1.0), preprocess, target=target)
    metrics = trainer.evaluate_dataset(build(), objective,
                                       val, [TargetMetrics(target, 0.5)])
    if trainer.accelerator.is_main_process:
        save_weights(trainer.run_dir / "best.pth", build().state_dict())
    trainer.accelerator.wait_for_everyone()
    ChooseVolumePostprocess(build, val, preprocess, target, 0.5).on_fit_end(trainer, None)
    if not trainer.accelerator.is_main_process:
        return {}
    report = json.loads((trainer.run_dir / "postprocess.json").read_text())["volume"]["report"]
    return {"volume_slices": metrics["val_samples"], "volume_records": len(found.slices),
            "volume_dice_global": metrics["dice_global"],
            "volume_patients": sorted(report["patients"]), "volume_dice": report}


def test_two_processes_count_each_sample_once(tmp_path):
    make_raw(tmp_path / "raw", cases=RAW_CASES)  # written once, before either run reads it
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
    # volumes: every slice once in the gathered metrics, every patient once in the per-patient (3D) choice
    assert one["volume_slices"] == two["volume_slices"] == two["volume_records"] > RAW_CASES
    assert abs(one["volume_dice_global"] - two["volume_dice_global"]) < 1e-6
    assert one["volume_patients"] == two["volume_patients"] and len(two["volume_patients"]) == RAW_CASES
    assert one["volume_dice"] == two["volume_dice"]


if __name__ == "__main__":
    evaluate_fixed_models(Path(sys.argv[1]))
