"""Synthetic multi-class volumes (raw layout) and ``toolkit predict`` on NIfTI cases, after a tiny recipe run."""

import json
import shutil

import cv2
import nibabel as nib
import numpy as np
import pytest

from toolkit.cli import main as toolkit_main
from toolkit.data.errors import MRIDataError
from toolkit.data.mri import discover_mri_slices, generate_synthetic_volumes, raw_case_slices, raw_cases
from toolkit.data.mri import read_dataset_json, read_slice
from toolkit.volume_predict import find_volume_cases, normalise_channels

from .utils import SHARED_DATA, load_recipe

TINY = ["--epochs", "1", "--image-size", "32", "--widths", "8,16,32", "--num-workers", "0", "--batch-size", "8",
        "--wandb-mode", "disabled", "--postprocess", "false"]
SHAPE = (48, 40, 8)


def _recipe():
    return load_recipe("brain_mri")


def _volume(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-epoch regions run on 3 generated cases: (data root, run folder)."""
    tmp = tmp_path_factory.mktemp("vp")
    data = generate_synthetic_volumes(tmp / "data", cases=3, shape=SHAPE, seed=1)
    _recipe().main(["--data-dir", str(data), "--in-channels", "2", "--output-dir", str(tmp / "runs"),
                    "--run-name", "tiny", *TINY])
    return data, tmp / "runs" / "tiny"


def test_generator_is_deterministic_idempotent_and_in_the_raw_layout(tmp_path):
    a = generate_synthetic_volumes(tmp_path / "a", cases=2, shape=(40, 36, 8), seed=3)
    b = generate_synthetic_volumes(tmp_path / "b", cases=2, shape=(40, 36, 8), seed=3)
    c = generate_synthetic_volumes(tmp_path / "c", cases=2, shape=(40, 36, 8), seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.nii.gz"))
    assert [str(f) for f in files] == ["imagesTr/synth_001_0000.nii.gz", "imagesTr/synth_001_0001.nii.gz",
                                       "imagesTr/synth_002_0000.nii.gz", "imagesTr/synth_002_0001.nii.gz",
                                       "labelsTr/synth_001.nii.gz", "labelsTr/synth_002.nii.gz"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)  # same seed: same bytes
    assert not np.array_equal(_volume(a / files[0]), _volume(c / files[0]))  # another seed: other volumes

    stamps = {f: (a / f).stat().st_mtime_ns for f in files}
    generate_synthetic_volumes(a, cases=2, shape=(40, 36, 8), seed=3)  # complete: left alone
    assert {f: (a / f).stat().st_mtime_ns for f in files} == stamps
    (a / files[-1]).unlink()  # incomplete: written again, the same
    generate_synthetic_volumes(a, cases=2, shape=(40, 36, 8), seed=3)
    assert (a / files[-1]).read_bytes() == (b / files[-1]).read_bytes()

    found = discover_mri_slices(a)
    meta = json.loads((a / "dataset.json").read_text())
    assert found.source == "raw" and found.intensity == "zscore"
    assert found.labels == meta["labels"] == {"background": 0, "necrosis": 1, "edema": 2,
                                              "non_enhancing_tumour": 3, "enhancing_tumour": 4}
    assert found.regions == {"whole_tumour": [1, 2, 3, 4], "tumour_core": [1, 3, 4], "enhancing_tumour": [4]}
    assert meta["channel_names"] == {"0": "FLAIR", "1": "T1c"}
    assert {s.patient for s in found.slices} == {"synth_001", "synth_002"}
    assert all(s.spacing == (1.0, 1.0, 3.0) and s.num_channels == 2 for s in found.slices)
    img = nib.load(str(a / files[0]))
    assert img.shape == (40, 36, 8) and np.allclose(img.affine, np.diag([1.0, 1.0, 3.0, 1.0]))


def test_generated_tumours_are_nested_and_visible_in_their_channels(tmp_path):
    root = generate_synthetic_volumes(tmp_path, cases=3, shape=(64, 64, 12), seed=0)
    for case in ("synth_001", "synth_002", "synth_003"):
        labels = _volume(root / "labelsTr" / f"{case}.nii.gz")
        flair, t1c = (_volume(root / "imagesTr" / f"{case}_000{c}.nii.gz") for c in (0, 1))
        assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2, 3, 4}
        # in-plane neighbours: background never touches the core (1, 3, 4); necrosis touches only 1 and 3
        for axis in (0, 1):
            here, there = labels, np.roll(labels, 1, axis=axis)
            assert not (np.isin(here, (1, 3, 4)) & (there == 0)).any(), case
            assert set(np.unique(there[here == 1])) <= {1, 3}, case
        brain = flair > 0
        healthy = brain & (labels == 0)
        assert flair[labels == 2].mean() > flair[healthy].mean() + 3 * flair[healthy].std() / 2
        assert t1c[labels == 4].mean() > t1c[labels == 2].mean() + 3 * t1c[healthy].std() / 2
        assert t1c[labels == 1].mean() < t1c[healthy].mean()
        assert (brain == (t1c > 0)).all() and not brain[0, 0, 0]


def test_generator_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="cases must be >= 1"):
        generate_synthetic_volumes(tmp_path, cases=0)
    with pytest.raises(ValueError, match=r"shape must be \(X, Y, Z\)"):
        generate_synthetic_volumes(tmp_path, shape=(8, 8, 8))


def test_volume_intensities_are_those_of_training(tiny_run):
    data, _ = tiny_run
    spec = read_dataset_json(data)
    case = raw_cases(data, "Tr", spec)[1]
    volume = normalise_channels([_volume(p).astype(np.float32) for p in case.channels], "zscore")
    vols = {}
    for rec in raw_case_slices(case, spec, slice_rule="all"):
        image, _ = read_slice(rec, vols)
        assert np.array_equal(image, volume[:, :, rec.index]), rec.id


def test_predict_a_case_from_its_channel_files(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    first = data / "imagesTr" / "synth_002_0000.nii.gz"
    assert [c.case for c in find_volume_cases(first)] == ["synth_002"]
    assert toolkit_main(["predict", "--weights", str(run / "best.pth"), "--input", str(first),
                         "--output", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["synth_002_seg.nii.gz", "synth_002_seg.png"]
    seg, ref = nib.load(str(tmp_path / "out" / "synth_002_seg.nii.gz")), nib.load(str(first))
    assert seg.shape == ref.shape == SHAPE
    assert np.array_equal(seg.affine, ref.affine) and seg.header.get_zooms() == ref.header.get_zooms()
    labels = np.asarray(seg.dataobj)
    assert seg.get_data_dtype() == np.uint8 and labels.dtype == np.uint8
    declared = set(read_dataset_json(data).labels.values())
    assert set(np.unique(labels)) <= declared
    png = cv2.imread(str(tmp_path / "out" / "synth_002_seg.png"))
    assert png.shape == (SHAPE[0], SHAPE[1], 3)
    assert "synth_002: (48, 40, 8) voxels" in capsys.readouterr().out

    # the raw-layout folder: every imagesTr case
    assert toolkit_main(["predict", "--weights", str(run), "--input", str(data),
                         "--output", str(tmp_path / "all")]) == 0
    assert sorted(p.name for p in (tmp_path / "all").glob("*.nii.gz")) == [
        f"synth_00{i}_seg.nii.gz" for i in (1, 2, 3)]
    assert np.array_equal(_volume(tmp_path / "all" / "synth_002_seg.nii.gz"), labels)  # same case, same labels


def test_predict_refuses_a_case_with_the_wrong_channel_count(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    lone = tmp_path / "in" / "scan_0000.nii.gz"
    lone.parent.mkdir()
    shutil.copy(data / "imagesTr" / "synth_001_0000.nii.gz", lone)
    assert toolkit_main(["predict", "--weights", str(run / "best.pth"), "--input", str(lone),
                         "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "case scan has 1 channel file(s) (scan_0000.nii.gz) but the model expects 2" in err
    assert not (tmp_path / "out").exists()
    from toolkit.inference import load_ensemble
    from toolkit.postprocess import PostProcess
    from toolkit.volume_predict import predict_volumes

    ensemble, cfg, _, _ = load_ensemble([run])
    with pytest.raises(MRIDataError, match="case scan has 1 channel"):
        predict_volumes(ensemble, cfg, PostProcess(), lone.parent, tmp_path / "out")


def test_predict_a_real_brats_case(tmp_path):
    real = SHARED_DATA / "brats2013-multiclass"
    if not (real / "dataset.json").is_file():
        pytest.skip(f"real data not found at {real}")
    _recipe().main(["--data-dir", str(real), "--in-channels", "2", "--slice-rule", "tumour",
                    "--output-dir", str(tmp_path / "runs"), "--run-name", "real", *TINY])
    first = real / "imagesTr" / "brats2013_pat0001_0000.nii.gz"
    assert find_volume_cases(first)[0].brain_mask == real / "brainmasksTr" / "brats2013_pat0001.nii.gz"
    assert toolkit_main(["predict", "--weights", str(tmp_path / "runs" / "real" / "best.pth"), "--input", str(first),
                         "--output", str(tmp_path / "out")]) == 0
    seg, ref = nib.load(str(tmp_path / "out" / "brats2013_pat0001_seg.nii.gz")), nib.load(str(first))
    assert seg.shape == ref.shape and np.allclose(seg.affine, ref.affine)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= set(read_dataset_json(real).labels.values())


def _dice(p, t):
    return 1.0 if not p.any() and not t.any() else 2 * (p & t).sum() / (p.sum() + t.sum())


def test_evaluate_scores_the_label_volumes_that_predict_writes(tmp_path):
    # model resolution = the volumes' in-plane size and every slice scored, so that evaluate and the written
    # files see the same voxels; regions read back from the written labels as BraTS does; the stored 3D rule
    # (chosen again by `toolkit postprocess`) applied by both
    data = generate_synthetic_volumes(tmp_path / "data", cases=4, shape=(32, 32, 8), seed=3)
    _recipe().main(["--data-dir", str(data), "--in-channels", "2", "--output-dir", str(tmp_path / "runs"),
                    "--run-name", "sq", "--slice-rule", "all", *TINY])
    run = tmp_path / "runs" / "sq"
    assert toolkit_main(["postprocess", "--weights", str(run)]) == 0
    assert toolkit_main(["evaluate", "--weights", str(run / "best.pth"), "--split", "all"]) == 0
    assert toolkit_main(["predict", "--weights", str(run / "best.pth"), "--input", str(data),
                         "--output", str(tmp_path / "out")]) == 0
    result = json.loads((run / "eval_all.json").read_text())
    spec = read_dataset_json(data)
    regions = result["target"]["regions"]
    assert len(result["patients"]) == 4
    for row in result["patients"]:
        written = _volume(tmp_path / "out" / f"{row['case']}_seg.nii.gz")
        truth = _volume(data / "labelsTr" / f"{row['case']}{spec.file_ending}")
        for name, values in zip(result["target"]["names"], regions):
            got = _dice(np.isin(written, values), np.isin(truth, values))
            assert got == pytest.approx(row[name]["dice"], abs=1e-6), (row["case"], name)


def test_predict_refuses_a_channel_with_nan_voxels(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    bad = tmp_path / "bad"
    bad.mkdir()
    for k in range(2):
        shutil.copy(data / "imagesTr" / f"synth_001_000{k}.nii.gz", bad)
    img = nib.load(str(bad / "synth_001_0001.nii.gz"))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(vol, img.affine, img.header), str(bad / "synth_001_0001.nii.gz"))
    assert toolkit_main(["predict", "--weights", str(run / "best.pth"), "--input", str(bad / "synth_001_0000.nii.gz"),
                         "--output", str(tmp_path / "out")]) == 2
    assert "synth_001_0001.nii.gz: holds 1 NaN or infinite voxel values" in capsys.readouterr().err
    assert not (tmp_path / "out" / "synth_001_seg.nii.gz").exists()


def test_predict_refuses_a_2d_image_for_a_volume_run(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    image = tmp_path / "slice.png"
    cv2.imwrite(str(image), np.zeros((32, 32), np.uint8))
    assert toolkit_main(["predict", "--weights", str(run / "best.pth"), "--input", str(image),
                         "--output", str(tmp_path / "out")]) == 2
    assert "was trained on NIfTI volumes (raw layout" in capsys.readouterr().err


def test_a_run_of_one_named_channel_predicts_from_channel_files_and_images_folders(tiny_run, tmp_path, capsys):
    data, _ = tiny_run
    _recipe().main(["--data-dir", str(data), "--channels", "t1c", "--in-channels", "1", "--output-dir",
                    str(tmp_path / "runs"), "--run-name", "t1c", *TINY])
    weights = str(tmp_path / "runs" / "t1c" / "best.pth")
    whole = tmp_path / "whole"
    assert toolkit_main(["predict", "--weights", weights, "--input", str(data), "--output", str(whole)]) == 0
    for given in (data / "imagesTr" / "synth_002_0001.nii.gz", data / "imagesTr"):  # the file, the folder
        out = tmp_path / given.name.split(".")[0]
        assert toolkit_main(["predict", "--weights", weights, "--input", str(given), "--output", str(out)]) == 0
        assert np.array_equal(_volume(out / "synth_002_seg.nii.gz"), _volume(whole / "synth_002_seg.nii.gz"))
    lone = tmp_path / "lone"  # channel files without their dataset.json: the name t1c cannot be resolved
    lone.mkdir()
    for k in range(2):
        shutil.copy(data / "imagesTr" / f"synth_002_000{k}.nii.gz", lone)
    assert toolkit_main(["predict", "--weights", weights, "--input", str(lone), "--output", str(tmp_path / "x")]) == 2
    assert "reads the channels 't1c' of its data" in capsys.readouterr().err


def test_channel_indices_pick_channel_files_without_a_dataset_json(tmp_path):
    """A run of --channels "1" (indices, not names) picks <case>_0001 from a case's files with no dataset.json to
    read; names still need one; a lone volume given for a one-channel run is taken as it is."""
    from toolkit.data.errors import MRIDataError
    from toolkit.volume_cases import VolumeCase, case_channels

    files = tuple(tmp_path / f"c_000{k}.nii.gz" for k in range(3))
    case = VolumeCase("c", files)
    assert case_channels(case, {"channels": "1", "in_channels": 1}, tmp_path) == (files[1],)
    assert case_channels(case, {"channels": "2,0", "in_channels": 2}, tmp_path) == (files[2], files[0])
    with pytest.raises(MRIDataError, match="lacks channel file.*c_0005"):
        case_channels(case, {"channels": "5", "in_channels": 1}, tmp_path)
    with pytest.raises(MRIDataError, match="reads the channels 't1c'"):
        case_channels(case, {"channels": "t1c", "in_channels": 1}, tmp_path)
    lone = VolumeCase("brain", (tmp_path / "brain.nii.gz",))
    assert case_channels(lone, {"channels": "1", "in_channels": 1}, tmp_path) == lone.channels


def test_a_case_missing_channel_0000_is_refused_not_read_as_shifted_channels(tmp_path):
    """A run of every channel of its data (channels "") given <case>_0001 and _0002 without _0000 read them as
    channels 0 and 1 and predicted silently; now an error names the missing file. A complete case still passes."""
    from toolkit.volume_cases import VolumeCase, case_channels

    cfg = {"channels": "", "in_channels": 2}
    shifted = VolumeCase("c", tuple(tmp_path / f"c_000{k}.nii.gz" for k in (1, 2)))
    with pytest.raises(MRIDataError, match="case c lacks channel file.*c_0000.*numbered from 0000"):
        case_channels(shifted, cfg, tmp_path)
    gap = VolumeCase("c", tuple(tmp_path / f"c_000{k}.nii.gz" for k in (0, 2)))
    with pytest.raises(MRIDataError, match="lacks channel file.*c_0001"):
        case_channels(gap, cfg, tmp_path)
    whole = VolumeCase("c", tuple(tmp_path / f"c_000{k}.nii.gz" for k in (0, 1)))
    assert case_channels(whole, cfg, tmp_path) == whole.channels
    # a run of picked indices reads them by number, as before
    assert case_channels(shifted, {"channels": "1,2", "in_channels": 2}, tmp_path) == shifted.channels


@pytest.mark.parametrize("style", ["2020", "2023"])
def test_a_brats_run_predicts_a_brats_case_folder_by_modality(tmp_path, style):
    """A run trained on BraTS case folders given one (or one of its volumes): before, every modality file was a
    one-channel case of its own (a 4-channel run refused them all, a FLAIR run wrote a "segmentation" of its T1,
    T1ce and T2 volumes too); now they are one case, its channels picked as training picked them, and predicting
    into the case folder is refused rather than writing over the case's own <case>_seg.nii.gz."""
    from tests.mri_fake import make_brats
    from toolkit.postprocess import PostProcess
    from toolkit.volume_cases import case_channels
    from toolkit.volume_predict import predict_volumes

    root = make_brats(tmp_path / "brats", cases=1, shape=(24, 24, 8), style=style)
    folder = next(root.iterdir())
    trained = discover_mri_slices(root, channels=0).slices[0].channel_paths  # what training reads, in order
    for given in (folder, sorted(folder.iterdir())[-1]):  # the case folder, one of its volumes
        cases = find_volume_cases(given, layout="brats")
        assert [c.case for c in cases] == [folder.name]
        assert case_channels(cases[0], {"channels": "", "in_channels": 4}, given) == trained
    flair = case_channels(cases[0], {"channels": "", "in_channels": 1}, folder)
    assert flair == discover_mri_slices(root).slices[0].channel_paths  # the default: FLAIR alone
    assert flair[0].name.endswith(("_flair.nii.gz", "-t2f.nii.gz"))
    assert len(find_volume_cases(folder)) == 4  # another layout's run: each file alone, as before
    if style == "2020":  # <case>_seg.nii.gz is the case's own segmentation
        with pytest.raises(MRIDataError, match="own segmentation"):
            predict_volumes(None, {"channels": "", "in_channels": 4}, PostProcess(), folder, folder, layout="brats")


def test_the_label_volume_keeps_the_grid_but_not_the_scans_display_range(tmp_path):
    """The scan's cal_min/cal_max (intensities 0..1234) were copied into <case>_seg.nii.gz, so a viewer honouring
    them showed labels 0..4 in a window of 0..1234 (all black); now the window is 0..the largest label."""
    from toolkit.volume_predict import write_case

    affine = np.array([[0, -1.2, 0, 30], [-0.9, 0, 0, 20], [0, 0, 2.5, -5], [0, 0, 0, 1.0]])
    scan = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), affine)
    scan.header["cal_min"], scan.header["cal_max"] = 0, 1234
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[2:4, 1:3, 1:3] = 4
    seg, _, k = write_case(tmp_path, "c", labels, scan, np.zeros((6, 5, 4), np.uint8))
    out = nib.load(str(seg))
    assert np.allclose(out.affine, affine) and out.header.get_zooms() == scan.header.get_zooms()
    assert (float(out.header["cal_min"]), float(out.header["cal_max"])) == (0.0, 4.0)
    assert np.array_equal(np.asarray(out.dataobj), labels) and k == 2


