"""toolkit.volume_eval and `toolkit evaluate` per patient (volumes) and per class/region: injected masks scored
against MONAI, patients counted once, spacing from the NIfTI headers, run folders built by hand (fresh weights)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.mri_fake import RAW_BRAIN, RAW_REGIONS, imwrite, make_lgg, make_raw, raw_label, square_mask
from tests.utils import ROOT, run_env
from toolkit import build_segmentation_model, save_weights
from toolkit.checkpoint import save_json
from toolkit.cli import main
from toolkit.data.mri.dataset import MRISegmentationDataset
from toolkit.data.mri.folders import discover_folders
from toolkit.models.segmentation import parse_widths
from toolkit.targets import TARGET_FILE, TargetSpec
from toolkit.volume_eval import case_keys, case_spacings, class_accuracy, pack_masks, score_cases, unpack_masks

NAMES = ("whole_tumour", "enhancing_tumour")
SPACING = (3.0, 0.9, 1.1)  # mm per (D, H, W)


def blobs(shape, seed, level=0.05):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > level


def constructed(cases=("a", "b"), depth=6, size=24):
    """{case: (pred bool (C, D, H, W), truth)} and the slices as keys + (N, C, H, W) arrays, slices shuffled."""
    vols, keys, pred, truth = {}, [], [], []
    for k, case in enumerate(cases):
        t = np.stack([blobs((depth, size, size), 10 * k + c) for c in range(len(NAMES))])
        p = np.stack([blobs((depth, size, size), 10 * k + c + 100, level=0.15) for c in range(len(NAMES))])
        vols[case] = (p, t)
        for z in range(depth):
            keys.append((case, 5 + z))  # indices need not start at 0
            pred.append(p[:, z])
            truth.append(t[:, z])
    order = np.random.default_rng(0).permutation(len(keys))
    return vols, [keys[i] for i in order], np.stack(pred)[order], np.stack(truth)[order]


def test_injected_masks_agree_with_monai():
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    vols, keys, pred, truth = constructed()
    per_case, rows = score_cases(keys, pred, truth, NAMES, {"a": SPACING, "b": SPACING})
    assert sorted(per_case) == ["a", "b"] and [r["num_slices"] for r in rows] == [6, 6]
    for case, (p, t) in vols.items():
        for c, name in enumerate(NAMES):
            pt, tt = torch.from_numpy(p[c])[None, None].float(), torch.from_numpy(t[c])[None, None].float()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd = float(compute_hausdorff_distance(pt, tt, include_background=True, percentile=95, spacing=SPACING))
            dice = float(DiceMetric(include_background=True, reduction="none")(pt, tt))
            got = per_case[case][name]
            assert got["dice"] == pytest.approx(dice, abs=1e-6)
            assert got["hd95_mm"] == pytest.approx(hd, rel=1e-5)
            voxel_ml = np.prod(SPACING) / 1000
            assert got["abs_volume_diff_ml"] == pytest.approx(abs(int(p[c].sum()) - int(t[c].sum())) * voxel_ml)


def test_repeated_slices_count_once_and_conflicts_raise():
    _, keys, pred, truth = constructed()
    once, _ = score_cases(keys, pred, truth, NAMES, {"a": SPACING, "b": SPACING})
    # slices given again (repeated records; padding when gathering from several processes)
    again, rows = score_cases(keys + keys[:7], np.concatenate([pred, pred[:7]]), np.concatenate([truth, truth[:7]]),
                              NAMES, {"a": SPACING, "b": SPACING})
    assert again == once and [r["num_slices"] for r in rows] == [6, 6]
    changed = pred[:1].copy()
    changed[0, 0] = ~changed[0, 0]
    with pytest.raises(ValueError, match="twice with different contents"):
        score_cases(keys + keys[:1], np.concatenate([pred, changed]), np.concatenate([truth, truth[:1]]), NAMES)


def test_missing_slices_are_empty_gaps_and_2d_slices_have_no_hd95():
    truth = np.zeros((2, 1, 8, 8), bool)
    truth[:, 0, 2:5, 2:5] = True
    keys = [("p", 0), ("p", 3)]  # slices 1 and 2 left out by the slice rule
    _, rows = score_cases(keys, truth, truth, ("tumour",), {"p": (2.0, 1.0, 1.0)})
    assert rows[0]["num_slices"] == 2 and rows[0]["missing_slices"] == 2
    assert rows[0]["tumour"]["dice"] == 1.0 and rows[0]["tumour"]["hd95_mm"] == 0.0
    _, rows = score_cases(keys, truth, truth, ("tumour",), volumes=False)
    assert rows[0]["tumour"]["dice"] == 1.0 and rows[0]["tumour"]["hd95_mm"] is None


def test_pack_masks_keeps_every_channel_and_refuses_bad_shapes():
    rng = np.random.default_rng(1)
    p, t = rng.random((3, 5, 4, 4)) > 0.5, rng.random((3, 5, 4, 4)) > 0.5
    packed = pack_masks(p, t)
    assert packed.shape == (3, 4, 4)
    for c in range(5):
        assert np.array_equal((packed >> c) & 1, p[:, c]) and np.array_equal((packed >> (5 + c)) & 1, t[:, c])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pack_masks(p[0], t[0])
    back_p, back_t = unpack_masks(packed, 5)
    assert back_p.dtype == bool and np.array_equal(back_p, p) and np.array_equal(back_t, t)


def test_class_accuracy_counts_tumour_slices_only():
    names = ["glioma", "meningioma"]
    pred = np.array([[5, 1], [0, 9], [0, 0], [3, 0], [2, 2]])  # slice 2 predicts nothing: wrong
    truth = np.array([[4, 0], [0, 7], [0, 6], [0, 0], [6, 0]])  # slice 3: no true tumour, not counted
    acc = class_accuracy(pred, truth, ["glioma", "meningioma", "meningioma", "glioma", "glioma"], names)
    assert (acc["correct"], acc["num_slices"]) == (3, 4)  # the tie of slice 4 goes to the first class
    assert acc["accuracy"] == pytest.approx(0.75)
    assert acc["per_class"]["meningioma"] == {"accuracy": 0.5, "correct": 1, "num_slices": 2}


def test_spacing_from_the_header_scaled_to_the_image_size(tmp_path):
    data = make_raw(tmp_path / "raw", cases=2, shape=(32, 24, 8), spacing=(1.0, 1.2, 3.0))
    records = discover_folders(str(data), channels=2).slices
    keys, volumes = case_keys(records)
    assert volumes and keys[0] == (records[0].patient, records[0].index)
    spacings = case_spacings(records, keys, 16)
    assert spacings[records[0].patient] == pytest.approx((3.0, 2.0, 1.2 * 24 / 16))


def _hand_run(root, data, spec: TargetSpec, in_channels: int, intensity: str, size: int, split=None, **cfg):
    """A run folder with fresh weights, as the recipe writes one (config.json, target.json, split.json)."""
    torch.manual_seed(0)
    model = build_segmentation_model("unet", in_channels, spec.out_channels, parse_widths("8,16,32"))
    save_weights(root / "best.pth", model.state_dict())
    save_json(root / "config.json", {"recipe": "brain_mri", "model": "unet", "widths": "8,16,32",
                                     "image_size": size, "in_channels": in_channels, "threshold": 0.5,
                                     "data_dir": str(data), **cfg})
    save_json(root / TARGET_FILE, {**spec.to_dict(), "intensity": intensity})
    save_json(root / "split.json", {"data_dir": str(data), **(split or {})})
    return root


def test_regions_run_is_scored_per_patient_and_region(tmp_path, capsys):
    data = make_raw(tmp_path / "raw", cases=3, shape=(32, 32, 8), spacing=(1.0, 1.2, 3.0))
    run = _hand_run(tmp_path / "run", data, TargetSpec.regions_of(RAW_REGIONS), 2, "zscore", 16)
    assert main(["evaluate", "--weights", str(run), "--split", "all"]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    pp = result["summary"]["per_patient"]
    assert set(pp) == {*RAW_REGIONS, "mean"}
    rows = result["patients"]
    assert sorted(r["case"] for r in rows) == ["case_001", "case_002", "case_003"]  # each patient once
    kept = len(RAW_BRAIN[2])  # the default slice rule keeps the slices with brain
    assert all(r["num_slices"] == kept and r["missing_slices"] == 0 for r in rows)
    for name in RAW_REGIONS:
        dice = [r[name]["dice"] for r in rows]
        assert pp[name]["dice"] == pytest.approx(np.mean(dice)) and 0 <= pp[name]["dice"] <= 1
        hd = [r[name]["hd95_mm"] for r in rows if r[name]["hd95_mm"] is not None]
        assert pp[name]["hd95_undefined"] == 3 - len(hd)
        assert (pp[name]["hd95_mm"] is None) if not hd else pp[name]["hd95_mm"] == pytest.approx(np.mean(hd))
        # the true volume: the label maps resized to 16 px (nearest), voxels of (3.0, 1.0 * 32/16, 1.2 * 32/16) mm
        small = cv2.resize(raw_label((32, 32, 8)), (16, 16), interpolation=cv2.INTER_NEAREST)
        voxels = np.isin(small, RAW_REGIONS[name]).sum()
        assert all(r[name]["true_volume_ml"] == pytest.approx(voxels * 3.0 * 2.0 * 2.4 / 1000) for r in rows)
    assert rows[0]["whole_tumour"]["true_volume_ml"] == pytest.approx(25 * 2 * 3.0 * 2.0 * 2.4 / 1000)  # 10x10 → 5x5
    assert {"dice_whole_tumour", "dice_enhancing_tumour", "dice"} <= set(result["summary"]["slices"])
    assert result["summary"]["num_slices"] == 3 * kept and "mm from the NIfTI headers" in result["spacing"]
    assert result["units"] == {"hd95_mm": "mm", "abs_volume_diff_ml": "ml"}
    assert "95th percentile" in result["hd95_definition"] and "HD95 is undefined" in result["empty_volumes"]
    out = capsys.readouterr().out
    assert "whole_tumour" in out and f"3 patients, {3 * kept} slices" in out


def test_binary_lgg_run_adds_volumes_in_voxels(tmp_path, capsys):
    data = make_lgg(tmp_path / "lgg", patients=3, slices=5)
    run = _hand_run(tmp_path / "run", data, TargetSpec.binary(), 1, "per_slice", 32)
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "all"]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    assert len(result["per_image"]) == 15 and result["summary"]["num_images"] == 15  # today's keys stay
    assert result["spacing"] == "unknown (voxels)"
    assert result["units"] == {"hd95_mm": "voxels", "abs_volume_diff_ml": "thousands of voxels"}
    assert [r["num_slices"] for r in result["patients"]] == [5, 5, 5]
    assert all(r["spacing_mm"] is None for r in result["patients"])
    tumour = result["summary"]["per_patient"]["tumour"]
    assert tumour["n_cases"] == 3 and 0 <= tumour["dice"] <= 1
    # the true volume in voxels of 32 px slices: slice 3 of 5 holds the 8x14 square
    assert all(r["tumour"]["true_volume_ml"] == pytest.approx((square_mask((32, 32)) > 0).sum() / 1000)
               for r in result["patients"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "hd95 undef" in line)
    assert "per patient (spacing: unknown (voxels))" in out and "|dV| kvx" in header and " ml" not in header


def test_classes_from_a_metadata_column_report_class_accuracy(tmp_path, capsys):
    data = tmp_path / "fig"
    rows = ["id,patient_id,tumour_type"]
    for i in range(1, 7):
        imwrite(data / "images" / f"{i}.png", np.full((32, 32), 40 + 20 * i, np.uint8))
        imwrite(data / "masks" / f"{i}_mask.png", square_mask((32, 32)))
        rows.append(f"{i},P{(i - 1) // 2},{'glioma' if i % 2 else 'meningioma'}")
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    spec = TargetSpec.classes({"background": 0, "glioma": 1, "meningioma": 2})
    run = _hand_run(tmp_path / "run", data, spec, 1, "per_slice", 32, class_column="tumour_type")
    assert main(["evaluate", "--weights", str(run), "--split", "all"]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    acc = result["summary"]["class_accuracy"]
    assert acc["num_slices"] == 6 and acc["per_class"]["glioma"]["num_slices"] == 3
    assert acc["correct"] == acc["per_class"]["glioma"]["correct"] + acc["per_class"]["meningioma"]["correct"]
    assert result["spacing"].startswith("2D slices") and len(result["patients"]) == 3
    assert result["units"]["hd95_mm"].startswith("not computed")
    header = next(line for line in capsys.readouterr().out.splitlines() if "hd95 undef" in line)
    assert "hd95 -" in header and "|dV| kpx" in header and " ml" not in header  # pixels of 2D slices, not ml
    for r in result["patients"]:  # each patient: one glioma and one meningioma slice
        assert r["num_slices"] == 2 and r["glioma"]["hd95_mm"] is None
        assert r["glioma"]["true_volume_ml"] == pytest.approx((square_mask((32, 32)) > 0).sum() / 1000)
    assert math.isclose(result["summary"]["per_patient"]["mean"]["dice"],
                        np.mean([result["summary"]["per_patient"][n]["dice"] for n in spec.names]))


def test_recipe_run_on_raw_layout_evaluates_its_validation_patients(tmp_path):
    data = make_raw(tmp_path / "raw", cases=4, shape=(32, 32, 8))
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data), "--in-channels", "2",
           "--image-size", "32", "--epochs", "1", "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0",
           "--val-fraction", "0.5", "--output-dir", str(tmp_path / "runs"), "--run-name", "r"]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "r"
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    val = json.loads((run / "split.json").read_text())["val"]
    cases = sorted({v.rsplit("_z", 1)[0] for v in val})
    assert [r["case"] for r in result["patients"]] == cases and result["summary"]["num_slices"] == len(val)
    assert sum(r["num_slices"] for r in result["patients"]) == len(val)
    for key in ("dice", "iou", "abs_volume_diff_ml", "hd95_undefined"):
        assert key in result["summary"]["per_patient"]["whole_tumour"]
    hd = result["summary"]["per_patient"]["whole_tumour"]["hd95_mm"]
    assert hd is None or hd >= 0


def test_same_named_cases_of_two_folders_stay_two_volumes(tmp_path, capsys):
    from toolkit.data.mri.context import context_rows
    from toolkit.mri_data import _note_shared

    a, b = (make_raw(tmp_path / name, cases=2, shape=(32, 32, 8)) for name in ("synA", "synB"))  # case_001, 002
    found = discover_folders(f"{a},{b}", channels=2)
    keys, volumes = case_keys(found.slices)
    assert volumes and {k[0] for k in keys} == {"synA/case_001", "synA/case_002", "synB/case_001", "synB/case_002"}
    assert len(set(keys)) == len(keys) and len(found.patients) == 2  # patients stay merged for the split
    rows = context_rows(found.slices, 2)  # neighbours come from the slice's own folder
    assert all(keys[j][0] == keys[i][0] for i, row in enumerate(rows) for j in row)
    ds = MRISegmentationDataset(found.slices, size=32, context=2)  # and so do the volumes' edge slices 0 and 7
    assert len(ds) == len(found.slices) and ds.neighbours.shape[0] == 4 * 2
    assert all(keys[j][0] == keys[i][0] for i, row in enumerate(ds._rows) for j in row if j < len(ds))
    said = []
    _note_shared(found, said.append)
    assert len(said) == 1 and "2 patient name(s) sit in several data folders" in said[0]
    assert "case_001 (synA + synB)" in said[0] and "volumes stay apart" in said[0]

    run = _hand_run(tmp_path / "run", f"{a},{b}", TargetSpec.regions_of(RAW_REGIONS), 2, "zscore", 16)
    assert main(["evaluate", "--weights", str(run), "--split", "all"]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    assert sorted(r["case"] for r in result["patients"]) == sorted({k[0] for k in keys})
    assert result["summary"]["num_patients"] == 4 and result["summary"]["per_patient"]["mean"]["n_cases"] == 4


def test_lgg_folders_of_one_name_stay_apart(tmp_path):
    x, y = (make_lgg(tmp_path / name, patients=2, slices=5) / "kaggle_3m" for name in ("x", "y"))
    found = discover_folders(f"{x},{y}")
    cases = {k[0] for k in case_keys(found.slices)[0]}
    assert len(cases) == 4 and {c.split("/")[0] for c in cases} == {"kaggle_3m", "kaggle_3m-2"}
    run = _hand_run(tmp_path / "run", f"{x},{y}", TargetSpec.binary(), 1, "per_slice", 32)
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "all"]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    assert [r["num_slices"] for r in result["patients"]] == [5] * 4
    pp = result["summary"]["per_patient"]
    assert pp["tumour"]["n_cases"] == 4 and pp["num_patients"] == 4  # pooled slices per volume too
