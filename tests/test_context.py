"""2.5D input (``--context-slices``): neighbours found per volume, stacked in one order in training, evaluate and
NIfTI predict; 2D data and 2D/ONNX inference refuse it with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.mri_fake import MODALITIES, imwrite, make_brats, make_lgg, make_raw, square_mask
from tests.utils import ROOT, run_env
from toolkit.cli import main
from toolkit.data.mri.context import context_channels, context_rows, offsets, volume_context, volume_neighbours
from toolkit.data.mri.dataset import MRISegmentationDataset
from toolkit.data.mri.discover import discover_mri_slices
from toolkit.data.mri.folders import discover_folders
from toolkit.data.mri.io import MRISlice, load_nifti
from toolkit.volume_predict import normalise_channels


def lgg(case: str, k: int) -> MRISlice:
    return MRISlice(f"{case}_{k}", case, "lgg", Path(f"{case}_{k}.tif"), Path(f"{case}_{k}_mask.tif"))


def test_rows_follow_each_volume_and_fill_gaps_from_the_nearest_slice():
    # patient A: slices 1, 2, 3, 5 (4 missing); patient B: slice 7 alone; a 2D slice of no volume
    records = [lgg("A", 3), lgg("B", 7), lgg("A", 1), lgg("A", 5), lgg("A", 2),
               MRISlice("17", None, "folder", Path("17.png"), Path("17_mask.png"))]
    assert offsets(2) == [0, -2, -1, 1, 2]
    rows = context_rows(records, 2)
    assert rows.shape == (6, 5) and list(rows[:, 0]) == list(range(6))
    assert list(rows[0]) == [0, 2, 4, 0, 3]  # A3: -2 = A1, -1 = A2, +1 = A4 missing -> A3 itself, +2 = A5
    assert list(rows[2]) == [2, 2, 2, 4, 0]  # A1: first slice repeated below, A2 and A3 above
    assert list(rows[3]) == [3, 0, 3, 3, 3]  # A5: -1 (A4) missing -> A5 itself; -2 = A3; nothing above
    assert list(rows[1]) == [1] * 5 and list(rows[5]) == [5] * 5  # alone in its volume / of no volume
    assert context_channels(3, 2) == 15
    with pytest.raises(ValueError, match="context slices"):
        context_channels(1, 99)


def test_volume_context_matches_the_dataset_order():
    vol = np.arange(4 * 4 * 5 * 2, dtype=np.uint8).reshape(4, 4, 5, 2)  # (X, Y, Z, C)
    out = volume_context(vol, 1)
    assert out.shape == (4, 4, 5, 6)
    np.testing.assert_array_equal(out[:, :, 2], np.concatenate([vol[:, :, 2], vol[:, :, 1], vol[:, :, 3]], -1))
    np.testing.assert_array_equal(out[:, :, 0], np.concatenate([vol[:, :, 0], vol[:, :, 0], vol[:, :, 1]], -1))
    assert volume_context(vol, 0) is vol


def test_dataset_stacks_the_neighbours_of_lgg_folders(tmp_path):
    found = discover_folders(str(make_lgg(tmp_path / "lgg", patients=2, slices=4)), channels=0)
    plain = MRISegmentationDataset(found.slices, size=32)
    ctx = MRISegmentationDataset(found.slices, size=32, context=1)
    assert ctx.input_channels == 9 and plain.input_channels == 3 and ctx.neighbours is None  # no volume to read
    ids = ctx.ids
    for i, rid in enumerate(ids):
        case, k = rid.rsplit("_", 1)
        image, mask = ctx[i]
        below, above = f"{case}_{max(int(k) - 1, 1)}", f"{case}_{min(int(k) + 1, 4)}"
        want = [plain[i][0], plain[ids.index(below)][0], plain[ids.index(above)][0]]
        assert image.shape == (9, 32, 32) and bool((image == np.concatenate(want)).all())
        assert bool((mask == plain[i][1]).all())
    with pytest.raises(ValueError, match="cache"):
        MRISegmentationDataset(found.slices, size=32, cache=False, context=1)


def raw(case: str, k: int) -> MRISlice:
    return MRISlice(f"{case}_z{k:03d}", case, "raw", Path(f"{case}_0000.nii.gz"), Path(f"{case}.nii.gz"), k)


def test_nifti_rows_take_the_volumes_true_neighbours():
    assert volume_neighbours([3, 4], 8, 2) == [1, 2, 5, 6] and volume_neighbours([0, 7], 8, 1) == [1, 6]
    assert volume_neighbours([0, 1], 2, 3) == [] and volume_neighbours([5], 8, 0) == []
    records = [raw("A", 3), raw("A", 4), raw("B", 0)]
    extra = [("A", 1), ("A", 2), ("A", 5), ("A", 6), ("B", 1)]
    rows = context_rows(records, 2, {"A": 8, "B": 2}, extra)
    assert list(rows[0]) == [0, 3, 4, 1, 5]  # A3: A1, A2 context-only, A4 a record, A5 context-only
    assert list(rows[1]) == [1, 4, 0, 5, 6]
    assert list(rows[2]) == [2, 2, 2, 7, 7]  # B0: the first slice replicated below, B1 (the last) above
    assert list(context_rows(records, 2)[0]) == [0, 0, 0, 1, 1]  # without depths: the nearest record
    with pytest.raises(ValueError, match="neither a record"):
        context_rows(records, 2, {"A": 8, "B": 2}, extra[:4])


def case_volume(root: Path, case: str, layout: str) -> np.ndarray:
    """uint8 (X, Y, Z, C): the case's whole volume normalised as ``toolkit predict`` reads it."""
    paths = [root / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(2)] if layout == "raw" else \
        [root / case / f"{case}_{m}.nii.gz" for m in MODALITIES]
    return normalise_channels([np.asarray(load_nifti(p)) for p in paths], "zscore")


