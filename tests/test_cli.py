"""`toolkit evaluate` and `toolkit predict` on a run folder built by hand (fresh weights)."""

import json

import cv2
import pytest
import torch

from toolkit import build_segmentation_model, generate_synthetic_mri, save_weights
from toolkit.checkpoint import save_json
from toolkit.cli import main


@pytest.fixture
def run(tmp_path):
    data = generate_synthetic_mri(tmp_path / "data", num_images=6, seed=1)
    run_dir = tmp_path / "runs" / "r"
    torch.manual_seed(0)
    save_weights(run_dir / "best.pth", build_segmentation_model("autoencoder").state_dict())
    save_json(run_dir / "config.json", {"recipe": "brain_mri", "model": "autoencoder", "image_size": 64,
                                        "in_channels": 1, "threshold": 0.5, "data_dir": str(data)})
    save_json(run_dir / "split.json", {"data_dir": str(data), "train": ["1", "2", "3"], "val": ["4"],
                                       "test": ["5", "6"]})
    return run_dir, data


def test_evaluate_scores_the_saved_test_split(run, capsys):
    run_dir, _ = run
    assert main(["evaluate", "--weights", str(run_dir / "best.pth")]) == 0
    strict = json.loads((run_dir / "eval_test.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert strict["summary"]["empty_correct"] is None  # no test slice without tumour: undefined, null in JSON
    result = json.loads((run_dir / "eval_test.json").read_text())
    assert [r["id"] for r in result["per_image"]] == ["5", "6"]
    assert result["summary"]["num_images"] == 2
    for key in ("dice", "iou", "dice_global", "iou_global"):
        assert 0.0 <= result["summary"][key] <= 1.0
    assert "empty" in result["empty_masks"]
    out = capsys.readouterr().out
    assert "dice_global" in out and "2 slices (test split" in out


def test_evaluate_all_and_missing_split(run, tmp_path, capsys):
    run_dir, _ = run
    assert main(["evaluate", "--weights", str(run_dir / "best.pth"), "--split", "all",
                 "--output", str(tmp_path / "all.json"), "--flips", "--one-region"]) == 0
    assert json.loads((tmp_path / "all.json").read_text())["summary"]["num_images"] == 6
    (run_dir / "split.json").write_text(json.dumps({"train": ["1"], "val": ["2"]}))
    assert main(["evaluate", "--weights", str(run_dir / "best.pth")]) == 2
    assert "no 'test' split" in capsys.readouterr().err


def test_evaluate_on_other_data_scores_every_slice_unless_a_split_is_asked(run, tmp_path, capsys):
    """--data-dir of other data: every slice by default (its numbered ids would otherwise be read as the run's
    test ids); the run's own data given again: its test split; --split test on other data: as asked."""
    run_dir, data = run
    other = generate_synthetic_mri(tmp_path / "other", num_images=8, seed=2)
    assert main(["evaluate", "--weights", str(run_dir), "--data-dir", str(other)]) == 0
    assert json.loads((run_dir / "eval_all.json").read_text())["summary"]["num_images"] == 8
    assert f"--split all: {other} is not the data the run trained on" in capsys.readouterr().out
    assert main(["evaluate", "--weights", str(run_dir), "--data-dir", str(data),
                 "--output", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["split"] == "test"
    assert main(["evaluate", "--weights", str(run_dir), "--data-dir", str(other), "--split", "test",
                 "--output", str(tmp_path / "b.json")]) == 0
    assert [r["id"] for r in json.loads((tmp_path / "b.json").read_text())["per_image"]] == ["5", "6"]


def test_predict_writes_masks_at_the_input_size(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(run_dir / "best.pth"), "--input", str(data / "images"),
                 "--output", str(out)]) == 0
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 6 and len(list(out.glob("*_overlay.png"))) == 6
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (512, 512) and set(mask.ravel().tolist()) <= {0, 255}


def test_bad_weights_give_clear_errors(tmp_path, capsys):
    assert main(["predict", "--weights", str(tmp_path / "nope.pth"), "--input", "x", "--output", "y"]) == 2
    assert "config.json not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model": "unet", "image_size": 64}))
    (tmp_path / "best.pth").write_bytes(b"not a checkpoint")
    assert main(["predict", "--weights", str(tmp_path / "best.pth"), "--input", "x", "--output", "y"]) == 2
    assert "cannot load weights" in capsys.readouterr().err


