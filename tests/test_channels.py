"""Every number of image channels: a BraTS run of 2 or 4 channels trains a whole epoch (figures and W&B media
included) and evaluates; scans of C = 1, 2, 3, 4 channels are shown as RGB when C == 3, else by channel 0 in grey.

Issue 13: a two-channel BraTS run (``--channels flair,t1ce --in-channels 2``) crashed at the end of its first
epoch drawing the overlays; ``toolkit predict`` gave no clear answer for a 2D file and a 2- or 4-channel model.
"""

import json
import subprocess

import cv2
import numpy as np
import pytest
import torch

from toolkit.cli import main
from toolkit.figures import image_grid, segmentation_overlays
from toolkit.seg_images import overlay as _overlay
from toolkit.wandb_media import display_uint8, masked_image

from .mri_fake import make_brats
from .utils import ACCELERATE, ROOT, logged, run_env


def _scans(c: int, n: int = 2, h: int = 12, w: int = 16) -> torch.Tensor:
    """(n, c, h, w) float scans whose channels differ: channel k is uniform on [-k, 1]."""
    g = torch.Generator().manual_seed(c)
    return torch.stack([torch.rand(n, h, w, generator=g) * (k + 1) - k for k in range(c)], dim=1)


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min() + 1e-8)


def _expected(image: torch.Tensor) -> np.ndarray:
    """What a scan should look like: (H, W, 3) RGB for C == 3, else channel 0 grey repeated three times."""
    a = image.numpy()
    return _minmax(a).transpose(1, 2, 0) if a.shape[0] == 3 else np.repeat(_minmax(a[0])[..., None], 3, axis=2)


@pytest.mark.parametrize("c", [1, 2, 3, 4])
def test_scans_show_rgb_for_three_channels_else_channel_zero(c):
    images = _scans(c)
    zeros = torch.zeros(images.shape[0], 1, *images.shape[2:])
    masks = zeros.clone()
    masks[1, 0, 2:6, 3:9] = 1
    # segmentation_overlays: with no prediction and no tumour on image 0 the scan is shown bare
    fig = segmentation_overlays(images, zeros, masks, threshold=0.5)
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == images.shape[0]
    np.testing.assert_allclose(np.asarray(shown[0]), _expected(images[0]), atol=1e-6)
    assert np.asarray(shown[1])[3, 4, 1] > np.asarray(shown[1])[3, 4, 0]  # the missed tumour is green
    grid = image_grid([images, images], ["a", "b"])
    grey = c != 3
    first = np.asarray(grid.axes[0].images[0].get_array())
    assert first.shape == ((12, 16) if grey else (12, 16, 3))
    np.testing.assert_allclose(first if not grey else np.repeat(first[..., None], 3, axis=2), _expected(images[0]),
                               atol=1e-6)

    # W&B: display_uint8 and masked_image (grey "L" image for C != 3, else RGB), masks as class ids
    arr = display_uint8(images[0])
    assert arr.dtype == np.uint8 and arr.shape == ((12, 16) if grey else (12, 16, 3))
    np.testing.assert_allclose(arr if not grey else np.repeat(arr[..., None], 3, axis=2),
                               _expected(images[0]) * 255, atol=0.51)
    im = masked_image(images[1], torch.full((1, 12, 16), 0.9), masks[1], threshold=0.5, caption="x")
    assert im.image.mode == ("L" if grey else "RGB") and im.image.size == (16, 12)
    assert np.array_equal(np.asarray(im.image), display_uint8(images[1]))
    assert set(im._masks) == {"prediction", "ground_truth"}

    # predict overlays: uint8 (H, W, C) → BGR; the scan in grey (C == 3: luminance, else channel 0), tumour in red
    scan = (_minmax(images[0].numpy()) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    mask = np.zeros((12, 16), np.uint8)
    mask[2:8, 3:11] = 1
    out = _overlay(scan, mask)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    grey_scan = cv2.cvtColor(scan, cv2.COLOR_RGB2GRAY) if c == 3 else scan[..., 0]
    assert np.array_equal(out[10, 14], np.repeat(grey_scan[10, 14], 3))  # outside the mask: the scan unchanged
    assert (out[4:6, 5:9, 2].astype(int) >= out[4:6, 5:9, 0]).all()  # inside: red over the scan


def _launch(args, env):
    cmd = [*ACCELERATE, "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", str(ROOT / "recipes" / "brain_mri.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("c, channels", [(2, ["--channels", "flair,t1ce"]), (4, [])])
def test_brats_run_of_c_channels_trains_evaluates_and_predict_refuses_2d_files(tmp_path, capsys, c, channels):
    data = make_brats(tmp_path / "brats", cases=4, shape=(32, 32, 8))  # 6 slices with brain per case
    runs = tmp_path / "runs"
    env = run_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-env"), WANDB_SILENT="true",
                  WANDB_DATA_DIR=str(tmp_path / "wandb-data"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
                  WANDB_INIT_TIMEOUT="300")
    _launch(["--data-dir", str(data), *channels, "--in-channels", str(c), "--epochs", "1", "--image-size", "32",
             "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0", "--target", "binary",
             "--output-dir", str(runs), "--run-name", f"c{c}"], env)  # binary: the W&B mask overlays run
    run = runs / f"c{c}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 1
    assert json.loads((run / "config.json").read_text())["in_channels"] == c
    for name in ("best.pth", "history.json", "figures/history.png", "figures/overlays_epoch001.png"):
        assert (run / name).is_file(), name
    assert cv2.imread(str(run / "figures/overlays_epoch001.png")).shape[2] == 3

    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    rows, _ = logged(run_file)
    assert [r for r in rows if r.get("val/segmentation/_type") == "images/separated"]  # the epoch's overlays
    assert [r for r in rows if r.get("val/worst_slices/_type") == "table-file"]  # the worst slices at the end

    # evaluate: the saved validation split, and the BraTS folder given again (read with the run's channels)
    val_ids = json.loads((run / "split.json").read_text())["val"]
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert sorted(r["id"] for r in result["per_image"]) == sorted(val_ids)
    assert result["summary"]["num_images"] == len(val_ids)
    assert all(0.0 <= result["summary"][k] <= 1.0 for k in ("dice", "iou", "dice_global", "iou_global"))
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--data-dir", str(data), "--split", "all",
                 "--output", str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["summary"]["num_images"] == 24

    # predict: a run on NIfTI volumes (z-scored per volume) predicts volumes; a 2D file is refused, naming what to give
    capsys.readouterr()
    for name, pixels in (("grey.png", np.full((20, 24), 90, np.uint8)), ("rgb.png", np.dstack([
            np.full((20, 24), v, np.uint8) for v in (10, 90, 200)]))):
        cv2.imwrite(str(tmp_path / name), pixels)
        assert main(["predict", "--weights", str(run / "best.pth"), "--input", str(tmp_path / name),
                     "--output", str(tmp_path / "pred")]) == 2
        err = capsys.readouterr().err
        assert "was trained on NIfTI volumes (brats layout" in err and f"(got {tmp_path / name})" in err
    assert not (tmp_path / "pred").exists()
