"""toolkit.volume_postprocess: 3D component rules per class/region chosen on patients, nesting of regions,
storage beside a binary postprocess.json, and `toolkit evaluate` / NIfTI `predict` applying them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.mri_fake import RAW_REGIONS, make_lgg, make_raw
from tests.utils import ROOT, run_env
from toolkit.cli import main
from toolkit.data.mri.nifti import load_nifti
from toolkit.postprocess import POSTPROCESS_FILE, PostProcess, load_postprocess, load_volume_key, save_volume_key
from toolkit.targets import TargetSpec
from toolkit.volume_eval import pack_masks
from toolkit.volume_postprocess import (ComponentRule, VolumePostprocess, choose_volume_postprocess,
                                        largest_component_3d, remove_small_components_3d)
from toolkit.volume_postprocess_run import report_lines, stored_volume_postprocess

BINARY = TargetSpec.binary()
REGIONS = TargetSpec.regions_of(RAW_REGIONS)  # whole_tumour ⊃ tumour_core ⊃ enhancing_tumour


def box(shape, z, y, x):
    m = np.zeros(shape, bool)
    m[z, y, x] = True
    return m


def as_slices(volumes: dict) -> tuple[list, np.ndarray]:
    """{case: (pred bool (C, D, H, W), truth)} → (keys, packed (N, H, W)) with the slices shuffled."""
    keys, packed = [], []
    for case, (p, t) in volumes.items():
        pk = pack_masks(p.transpose(1, 0, 2, 3), t.transpose(1, 0, 2, 3))
        keys += [(case, z) for z in range(len(pk))]
        packed.append(pk)
    order = np.random.default_rng(0).permutation(len(keys))
    return [keys[i] for i in order], np.concatenate(packed)[order]


def tumour_and_island(shape=(12, 32, 32), shift=0):
    truth = box(shape, np.s_[3:8], np.s_[8 + shift:18 + shift], np.s_[8:18])
    pred = box(shape, np.s_[3:8], np.s_[9 + shift:19 + shift], np.s_[8:18])  # the tumour, one voxel off
    return pred | box(shape, np.s_[9:11], np.s_[26:29], np.s_[26:29]), truth  # + an island of 18 voxels far away


def test_components_3d_use_full_connectivity():
    m = box((5, 8, 8), np.s_[0:2], np.s_[0:2], np.s_[0:2]) | box((5, 8, 8), 2, 2, 2)  # touches by a corner only
    m |= box((5, 8, 8), np.s_[3:5], np.s_[5:8], np.s_[5:8])  # 18 voxels, apart
    assert largest_component_3d(m).sum() == 18 and largest_component_3d(np.zeros((2, 3, 3))).sum() == 0
    assert remove_small_components_3d(m, 10).sum() == 18 and remove_small_components_3d(m, 9).sum() == 27
    with pytest.raises(ValueError, match="3D"):
        largest_component_3d(np.zeros((4, 4), bool))


def test_tumour_plus_distant_island_chooses_the_largest_component():
    vols = {c: tuple(v[None] for v in tumour_and_island(shift=k)) for k, c in enumerate(("p1", "p2", "p3"))}
    keys, packed = as_slices(vols)
    choice, report = choose_volume_postprocess(BINARY, keys, packed, {c: (2.0, 1.0, 1.0) for c in vols})
    assert choice.rules == (ComponentRule("largest"),)  # "min_voxels" 20 scores the same: the simpler one wins
    r = report["channels"]["tumour"]
    assert r["after"]["dice"] > r["before"]["dice"] and r["after"]["hd95_mm"] < r["before"]["hd95_mm"]
    assert report["patients"] == ["p1", "p2", "p3"] and len(r["options"]) == 2 + 4
    assert report_lines(report)[0].endswith(" mm")  # spacing known; without it (LGG TIFFs) HD95 is in voxels
    assert report_lines(choose_volume_postprocess(BINARY, keys, packed)[1])[0].endswith(" voxels")


def test_two_real_lesions_choose_none():
    shape = (12, 32, 32)
    truth = box(shape, np.s_[2:8], np.s_[4:14], np.s_[4:14]) | box(shape, np.s_[3:6], np.s_[22:28], np.s_[22:28])
    pred = box(shape, np.s_[2:8], np.s_[5:14], np.s_[4:14]) | box(shape, np.s_[3:6], np.s_[22:27], np.s_[22:28])
    keys, packed = as_slices({"a": (pred[None], truth[None]), "b": (truth[None], truth[None])})
    choice, report = choose_volume_postprocess(BINARY, keys, packed)
    assert choice.rules == (ComponentRule(),)
    options = {o["rule"]: o["dice"] for o in report["channels"]["tumour"]["options"]}
    assert options["largest component only"] < options["all components kept"]


def regions_case(shape=(12, 32, 32)):
    """Nested regions (C=3, D, H, W): a tumour with core and enhancing parts, and a far island holding all three."""
    tumour = box(shape, np.s_[3:8], np.s_[6:18], np.s_[6:18])
    island = box(shape, np.s_[9:11], np.s_[25:30], np.s_[25:30])
    core, enh = box(shape, np.s_[4:7], np.s_[9:15], np.s_[9:15]), box(shape, np.s_[5:6], np.s_[11:13], np.s_[11:13])
    small = box(shape, np.s_[9:11], np.s_[26:28], np.s_[26:28])
    pred = np.stack([tumour | island, core | small, enh | box(shape, 10, 27, 27)])
    return pred, np.stack([tumour, core, enh])


def test_regions_keep_nesting_when_the_whole_tumour_drops_an_island():
    pred, truth = regions_case()
    pred[1, 0, 0, 0] = True  # a core voxel outside the whole tumour (raw channels need not nest)
    assert np.array_equal(VolumePostprocess(REGIONS, (ComponentRule(),) * 3).apply(pred), pred)  # none: identity
    rule = VolumePostprocess(REGIONS, (ComponentRule("largest"), ComponentRule(), ComponentRule()))
    out = rule.apply(pred)
    assert np.array_equal(out[0], truth[0]) and np.array_equal(out[1], truth[1]) and np.array_equal(out[2], truth[2])
    assert not (out[1] & ~out[0]).any() and not (out[2] & ~out[1]).any()
    # label volumes (NIfTI predict): painted back in BraTS values, the island gone from every region
    labels = np.zeros(pred.shape[1:], np.uint8)
    for r, value in REGIONS.paint_order():
        labels[regions_case()[0][r]] = value
    assert np.array_equal(VolumePostprocess(REGIONS, (ComponentRule(),) * 3).apply_labels(labels), labels)
    kept = rule.apply_labels(labels)
    assert not kept[9:].any() and np.array_equal(kept[:9], labels[:9])
    keys, packed = as_slices({"a": (pred, truth), "b": regions_case()})
    choice, report = choose_volume_postprocess(REGIONS, keys, packed)
    assert choice.rules[0].rule != "none" and list(report["channels"]) == list(REGIONS.names)
    assert all(report["channels"][n]["after"]["dice"] == pytest.approx(1.0) for n in REGIONS.names)
    assert report["channels"]["tumour_core"]["before"]["dice"] < 1.0  # its island went with the whole tumour's


def test_apply_packed_matches_the_volumes_for_shuffled_and_repeated_slices():
    pred, truth = regions_case()
    keys, packed = as_slices({"a": (pred, truth), "b": (pred[:, ::-1].copy(), truth)})
    keys, packed = keys + keys[:5], np.concatenate([packed, packed[:5]])
    rule = VolumePostprocess(REGIONS, (ComponentRule("min_voxels", 30), ComponentRule("largest"), ComponentRule()))
    out = rule.apply_packed(keys, packed)
    want = {"a": rule.apply(pred), "b": rule.apply(pred[:, ::-1].copy())}
    for (case, z), row, before in zip(keys, out, packed):
        assert all(np.array_equal((row >> c) & 1, want[case][c, z]) for c in range(3))
        assert np.array_equal(row >> 3, before >> 3)  # truth bits untouched


def test_storage_next_to_a_binary_postprocess_json(tmp_path):
    path = tmp_path / POSTPROCESS_FILE
    two_d = PostProcess(threshold=0.4, flips=True, largest_only=True)
    path.write_text(json.dumps({"choice": two_d.to_dict(), "steps": [{"step": "baseline"}], "num_images": 7}))
    rule = VolumePostprocess(BINARY, (ComponentRule("min_voxels", 100),))
    save_volume_key(path, {**rule.to_dict(), "report": {}})
    post, data = load_postprocess(path)
    assert post == two_d and data["steps"] == [{"step": "baseline"}] and data["num_images"] == 7
    assert VolumePostprocess.from_dict(load_volume_key(path), BINARY) == rule
    assert stored_volume_postprocess(f"{path} with threshold=0.3 from the command line", BINARY)[0] == rule
    assert stored_volume_postprocess("the run's threshold", BINARY)[0] is None  # --postprocess none
    odd = tmp_path / "run with flair" / POSTPROCESS_FILE  # a run folder whose name holds " with "
    odd.parent.mkdir()
    odd.write_bytes(path.read_bytes())
    assert stored_volume_postprocess(str(odd), BINARY)[0] == rule
    assert stored_volume_postprocess(f"{odd} with flips=True from the command line", BINARY)[0] == rule
    with pytest.raises(ValueError, match="whole_tumour"):
        VolumePostprocess.from_dict(load_volume_key(path), REGIONS)
    regions = tmp_path / "r" / POSTPROCESS_FILE  # a regions run: no 2D choice, the identity one is written
    save_volume_key(regions, VolumePostprocess(REGIONS, (ComponentRule("largest"),) * 3).to_dict(), threshold=0.45)
    assert load_postprocess(regions)[0] == PostProcess(threshold=0.45)


def train(tmp_path, data, name, *extra, in_channels="2"):
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data), "--in-channels", in_channels,
           "--image-size", "32", "--epochs", "1", "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0",
           "--val-fraction", "0.5", "--output-dir", str(tmp_path / "runs"), "--run-name", name, *extra]
    proc = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "runs" / name


def test_recipe_chooses_and_evaluate_and_predict_apply_it(tmp_path, capsys):
    data = make_raw(tmp_path / "raw", cases=4, shape=(32, 32, 8), test_cases=1)
    run = train(tmp_path, data, "r")
    stored = json.loads((run / POSTPROCESS_FILE).read_text())
    assert set(stored["volume"]["rules"]) == set(REGIONS.names) and stored["choice"]["largest_only"] is False
    assert set(stored["volume"]["report"]["channels"]) == set(REGIONS.names)
    assert main(["evaluate", "--weights", str(run), "--split", "val", "--postprocess", "none",
                 "--output", str(tmp_path / "none.json")]) == 0
    plain = json.loads((tmp_path / "none.json").read_text())
    assert plain["postprocess"]["volume"].startswith("none") and "without_volume_postprocess" not in plain
    # a rule that removes every component shows that evaluate and predict apply the stored choice
    stored["volume"]["rules"] = {n: {"rule": "min_voxels", "min_voxels": 10**9} for n in REGIONS.names}
    (run / POSTPROCESS_FILE).write_text(json.dumps(stored))
    assert main(["evaluate", "--weights", str(run), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert "under 1000000000 voxels" in result["postprocess"]["volume"]
    assert result["without_volume_postprocess"] == plain["summary"]["per_patient"]
    assert all(r[n]["pred_volume_ml"] == 0 for r in result["patients"] for n in REGIONS.names)
    assert main(["predict", "--weights", str(run), "--input", str(data), "--output", str(tmp_path / "pred")]) == 0
    assert "under 1000000000 voxels" in capsys.readouterr().out
    assert not np.asarray(load_nifti(tmp_path / "pred" / "case_t005_seg.nii.gz")).any()


@pytest.mark.parametrize("layout", ["raw", "lgg"])
def test_binary_run_on_volumes_keeps_its_2d_choice_and_adds_the_3d_one(tmp_path, layout, capsys):
    # NIfTI cases and LGG patient folders alike: the 2D search leaves components to the 3D rule chosen after it
    data = make_raw(tmp_path / "raw", cases=4, shape=(32, 32, 8)) if layout == "raw" else make_lgg(tmp_path / "lgg")
    run = train(tmp_path, data, "b", *(("--target", "binary") if layout == "raw" else ()),
                in_channels="2" if layout == "raw" else "0")
    folder = data
    post, data = load_postprocess(run / POSTPROCESS_FILE)
    assert [s["step"] for s in data["steps"]] == ["baseline", "flip TTA", "scale TTA", "threshold"]
    assert not post.largest_only and post.min_size == 0
    assert list(data["volume"]["rules"]) == ["tumour"] and data["volume"]["after_2d"] == post.describe()
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert str(run / POSTPROCESS_FILE) in result["postprocess"]["volume"] and "without_volume_postprocess" in result
    # the per-slice scores are those of the masks after the 3D rule: one that removes everything empties them all
    data["volume"]["rules"]["tumour"] = {"rule": "min_voxels", "min_voxels": 10**9}
    (run / POSTPROCESS_FILE).write_text(json.dumps(data))
    assert main(["evaluate", "--weights", str(run / "best.pth"), "--split", "val"]) == 0
    result = json.loads((run / "eval_val.json").read_text())
    assert result["per_image"] and all(r["pred_pixels"] == 0 for r in result["per_image"])
    assert result["summary"]["per_patient"]["tumour"]["dice"] == pytest.approx(
        np.mean([float(r["tumour"]["true_volume_ml"] == 0) for r in result["patients"]]))
    if layout == "lgg":  # predict on patient folders applies the same rule to their stacked slices
        def predicted(name, *extra):
            args = ["predict", "--weights", str(run / "best.pth"), "--input", str(folder), "--threshold", "1e-6"]
            assert main([*args, "--output", str(tmp_path / name), *extra]) == 0
            return [np.asarray(Image.open(p)) for p in sorted((tmp_path / name).rglob("*_mask.png"))]
        assert any(m.any() for m in predicted("plain", "--postprocess", "none"))
        assert "then per patient folder" not in capsys.readouterr().out
        masks = predicted("rule")
        assert "then per patient folder" in capsys.readouterr().out  # the rule named once, as the ONNX path below
        assert len(masks) == len(list(folder.rglob("*_mask.tif"))) and not any(m.any() for m in masks)
        one = sorted(p for p in folder.rglob("*.tif") if not p.stem.endswith("_mask"))[0]  # part of a patient:
        assert main(["predict", "--weights", str(run / "best.pth"), "--input", str(one), "--threshold", "1e-6",
                     "--output", str(tmp_path / "one")]) == 0  # the 3D rule is not judged on one slice
        assert "3D rule not applied to 1 patient(s) given in part" in capsys.readouterr().out
        assert np.asarray(Image.open(tmp_path / "one" / f"{one.stem}_mask.png")).any()
        # the ONNX export carries the rule, and its predict (torch blocked) applies it the same way
        onnx_file = tmp_path / "b.onnx"
        assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output", str(onnx_file),
                     "--no-check"]) == 0
        code = ("import sys; sys.modules['torch'] = None\n"
                "from toolkit.cli import main\n"
                f"sys.exit(main(['predict', '--weights', {str(onnx_file)!r}, '--input', {str(folder)!r}, "
                f"'--output', {str(tmp_path / 'onnx')!r}, '--threshold', '1e-6']))\n")
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and "then per patient folder" in done.stdout, done.stderr[-2000:]
        onnx_masks = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "onnx").rglob("*_mask.png"))]
        assert len(onnx_masks) == len(masks) and not any(m.any() for m in onnx_masks)


def test_postprocess_command_gives_an_older_run_the_choice_of_today(tmp_path, capsys):
    # a run without post-processing (as an LGG run trained before LGG folders had the 3D choice): the command
    # chooses the 2D part and the 3D rule on its validation patients; a second call keeps the file it replaces
    run = train(tmp_path, make_lgg(tmp_path / "lgg"), "old", "--postprocess", "false", in_channels="0")
    assert not (run / POSTPROCESS_FILE).exists()
    assert main(["postprocess", "--weights", str(run)]) == 0
    post, data = load_postprocess(run / POSTPROCESS_FILE)
    assert data["chosen_on"] == "validation split of old" and list(data["volume"]["rules"]) == ["tumour"]
    assert "3D post-processing chosen on 2 validation patient(s)" in capsys.readouterr().out
    assert main(["postprocess", "--weights", str(run / "best.pth")]) == 0
    assert json.loads((run / "postprocess.previous.json").read_text()) == data
    assert load_postprocess(run / POSTPROCESS_FILE)[1]["volume"]["rules"] == data["volume"]["rules"]  # same choice
    with pytest.raises(SystemExit):  # one run only
        main(["postprocess", "--weights", str(run), str(run)])


def test_a_region_rule_is_judged_with_the_regions_it_contains():
    # the whole tumour predicted as the true tumour, a false island of 12 voxels and a one-voxel piece that holds
    # the predicted core and enhancing part (both right). "largest" alone gains whole-tumour Dice (it drops the
    # island) but throws the core and enhancing voxels away with the piece: judged with them, it loses
    shape = (12, 32, 32)
    tumour, piece = box(shape, np.s_[2:9], np.s_[4:16], np.s_[4:16]), box(shape, 4, 23, 23)
    island = box(shape, np.s_[10:12], np.s_[28:31], np.s_[0:2])
    truth = np.stack([tumour | piece, piece, piece])
    pred = np.stack([tumour | island | piece, piece, piece])
    keys, packed = as_slices({"b": (pred, truth)})
    choice, report = choose_volume_postprocess(REGIONS, keys, packed)
    wt = report["channels"]["whole_tumour"]
    by_rule = {o["rule"]: o for o in wt["options"]}
    largest, none = by_rule["largest component only"], by_rule["all components kept"]
    assert largest["dice"] > none["dice"]  # the whole tumour alone would take "largest" ...
    assert largest["dice_with_contained"] < none["dice_with_contained"]  # ... which empties core and enhancing
    assert choice.rules[0].rule == "none" and wt["judged_with"] == ["tumour_core", "enhancing_tumour"]
    assert report["channels"]["tumour_core"]["after"]["dice"] == 1.0 and "within" not in report["channels"][
        "tumour_core"]
    # a rule that does restrict the contained regions is named in their line
    _, report = choose_volume_postprocess(REGIONS, *as_slices({"a": regions_case()}))
    assert "(inside the kept whole_tumour" in report_lines(report)[1]


def test_the_3d_choice_takes_the_2d_search_probabilities_instead_of_predicting_again(tmp_path, monkeypatch):
    # a binary run on volumes chooses 2D, then 3D on the same validation patients: one prediction pass, not two,
    # and the same postprocess.json as with two; rewritten weights are predicted anew
    import torch

    import toolkit.seg_eval as seg_eval
    from toolkit import ChoosePostprocess, ChooseVolumePostprocess, build_segmentation_model
    from toolkit.checkpoint import save_weights
    from toolkit.data.mri import MRISegmentationDataset, discover_folders
    from toolkit.data import input_preprocess

    found = discover_folders(str(make_lgg(tmp_path / "lgg")), channels=0)
    val, preprocess = MRISegmentationDataset(found.slices, size=32), input_preprocess(found.intensity)

    def build():
        torch.manual_seed(0)
        return build_segmentation_model("unet", in_channels=3, out_channels=1, widths=(8, 16, 32))

    calls = []
    real = seg_eval.collect_probs
    monkeypatch.setattr(seg_eval, "collect_probs", lambda *a, **k: calls.append(k) or real(*a, **k))
    stored = {}
    for name, reuse in (("twice", False), ("once", True)):
        run = tmp_path / name / "run"  # the same folder name: chosen_on names it
        run.mkdir(parents=True)
        save_weights(run / "best.pth", build().state_dict())
        calls.clear()
        plane = ChoosePostprocess(build, val, preprocess)
        plane.choose(run)
        ChooseVolumePostprocess(build, val, preprocess, BINARY, reuse=plane if reuse else None).choose(run)
        assert len(calls) == (1 if reuse else 2), name
        stored[name] = json.loads((run / POSTPROCESS_FILE).read_text())
        assert (plane.take(run / "best.pth") is None) == reuse  # kept until taken, and taken once
    assert stored["once"] == stored["twice"] and list(stored["once"]["volume"]["rules"]) == ["tumour"]
    plane.choose(run)
    save_weights(run / "best.pth", build().state_dict())  # new weights since the 2D search: predicted again
    calls.clear()
    ChooseVolumePostprocess(build, val, preprocess, BINARY, reuse=plane).choose(run)
    assert len(calls) == 1