def test_largest_component_keeps_one_region():
    import numpy as np

    from toolkit.postprocess import largest_component

    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 1  # 4 pixels
    mask[5:9, 5:9] = 1  # 16 pixels
    kept = largest_component(mask)
    assert kept.sum() == 16 and kept[6, 6] == 1 and kept[1, 1] == 0
    assert largest_component(np.zeros((4, 4), bool)).sum() == 0


def test_evaluate_applies_the_stored_postprocessing_unless_told_not_to(run, tmp_path):
    run_dir, _ = run
    args = ["evaluate", "--weights", str(run_dir / "best.pth"), "--split", "all"]
    assert main([*args, "--output", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["postprocess"]["from"] == "the run's threshold"
    save_json(run_dir / "postprocess.json", {"choice": {"threshold": 0.9, "flips": True, "largest_only": True,
                                                        "min_size": 0}})
    assert main([*args, "--output", str(tmp_path / "post.json")]) == 0
    post = json.loads((tmp_path / "post.json").read_text())
    assert post["postprocess"]["threshold"] == 0.9 and post["flips"] and post["one_region"]
    assert post["postprocess"]["from"].endswith("postprocess.json")
    assert set(post["without_postprocess"]) == {"dice", "iou", "dice_global", "iou_global", "dice_tumour",
                                                "empty_correct"}
    assert main([*args, "--postprocess", "none", "--output", str(tmp_path / "none.json")]) == 0
    none = json.loads((tmp_path / "none.json").read_text())
    assert none["summary"] == plain["summary"] and not none["flips"]


def test_evaluate_and_predict_apply_a_stored_scale_tta_and_the_flag_adds_it(run, tmp_path, capsys):
    import numpy as np

    from toolkit.data.mri.io import read_image
    from toolkit.inference import load_ensemble, predict_probs

    run_dir, data = run
    scan = sorted((data / "images").iterdir())[0]
    ensemble, cfg, _, _ = load_ensemble([run_dir / "best.pth"])
    probs = predict_probs(ensemble, read_image(scan), cfg["image_size"], flips=True, scales=(0.8, 1.25))[0]
    t = round(float(np.median(probs)), 4)  # half the pixels on each side: the masks are not trivially empty
    args = ["evaluate", "--weights", str(run_dir / "best.pth"), "--split", "all"]
    save_json(run_dir / "postprocess.json", {"choice": {"threshold": t, "flips": True, "largest_only": False,
                                                        "min_size": 0, "scales": [0.8, 1.25]}})
    assert main([*args, "--output", str(tmp_path / "stored.json")]) == 0
    stored = json.loads((tmp_path / "stored.json").read_text())
    assert stored["postprocess"]["scales"] == [0.8, 1.25] and stored["flips"]
    assert "flip + scale x0.8, x1.25 TTA" in capsys.readouterr().out
    flags = [*args, "--postprocess", "none", "--threshold", str(t), "--flips"]
    assert main([*flags, "--scale-tta", "--output", str(tmp_path / "flag.json")]) == 0
    flag = json.loads((tmp_path / "flag.json").read_text())
    assert flag["per_image"] == stored["per_image"] and flag["postprocess"]["from"].endswith("from the command line")
    assert main([*flags, "--output", str(tmp_path / "flips.json")]) == 0
    pixels = [[r["pred_pixels"] for r in json.loads((tmp_path / f).read_text())["per_image"]]
              for f in ("stored.json", "flips.json")]
    assert pixels[0] != pixels[1] and all(0 < n < 64 * 64 for n in pixels[0])  # scale TTA changed the masks

    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(run_dir / "best.pth"), "--input", str(data / "images"),
                 "--output", str(out)]) == 0
    written = cv2.imread(str(out / f"{scan.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(written > 0, probs >= t)


def test_evaluate_and_predict_an_ensemble_of_folds(run, tmp_path, capsys):
    run_dir, data = run
    cv = tmp_path / "cv"
    for k in range(2):
        fold = cv / f"fold{k}"
        fold.mkdir(parents=True)
        for name in ("config.json", "split.json"):
            (fold / name).write_bytes((run_dir / name).read_bytes())
        torch.manual_seed(k)
        save_weights(fold / "best.pth", build_segmentation_model("autoencoder").state_dict())
    assert main(["evaluate", "--weights", str(cv), "--split", "all"]) == 0
    result = json.loads((cv / "eval_all.json").read_text())
    assert len(result["weights"]) == 2 and result["summary"]["num_images"] == 6
    assert "spearman_dice_vs_disagreement" in result["disagreement"]
    assert all(0 <= r["disagreement"] <= 1 for r in result["per_image"])
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(cv), "--input", str(data / "images" / "1.png"),
                 "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"1_mask.png", "1_overlay.png", "1_disagreement.png"}


def test_predict_keeps_the_subfolders_of_the_input_so_same_named_slices_do_not_collide(run, tmp_path, capsys):
    run_dir, data = run
    source = tmp_path / "in"
    for patient in ("p1", "p2"):  # slice_1.png of two patients: each writes into its own subfolder
        (source / patient).mkdir(parents=True)
        (source / patient / "slice_1.png").write_bytes((data / "images" / "1.png").read_bytes())
    (source / "top.png").write_bytes((data / "images" / "2.png").read_bytes())
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(run_dir), "--input", str(source), "--output", str(out)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["p1/slice_1_mask.png", "p1/slice_1_overlay.png", "p2/slice_1_mask.png",
                       "p2/slice_1_overlay.png", "top_mask.png", "top_overlay.png"]
    (source / "p1" / "slice_1.tif").write_bytes((data / "images" / "1.png").read_bytes())  # same folder, same name
    assert main(["predict", "--weights", str(run_dir), "--input", str(source), "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "p1/slice_1.png" in err and "p1/slice_1.tif" in err and "slice_1_mask.png" in err
    assert not (tmp_path / "o2").exists()  # nothing written, nothing overwritten


def test_an_ensemble_of_runs_with_other_2_5d_context_is_refused_naming_it(run, tmp_path, capsys):
    run_dir, _ = run
    other = tmp_path / "runs" / "ctx"  # the same run, trained with one neighbour on each side: 3 input channels
    save_json(other / "config.json", {**json.loads((run_dir / "config.json").read_text()), "context_slices": 1})
    (other / "split.json").write_bytes((run_dir / "split.json").read_bytes())
    save_weights(other / "best.pth", build_segmentation_model("autoencoder", in_channels=3).state_dict())
    assert main(["evaluate", "--weights", str(run_dir), str(other), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert "context_slices: [1] against [0]" in err and str(other / "best.pth") in err


def test_predict_again_into_an_output_folder_inside_the_input_reads_the_scans_only(run, tmp_path):
    run_dir, data = run
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "1.png").write_bytes((data / "images" / "1.png").read_bytes())
    for _ in range(2):  # the second run predicted the first one's 1_overlay.png too (1_overlay_mask.png, ...)
        assert main(["predict", "--weights", str(run_dir), "--input", str(scans), "--output", str(scans / "pred")]) == 0
    assert sorted(p.name for p in (scans / "pred").iterdir()) == ["1_mask.png", "1_overlay.png"]


def test_predict_input_files_follow_linked_folders_once(tmp_path):
    from toolkit.seg_images import input_files

    real = tmp_path / "real" / "TCGA_XX_1000_20000100"
    real.mkdir(parents=True)
    for name in ("TCGA_XX_1000_20000100_1.tif", "TCGA_XX_1000_20000100_1_mask.tif", "notes.txt"):
        (real / name).write_bytes(b"")
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.png").write_bytes(b"")
    (source / "patient").symlink_to(real, target_is_directory=True)  # a patient folder linked in
    (source / "sub" / "loop").symlink_to(source, target_is_directory=True)  # a link back up: read once
    assert input_files(source) == [source / "patient" / "TCGA_XX_1000_20000100_1.tif", source / "sub" / "a.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no PNG/JPEG/TIFF"):
        input_files(tmp_path / "empty")


def _classes_run(tmp_path):
    """A hand-made run of tumour-type classes (metadata column tumour_type) on 4 fake 2D slices."""
    from .mri_fake import make_folder

    data = make_folder(tmp_path / "data", n=4)
    (data / "metadata.csv").write_text("id,patient_id,tumour_type\n1,P1,glioma\n2,P2,glioma\n3,P3,meningioma\n"
                                       "4,P4,meningioma\n")
    run_dir = tmp_path / "runs" / "classes"
    save_weights(run_dir / "best.pth", build_segmentation_model("autoencoder", out_channels=3).state_dict())
    save_json(run_dir / "config.json", {"recipe": "brain_mri", "model": "autoencoder", "image_size": 32,
                                        "in_channels": 1, "threshold": 0.5, "class_column": "tumour_type"})
    save_json(run_dir / "target.json", {"kind": "classes", "names": ["glioma", "meningioma"], "values": [0, 1, 2],
                                        "regions": [], "intensity": "per_slice"})
    save_json(run_dir / "split.json", {"data_dir": str(data), "train": ["1", "3"], "val": ["2", "4"]})
    return run_dir


def test_postprocess_of_a_2d_classes_run_says_there_is_nothing_to_choose(tmp_path, capsys):
    run_dir = _classes_run(tmp_path)
    assert main(["postprocess", "--weights", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert not (run_dir / "postprocess.json").exists() and "wrote" not in out  # it said it wrote a file it did not
    assert "nothing to choose" in out


def test_an_output_path_under_a_file_is_an_error_line_not_a_traceback(run, tmp_path, capsys):
    run_dir, data = run
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["predict", "--weights", str(run_dir), "--input", str(data / "images" / "1.png"),
                 "--output", str(taken)]) == 2
    assert f"--output {taken} is a file" in capsys.readouterr().err
    assert main(["evaluate", "--weights", str(run_dir), "--output", str(taken / "eval.json")]) == 2
    assert str(taken) in capsys.readouterr().err


def test_evaluate_gives_each_slice_its_own_patient_and_type_when_a_bad_file_is_skipped(tmp_path):
    from .mri_fake import make_folder

    data = make_folder(tmp_path / "data", n=4)
    (data / "metadata.csv").write_text("id,patient_id,tumour_type\n1,P1,glioma\n2,P2,glioma\n3,P3,meningioma\n"
                                       "4,P4,pituitary\n")
    good = (data / "images" / "2.png").read_bytes()
    (data / "images" / "2.png").write_bytes(good[: len(good) // 2])  # truncated: left out by --skip-bad-files
    run_dir = tmp_path / "run"
    save_weights(run_dir / "best.pth", build_segmentation_model("autoencoder").state_dict())
    save_json(run_dir / "config.json", {"recipe": "brain_mri", "model": "autoencoder", "image_size": 32,
                                        "in_channels": 1, "threshold": 0.5, "skip_bad_files": True})
    save_json(run_dir / "split.json", {"data_dir": str(data), "train": ["1"], "val": ["3"], "test": ["4"]})
    assert main(["evaluate", "--weights", str(run_dir), "--split", "all"]) == 0
    result = json.loads((run_dir / "eval_all.json").read_text())
    # slice 3 was scored as P2's glioma and slice 4 as P3's meningioma (the metadata of the slices before them)
    assert [(r["id"], r["patient"], r["tumour_type"]) for r in result["per_image"]] == [
        ("1", "P1", "glioma"), ("3", "P3", "meningioma"), ("4", "P4", "pituitary")]


def test_evaluate_of_a_classes_run_refuses_one_region_which_it_would_not_apply(tmp_path, capsys):
    run_dir = _classes_run(tmp_path)
    assert main(["evaluate", "--weights", str(run_dir), "--split", "val", "--one-region"]) == 2
    assert "--one-region: the 2D component rule is for binary runs" in capsys.readouterr().err
    assert not (run_dir / "eval_val.json").exists()  # it wrote largest_only=True as applied, and did not apply it


def test_an_ensemble_of_runs_keeps_the_first_run_s_own_evaluation(run, tmp_path):
    run_dir, _ = run
    other = tmp_path / "runs" / "other"
    for name in ("config.json", "split.json"):
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        (other / name).write_bytes((run_dir / name).read_bytes())
    torch.manual_seed(1)
    save_weights(other / "best.pth", build_segmentation_model("autoencoder").state_dict())
    assert main(["evaluate", "--weights", str(run_dir)]) == 0
    own = (run_dir / "eval_test.json").read_bytes()
    assert main(["evaluate", "--weights", str(run_dir), str(other)]) == 0
    assert (run_dir / "eval_test.json").read_bytes() == own  # it was overwritten, and reported as the run's
    assert len(json.loads((run_dir / "eval_test_ensemble.json").read_text())["weights"]) == 2
    (run_dir / "eval_test_ensemble.json").unlink()
    assert main(["evaluate", "--weights", str(run_dir), "--weights", str(other)]) == 0  # the flag given twice: both,
    assert len(json.loads((run_dir / "eval_test_ensemble.json").read_text())["weights"]) == 2  # not the last alone


def test_show_must_be_a_count(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--weights", "x", "--show", "-3"])
    assert exit_.value.code == 2 and "--show: expected a whole number >= 0, got '-3'" in capsys.readouterr().err