def test_predict_refuses_a_brain_mask_on_another_grid_as_training_does(tmp_path):
    """predict compared the brain mask's shape only: a mask shifted 5 mm normalised the case over the wrong voxels;
    now the training check (shape and affine) names it, before any case is predicted."""
    from tests.mri_fake import make_raw
    from toolkit.postprocess import PostProcess
    from toolkit.volume_predict import predict_volumes

    root = make_raw(tmp_path / "raw", cases=1, brain_masks=True)
    mask = next((root / "brainmasksTr").iterdir())
    img = nib.load(str(mask))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine + np.array([[0, 0, 0, 5.0]] + [[0] * 4] * 3)),
             str(mask))
    with pytest.raises(MRIDataError, match="affine differs") as err:
        predict_volumes(None, {"channels": "", "in_channels": 2}, PostProcess(), root, tmp_path / "out")
    assert err.value.path == mask and not (tmp_path / "out").exists()


def test_one_region_on_volumes_is_said_not_to_apply(tiny_run, tmp_path, capsys):
    """--one-region (a 2D rule) was silently ignored for NIfTI input; predict now says the 3D rule applies instead."""
    data, run = tiny_run
    first = data / "imagesTr" / "synth_001_0000.nii.gz"
    assert toolkit_main(["predict", "--weights", str(run), "--input", str(first), "--output", str(tmp_path / "o"),
                         "--one-region"]) == 0
    assert "2D component rule (largest region per slice) does not apply to volumes" in capsys.readouterr().out


def test_a_raw_layout_whose_imagests_holds_no_case_predicts_imagestr(tmp_path):
    """imagesTs/ holding no case (only a .DS_Store) was chosen over imagesTr/ anyway: predict found 0 cases, wrote
    nothing and returned 0. Now imagesTr/ is predicted, and a layout without any case is an error."""
    from tests.mri_fake import make_raw

    root = make_raw(tmp_path / "raw", cases=2)
    (root / "imagesTs").mkdir()
    (root / "imagesTs" / ".DS_Store").write_bytes(b"\0")
    assert [c.case for c in find_volume_cases(root)] == ["case_001", "case_002"]
    for p in (root / "imagesTr").iterdir():
        p.unlink()
    with pytest.raises(FileNotFoundError, match="no case in imagesTs/ or imagesTr/"):
        find_volume_cases(root)
