"""toolkit.volume_metrics: per-patient Dice/IoU/HD95 (mm)/volumes, stacking slices, the summary."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from tests.utils import SHARED_DATA
from toolkit.volume_metrics import (
    EMPTY_RULE,
    case_scores,
    hd95,
    json_safe,
    lgg_case_and_index,
    stack_slices,
    summarise_cases,
    surface_distances,
)

SPACING = (2.0, 0.5, 0.75)  # anisotropic, mm per (D, H, W)


def cube(shape, start, side):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


def blobs(shape, seed, level=0.05):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > level


def brute_hd(pred, truth, spacing, q):
    """Independent reference: edge = foreground voxel with a background face-neighbour (outside the
    array counts as background), all pairwise distances, max of the two directed percentiles."""
    def edge_coords(m):
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for ax in range(m.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=ax)[tuple(slice(1, -1) for _ in m.shape)]
        return np.argwhere(m & ~inner) * np.asarray(spacing)
    a, b = edge_coords(pred), edge_coords(truth)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


# --------------------------------------------------------------------------- hand-computed
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_cube_offset_by_k_voxels(axis, k):
    side = 8
    truth = cube((20, 20, 20), (4, 4, 4), side)
    start = [4, 4, 4]
    start[axis] += k
    pred = cube((20, 20, 20), start, side)
    s = case_scores(pred, truth, SPACING)
    assert s["dice"] == pytest.approx((side - k) / side)
    assert s["iou"] == pytest.approx((side - k) / (side + k))
    assert s["abs_volume_diff_ml"] == 0.0
    assert s["true_volume_ml"] == pytest.approx(side ** 3 * np.prod(SPACING) / 1000)
    # the classic Hausdorff distance is the shift in mm along the shifted axis
    assert hd95(pred, truth, SPACING, percentile=100) == pytest.approx(k * SPACING[axis])
    assert hd95(pred, truth, SPACING) == pytest.approx(brute_hd(pred, truth, SPACING, 95), rel=1e-9)


@pytest.mark.parametrize("axis", [0, 2])
def test_parallel_plates_hd95_is_the_gap_in_mm(axis):
    """One-voxel-thick plates k voxels apart: every edge voxel is exactly k * spacing[axis] away."""
    k = 3
    truth = np.zeros((12, 14, 16), bool)
    pred = np.zeros_like(truth)
    idx_t = [slice(2, 11)] * 3
    idx_t[axis] = 2
    idx_p = list(idx_t)
    idx_p[axis] = 2 + k
    truth[tuple(idx_t)] = True
    pred[tuple(idx_p)] = True
    a, b = surface_distances(pred, truth, SPACING)
    assert a.size == pred.sum() and b.size == truth.sum()
    assert np.allclose(a, k * SPACING[axis]) and np.allclose(b, k * SPACING[axis])
    assert hd95(pred, truth, SPACING) == pytest.approx(k * SPACING[axis])


def test_2d_and_volume_difference():
    truth = cube((30, 30), (5, 5), 10)
    pred = cube((30, 30), (5, 7), 12)  # 2 pixels larger, shifted 2 along W
    s = case_scores(pred, truth, (0.8, 1.3))
    assert s["abs_volume_diff_ml"] == pytest.approx((144 - 100) * 0.8 * 1.3 / 1000)
    assert s["pred_volume_ml"] - s["true_volume_ml"] == pytest.approx(s["abs_volume_diff_ml"])
    inter = np.logical_and(pred, truth).sum()
    assert s["dice"] == pytest.approx(2 * inter / 244)
    assert s["hd95_mm"] == pytest.approx(brute_hd(pred, truth, (0.8, 1.3), 95), rel=1e-9)
    assert s["hd95_mm"] > 0


def test_identical_masks_score_perfectly():
    m = blobs((8, 24, 24), seed=3)
    s = case_scores(m, m, SPACING)
    assert s["dice"] == 1.0 and s["iou"] == 1.0 and s["hd95_mm"] == 0.0 and s["abs_volume_diff_ml"] == 0.0


# --------------------------------------------------------------------------- empty rules
def test_empty_rules():
    empty = np.zeros((6, 10, 10), bool)
    some = cube(empty.shape, (1, 2, 2), 3)
    both = case_scores(empty, empty, SPACING)
    assert both["dice"] == 1.0 and both["iou"] == 1.0 and math.isnan(both["hd95_mm"])
    assert both["abs_volume_diff_ml"] == 0.0
    false_pos = case_scores(some, empty, SPACING)
    assert false_pos["dice"] == 0.0 and false_pos["iou"] == 0.0 and math.isnan(false_pos["hd95_mm"])
    assert false_pos["abs_volume_diff_ml"] == pytest.approx(27 * np.prod(SPACING) / 1000)
    missed = case_scores(empty, some, SPACING)
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and math.isnan(missed["hd95_mm"])
    assert "Dice = IoU = 1" in EMPTY_RULE and "NaN" in EMPTY_RULE


# --------------------------------------------------------------------------- agreement with MONAI
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dims", [2, 3])
def test_agrees_with_monai(seed, dims):
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance

    shape, spacing = ((10, 40, 36), (3.0, 0.9, 1.1)) if dims == 3 else ((48, 40), (0.7, 1.2))
    truth = blobs(shape, seed)
    pred = blobs(shape, seed + 100, level=0.1 * (seed % 3))
    assert truth.any() and pred.any()
    mine = case_scores(pred, truth, spacing)
    p, t = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(truth)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_hd = float(compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing))
    ref_dice = float(DiceMetric(include_background=True, reduction="none")(p, t))
    ref_iou = float(MeanIoU(include_background=True, reduction="none")(p, t))
    assert mine["hd95_mm"] == pytest.approx(ref_hd, rel=1e-4)
    assert mine["dice"] == pytest.approx(ref_dice, rel=1e-4)
    assert mine["iou"] == pytest.approx(ref_iou, rel=1e-4)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("pred, truth, spacing, match", [
    (np.zeros((4, 5, 6)), np.zeros((4, 5, 7)), (1, 1, 1), "same shape"),
    (np.zeros((4, 5, 6)), np.zeros((4, 5, 6)), (1, 1), "spacing"),
    (np.zeros((4, 5, 6)), np.zeros((4, 5, 6)), (1, 0, 1), "spacing"),
    (np.zeros((4, 5, 6)), np.zeros((4, 5, 6)), 1.0, "spacing"),
    (np.full((4, 5), 0.5), np.zeros((4, 5)), (1, 1), "only 0 and 1"),
    (np.zeros(5), np.zeros(5), (1,), "2D"),
])
def test_bad_input_raises(pred, truth, spacing, match):
    with pytest.raises(ValueError, match=match):
        case_scores(pred, truth, spacing)


def test_bad_percentile_raises():
    with pytest.raises(ValueError, match="percentile"):
        hd95(np.ones((3, 3), bool), np.ones((3, 3), bool), (1, 1), percentile=101)


# --------------------------------------------------------------------------- stacking slices
def test_stack_slices_orders_dedups_and_keeps_gaps():
    rng = np.random.default_rng(0)
    a = {i: rng.integers(0, 2, (6, 5)).astype(np.uint8) for i in (3, 1, 7, 2)}  # index 4..6 missing
    b = {i: rng.random((4, 4)) for i in (0, 1)}
    items = [("A", i, x) for i, x in a.items()] + [("B", i, x) for i, x in b.items()]
    items += [("A", 7, a[7].copy()), ("B", 0, b[0].copy())]  # duplicates (gather padding)
    items = [items[j] for j in rng.permutation(len(items))]
    out = stack_slices(items)
    assert list(out) == ["A", "B"]
    vol, idx = out["A"]
    assert idx.tolist() == [1, 2, 3, 7] and vol.shape == (4, 6, 5) and vol.dtype == np.uint8
    for k, i in enumerate(idx):
        assert np.array_equal(vol[k], a[i])
    vol_b, idx_b = out["B"]
    assert idx_b.tolist() == [0, 1] and np.array_equal(vol_b, np.stack([b[0], b[1]]))


def test_stack_slices_rejects_conflicts():
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match="different contents"):
        stack_slices([("A", 0, x), ("A", 0, x + 1)])
    with pytest.raises(ValueError, match="one shape"):
        stack_slices([("A", 0, x), ("A", 1, np.zeros((3, 4)))])
    with pytest.raises(ValueError, match="2D"):
        stack_slices([("A", 0, np.zeros((1, 3, 3)))])
    with pytest.raises(ValueError, match="integer"):
        stack_slices([("A", 1.0, x)])


def test_lgg_case_and_index():
    assert lgg_case_and_index("TCGA_CS_4941_19960909_12") == ("TCGA_CS_4941_19960909", 12)
    assert lgg_case_and_index("kaggle_3m/TCGA_CS_4941_19960909/TCGA_CS_4941_19960909_3.tif") == (
        "TCGA_CS_4941_19960909", 3)
    for bad in ("TCGA_CS_4941_19960909_x", "12", "_12", 12):
        with pytest.raises(ValueError, match="slice_id"):
            lgg_case_and_index(bad)


def test_lgg_ids_of_the_real_data_parse_to_their_folder():
    root = SHARED_DATA / "brain-mri-lgg" / "kaggle_3m"
    folders = sorted(p for p in root.glob("TCGA_*") if p.is_dir())[:2] if root.is_dir() else []
    if not folders:
        pytest.skip("LGG data not present")
    for folder in folders:
        images = [p for p in folder.glob("*.tif") if not p.stem.endswith("_mask")]
        parsed = [lgg_case_and_index(p.stem) for p in images]
        assert {c for c, _ in parsed} == {folder.name}
        assert len({i for _, i in parsed}) == len(images)


# --------------------------------------------------------------------------- summary
def test_summarise_cases_means_undefined_and_json():
    shape = (8, 20, 20)
    truths = {"p1": blobs(shape, 1), "p2": blobs(shape, 2), "p3": np.zeros(shape, bool)}
    preds = {"p1": blobs(shape, 11), "p2": truths["p2"], "p3": np.zeros(shape, bool)}
    per_case = {c: {"WT": case_scores(preds[c], truths[c], SPACING),
                    "TC": case_scores(np.roll(truths[c], 2, axis=1), truths[c], SPACING)} for c in truths}
    summary = summarise_cases(per_case)
    assert set(summary) == {"WT", "TC", "mean"}
    for ch in ("WT", "TC"):
        rows = [per_case[c][ch] for c in per_case]
        assert summary[ch]["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))
        assert summary[ch]["hd95_mm"] == pytest.approx(np.nanmean([r["hd95_mm"] for r in rows]))
        assert summary[ch]["abs_volume_diff_ml"] == pytest.approx(np.mean([r["abs_volume_diff_ml"] for r in rows]))
        assert summary[ch]["hd95_undefined"] == 1 and summary[ch]["n_cases"] == 3
    assert summary["mean"]["dice"] == pytest.approx((summary["WT"]["dice"] + summary["TC"]["dice"]) / 2)
    assert summary["mean"]["hd95_undefined"] == 2
    doc = json.loads(json.dumps({"summary": {"per_patient": summary}}, allow_nan=False))
    assert doc["summary"]["per_patient"]["WT"]["dice"] == summary["WT"]["dice"]
    assert doc["summary"]["per_patient"]["TC"]["hd95_mm"] == summary["TC"]["hd95_mm"]
    per_case_json = json.loads(json.dumps(json_safe(per_case), allow_nan=False))
    assert per_case_json["p3"]["WT"]["hd95_mm"] is None


def test_summarise_all_undefined_is_null_and_bad_input_raises():
    s = {"dice": 1.0, "iou": 1.0, "hd95_mm": math.nan, "abs_volume_diff_ml": 0.0}
    out = summarise_cases({"p1": {"ET": s}, "p2": {"ET": s}})
    assert out["ET"]["hd95_mm"] is None and out["ET"]["hd95_undefined"] == 2 and out["mean"]["hd95_mm"] is None
    with pytest.raises(ValueError, match="lacks"):
        summarise_cases({"p1": {"ET": {"dice": 1.0}}})
    with pytest.raises(ValueError, match="mean"):
        summarise_cases({"p1": {"mean": s}})
    with pytest.raises(ValueError, match="non-empty"):
        summarise_cases({})
