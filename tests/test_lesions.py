"""Synthetic-lesion pretraining: the lesion painter, its objective, and the pretraining recipe with it."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from toolkit import LesionObjective, build_segmentation_model
from toolkit.data import SyntheticLesions, unit_input_scale

from .mri_fake import make_lgg
from .utils import ROOT, run_env


def brains(n=6, c=2, size=48, seed=0):
    """Dark background with a bright disc of 'tissue' in the middle, float (n, c, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    head = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size * 0.4) ** 2).float()
    return head * (0.3 + 0.2 * torch.rand((n, c, size, size), generator=g))


def test_lesions_keep_shape_and_range_change_only_their_roi_and_repeat_with_a_seed():
    x = brains()
    painter = SyntheticLesions(seed=3)
    out, masks, roi = painter(x)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= float(out.min()) and float(out.max()) <= 1
    assert masks.shape == roi.shape == (6, 1, 48, 48) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert bool((masks <= roi).all()) and bool((masks.sum((1, 2, 3)) > 0).all())  # every image got a lesion
    assert torch.equal(out * (1 - roi), x * (1 - roi)) and not torch.equal(out, x)  # changed inside the roi only
    again = SyntheticLesions(seed=3)(x)
    assert all(torch.equal(a, b) for a, b in zip((out, masks, roi), again))
    second = painter(x)[1]
    assert not torch.equal(second, masks)  # the sequence moves on
    painter.reset()
    assert torch.equal(painter(x)[1], masks)
    centres = masks[:, 0].nonzero()[:, 1:].float()  # lesions sit on the bright 'head', not in the dark corners
    assert float(((centres - 24) ** 2).sum(1).sqrt().max()) < 48 * (0.4 + 0.14 * 1.4)


def test_lesion_probability_zero_leaves_images_alone_and_bad_settings_are_refused():
    x = brains()
    out, masks, roi = SyntheticLesions(p=0.0)(x)
    assert torch.equal(out, x) and not masks.any() and not roi.any()
    for bad in ({"p": 1.5}, {"max_lesions": 0}, {"sizes": (0.2, 0.1)}, {"sizes": (0.1, 0.9)}, {"roi_factor": 0.5},
                {"ring_p": -0.1}):
        with pytest.raises(ValueError):
            SyntheticLesions(**bad)
    with pytest.raises(ValueError, match="float"):
        SyntheticLesions()(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_lesion_objective_scores_dice_and_bce_inside_the_roi_only():
    torch.manual_seed(0)
    model = build_segmentation_model("unet", 1, 1, (8, 16, 32))
    objective = LesionObjective(SyntheticLesions(seed=0), model_scale=unit_input_scale("per_slice"))
    x = (brains(4, 1) * 255).to(torch.uint8)
    out = objective(model, x)
    assert out.preds.shape == out.targets.shape == (4, 1, 48, 48) and out.targets.dtype == torch.uint8
    assert 0 <= float(out.preds.min()) and float(out.preds.max()) <= 1

    # by hand: per-image soft Dice (the spec's formula) and BCE over the roi pixels
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1
    roi = torch.zeros(2, 1, 8, 8)
    roi[0, 0, 1:7, 1:7] = 1  # the second image has no lesion: it adds nothing
    loss = objective.roi_loss(logits, masks, roi)
    p = torch.sigmoid(logits[0, 0, 1:7, 1:7])
    t = masks[0, 0, 1:7, 1:7]
    dice = (2 * (p * t).sum() + 1e-6) / ((p ** 2).sum() + t.sum() + 1e-6)
    bce = F.binary_cross_entropy_with_logits(logits[0, 0, 1:7, 1:7], t)
    assert torch.isclose(loss, 1 - dice + bce, atol=1e-6)
    loss.backward()
    assert not logits.grad[roi == 0].any() and logits.grad[roi == 1].abs().sum() > 0

    model.eval()  # validation: the same lesions every time
    first = objective(model, x)
    model.train()
    objective(model, x)
    model.eval()
    again = objective(model, x)
    assert torch.equal(again.inputs, first.inputs) and torch.equal(again.targets, first.targets)
    objective.eval_lesions.reset()
    roi = objective.eval_lesions(x.float() / 255)[2]  # the roi of those validation lesions
    assert not first.preds[roi == 0].any() and bool((first.preds[roi == 1] > 0).all())  # preds: 0 outside it


def test_pretraining_on_synthetic_lesions_then_fine_tuning(tmp_path):
    data = make_lgg(tmp_path / "lgg", patients=6, slices=4)
    common = ["--data-dir", str(data), "--image-size", "32", "--widths", "8,16,32", "--num-workers", "0",
              "--batch-size", "4", "--epochs", "2", "--output-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"]
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri_pretrain.py"), *common, "--run-name", "pre",
                           "--objective", "lesions", "--lesions", "3", "--ring-p", "0.5"],
                          cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pre = tmp_path / "runs" / "pre"
    history = json.loads((pre / "history.json").read_text())
    assert len(history) == 2 and all(0 <= h["dice"] <= 1 for h in history)
    assert json.loads((pre / "config.json").read_text())["objective"] == "lesions"
    ft = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri.py"), *common, "--run-name", "ft",
                         "--init-from", str(pre / "best.pth"), "--postprocess", "false"],
                        cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert ft.returncode == 0 and f"started from the weights of {pre / 'best.pth'}" in ft.stdout, ft.stderr[-3000:]
    for args, message in ((["--objective", "inpainting"], "objective must be restoration or lesions"),
                          (["--lesion-sizes", "0.3"], "lesion_sizes must be two numbers"),
                          (["--roi-factor", "0.5"], "lesion settings: roi_factor must be a finite number >= 1")):
        bad = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri_pretrain.py"), *args],
                             cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