def assert_predict_neighbours(ds: MRISegmentationDataset, root: Path, layout: str, context: int) -> None:
    """Every sample's channels are ``volume_context`` of its whole volume at the slice's index."""
    for i, r in enumerate(ds.records):
        want = volume_context(case_volume(root, r.patient, layout), context)[:, :, r.index]
        image = ds[i][0].numpy().transpose(1, 2, 0)
        assert image.shape == want.shape and np.array_equal(image, want), (r.id, context)


def test_nifti_context_is_the_whole_volumes_neighbours_whatever_the_slice_rule(tmp_path):
    root = make_raw(tmp_path / "raw", cases=2)
    found = discover_mri_slices(root, slice_rule="tumour").slices  # slices 3 and 4 of 8 per case
    assert [r.index for r in found] == [3, 4, 3, 4]
    for context in (1, 2):
        ds = MRISegmentationDataset(found, size=32, context=context, num_threads=2)
        assert_predict_neighbours(ds, root, "raw", context)  # slices 1, 2, 5, 6: real, not a repeated slice
        assert ds.neighbours.shape == (2 * 2 * context, 32, 32, 2)  # only the neighbours needed, once each
    interleaved = [found[i] for i in (0, 2, 1, 3)]  # a case's slices apart: still one read per volume
    ds = MRISegmentationDataset(interleaved, size=32, context=1, labels=True)
    assert_predict_neighbours(ds, root, "raw", 1)
    assert ds.neighbours.shape[0] == 4 and ds.input_channels == 6


def test_nifti_context_replicates_the_volumes_first_and_last_slices(tmp_path):
    root = make_brats(tmp_path / "brats", cases=1, shape=(32, 32, 8), tumour=(0, 7), brain=range(8))
    found = discover_mri_slices(root, channels="all", slice_rule="tumour").slices
    assert [r.index for r in found] == [0, 7]
    ds = MRISegmentationDataset(found, size=32, context=2)
    assert_predict_neighbours(ds, root, "brats", 2)
    image = ds[0][0].numpy()  # slice 0: offsets 0, -2, -1 are slice 0 itself
    assert np.array_equal(image[0:4], image[4:8]) and np.array_equal(image[0:4], image[8:12])
    assert not np.array_equal(image[0:4], image[12:16])  # offset +1: slice 1, context-only
    assert ds.neighbours.shape[0] == 4  # slices 1, 2, 5, 6


def test_context_only_slices_are_never_samples(tmp_path):
    root = make_raw(tmp_path / "raw", cases=3)
    found = discover_mri_slices(root, slice_rule="tumour+1").slices  # 3 of 8 slices per case
    (root / "labelsTr" / "case_003.nii.gz").write_bytes(b"not a volume")  # broken since: its slices skipped
    plain = MRISegmentationDataset(found, size=32, skip_bad_files=True)
    ctx = MRISegmentationDataset(found, size=32, skip_bad_files=True, context=3)
    assert len(ctx) == len(plain) == 6 and ctx.ids == plain.ids and ctx.records == plain.records
    assert [p.name for p, _ in ctx.skipped] == [p.name for p, _ in plain.skipped] == ["case_003.nii.gz"] * 3
    assert np.array_equal(ctx.masks, plain.masks) and np.array_equal(ctx.images, plain.images)
    assert ctx.images.shape[0] == len(ctx) and ctx.neighbours.shape[0] > 0
    for i in range(len(ctx)):
        image, mask = ctx[i]
        assert np.array_equal(image[:2], plain[i][0]) and np.array_equal(mask, plain[i][1])
    assert_predict_neighbours(ctx, root, "raw", 3)
    assert plain.neighbours is None and plain._rows is None


def recipe(tmp_path, data, name, *extra, check=True):
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data), "--image-size", "32",
           "--epochs", "1", "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0", "--val-fraction", "0.5",
           "--output-dir", str(tmp_path / "runs"), "--run-name", name, *extra]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp_path / "runs" / name


def test_lgg_run_trains_evaluates_and_refuses_2d_predict_and_export(tmp_path, capsys):
    data = make_lgg(tmp_path / "lgg", patients=4, slices=6)
    _, run = recipe(tmp_path, data, "c", "--context-slices", "1")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["context_slices"] == 1 and cfg["in_channels"] == 3  # per slice; the model takes 9
    assert main(["evaluate", "--weights", str(run), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert result["summary"]["num_images"] == 12 and result["summary"]["per_patient"]["tumour"]["n_cases"] == 2
    tif = next((data / "kaggle_3m").rglob("*_3.tif"))
    capsys.readouterr()
    assert main(["predict", "--weights", str(run), "--input", str(tif), "--output", str(tmp_path / "p")]) != 0
    assert "trained with context_slices 1" in capsys.readouterr().err and not (tmp_path / "p").exists()
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output",
                 str(tmp_path / "m.onnx")]) != 0
    assert "a 2.5D run (context_slices 1)" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_raw_run_predicts_nifti_with_its_neighbours(tmp_path):
    data = make_raw(tmp_path / "raw", cases=4, shape=(32, 32, 8), test_cases=1)
    _, run = recipe(tmp_path, data, "r", "--context-slices", "2")
    assert main(["predict", "--weights", str(run), "--input", str(data), "--output", str(tmp_path / "pred")]) == 0
    seg = nib.load(tmp_path / "pred" / "case_t005_seg.nii.gz")
    ref = nib.load(next((data / "imagesTs").glob("case_t005_0000.nii.gz")))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)


def test_2d_data_refuse_context(tmp_path):
    data = tmp_path / "folder"
    for i in range(4):
        imwrite(data / "images" / f"{i}.png", np.full((32, 32), 50 + i, np.uint8))
        imwrite(data / "masks" / f"{i}_mask.png", square_mask((32, 32)))
    proc, _ = recipe(tmp_path, data, "f", "--context-slices", "1", check=False)
    assert proc.returncode != 0 and "2.5D needs NIfTI cases or LGG patient folders" in proc.stderr
    proc, _ = recipe(tmp_path, data, "g", "--context-slices", "9", check=False)
    assert proc.returncode != 0 and "context_slices must be in [0, 8]" in proc.stderr
