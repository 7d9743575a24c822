"""`make brain-mri-cv`: every fold trained, out-of-fold scores and post-processing, resumable after a kill."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from toolkit.cli import main as toolkit_main

from .mri_fake import make_folder, make_lgg, make_raw
from .utils import ROOT, load_recipe, run_env

TINY = ["--synthetic-images", "12", "--image-size", "32", "--batch-size", "4", "--num-workers", "0",
        "--widths", "4,8", "--epochs", "1", "--wandb-mode", "disabled"]


def _cv(tmp_path, folds=2, name="cv", extra=(), ours=(), **popen):
    args = [sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--folds", str(folds), "--name", name,
            "--output-dir", str(tmp_path / "runs"), *ours, "--", *TINY, "--synthetic-dir", str(tmp_path / "data"), *extra]
    env = run_env(LAUNCH=sys.executable)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def test_cv_resumes_after_a_kill_between_folds_and_scores_out_of_fold(tmp_path, capsys):
    root = tmp_path / "runs" / "cv"
    first = _cv(tmp_path)
    deadline = time.time() + 240
    while not (root / "fold0" / "summary.json").is_file():
        assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # fold 0 done, fold 1 not (or just started)
    first.wait()
    stamp = (root / "fold0" / "summary.json").stat().st_mtime_ns
    assert not (root / "cv.json").exists()

    second = _cv(tmp_path)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out[-3000:]
    assert "training fold1" in out and "training fold0" not in out  # fold 0 kept as it was
    assert (root / "fold0" / "summary.json").stat().st_mtime_ns == stamp
    cv = json.loads((root / "cv.json").read_text())
    assert cv["folds"] == 2 and cv["num_images"] == 12  # every slice scored once, out of fold
    assert cv["target"]["kind"] == "binary"
    assert [f["fold"] for f in cv["per_fold"]] == [0, 1]
    assert sum(f["num_images"] for f in cv["per_fold"]) == 12
    for key in ("out_of_fold", "out_of_fold_postprocessed"):
        assert 0 <= cv[key]["dice"] <= 1 and "dice_global" in cv[key]
    assert cv["out_of_fold_postprocessed"]["dice"] >= cv["out_of_fold"]["dice"] - 1e-9  # chosen on these slices
    assert "choice" in json.loads((root / "postprocess.json").read_text())
    val = [set(json.loads((root / f"fold{k}" / "split.json").read_text())["val"]) for k in range(2)]
    assert not val[0] & val[1]

    assert toolkit_main(["evaluate", "--weights", str(root), "--split", "all"]) == 0  # the folds' ensemble
    result = json.loads((root / "eval_all.json").read_text())
    assert len(result["weights"]) == 2 and result["postprocess"]["from"].endswith("postprocess.json")
    capsys.readouterr()
    assert toolkit_main(["evaluate", "--weights", str(root), "--split", "val"]) == 2  # fold 1 trained on fold 0's val
    assert re.search(r"--split val is read from .*fold0.*fold1.*best.pth trained on \d+ of", capsys.readouterr().err)

    for folds, extra in ((3, ()), (2, ("--seed", "7"))):  # other settings would keep folds trained on others
        out, _ = _cv(tmp_path, folds, extra=extra).communicate(timeout=120)
        assert "was started with --folds 2" in out and "training fold" not in out, out[-2000:]
    out, _ = (proc := _cv(tmp_path, name="bad", extra=("--context-slices", "1"))).communicate(timeout=120)
    assert proc.returncode == 2 and "error: a fold run stopped (exit status 2" in out  # the fold said why:
    assert out.count("2.5D needs NIfTI cases") == 1 and "Traceback" not in out  # once, no driver traceback


def test_cv_final_trains_every_patient_and_takes_the_out_of_fold_postprocessing(tmp_path, capsys):
    # nnU-Net's "all" fold: after the folds, one run on every slice the folds validated (no validation, the last
    # epoch), evaluated with the post-processing chosen out of fold; the folds' ensemble stays the folds alone
    root = tmp_path / "runs" / "cv"
    extra = ("--val-fraction", "0.3", "--patience", "3")  # the folds' own; patience fails a run without validation
    out, _ = (proc := _cv(tmp_path, extra=extra, ours=("--final",))).communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert "all: --patience left out" in out and "--patience" not in out.split("training all")[1].split("\n")[0]
    assert "training all" in out and "--val-fraction 0 " in out and "0.3" not in out.split("training all")[1][:400]
    folds_val = [json.loads((root / f"fold{k}" / "split.json").read_text())["val"] for k in range(2)]
    final = json.loads((root / "all" / "split.json").read_text())
    assert final["val"] == [] and sorted(final["train"]) == sorted(folds_val[0] + folds_val[1])
    shared = json.loads((root / "all" / "postprocess.json").read_text())
    assert shared["choice"] == json.loads((root / "postprocess.json").read_text())["choice"]
    assert str(root / "postprocess.json") in shared["copied_from"]

    assert toolkit_main(["evaluate", "--weights", str(root / "all"), "--split", "all"]) == 0
    result = json.loads((root / "all" / "eval_all.json").read_text())
    assert len(result["weights"]) == 1 and result["postprocess"]["from"] == str(root / "all" / "postprocess.json")
    assert toolkit_main(["evaluate", "--weights", str(root), "--split", "all"]) == 0
    assert len(json.loads((root / "eval_all.json").read_text())["weights"]) == 2  # not the "all" run

    stamp = (root / "all" / "summary.json").stat().st_mtime_ns
    out, _ = (again := _cv(tmp_path, extra=extra, ours=("--final",))).communicate(timeout=300)
    assert again.returncode == 0 and "training " not in out, out[-2000:]  # folds and the final run kept
    assert (root / "all" / "summary.json").stat().st_mtime_ns == stamp
    (root / "all" / "postprocess.json").unlink()
    capsys.readouterr()
    assert toolkit_main(["postprocess", "--weights", str(root)]) == 0  # chosen again out of fold: the copy follows
    assert f"wrote {root / 'all' / 'postprocess.json'}" in capsys.readouterr().out
    assert json.loads((root / "all" / "postprocess.json").read_text())["choice"] == shared["choice"]


def test_cv_final_n_trains_models_of_every_patient_with_seeds_one_apart(tmp_path):
    root, out = _cv_on(tmp_path, make_folder(tmp_path / "scans", n=12), "--seed", "5", ours=("--final", "2"))
    configs = [json.loads((root / name / "config.json").read_text()) for name in ("fold0", "all", "all1")]
    assert [c["seed"] for c in configs] == [5, 5, 6] and configs[1]["val_fraction"] == configs[2]["val_fraction"] == 0
    splits = [json.loads((root / name / "split.json").read_text()) for name in ("all", "all1")]
    assert splits[0]["train"] == splits[1]["train"] and len(splits[0]["train"]) == 12  # the same slices, all of them
    choice = json.loads((root / "postprocess.json").read_text())["choice"]
    assert all(json.loads((root / n / "postprocess.json").read_text())["choice"] == choice for n in ("all", "all1"))
    assert f"--weights {root / 'all'} {root / 'all1'}" in out


@pytest.mark.parametrize("extra, says", [((), "synthetic data (no --data-dir)"),
                                         (("--data-dir", "x", "--test-fraction", "0.2"), "--test-fraction"),
                                         (("--data-dir", "x", "--label-fraction", "0.5"), "--label-fraction")])
def test_cv_final_n_refuses_data_that_the_seed_draws_before_any_fold_trains(tmp_path, extra, says):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--name", "x", "--output-dir",
                           str(tmp_path), "--final", "3", "--", *extra], cwd=ROOT, env=run_env(LAUNCH="false"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--final 3 trains its models with other seeds, and the seed also draws {says}" \
        in proc.stderr and not (tmp_path / "x").exists()


def test_cv_final_n_reads_the_settings_of_a_config_file_and_their_values(tmp_path):
    from toolkit.cv_runs import check_final
    from toolkit.config_file import given_settings

    settings = tmp_path / "settings.yaml"
    settings.write_text("data-dir: a,b\nmax_minutes: 15\n")
    check_final(["--config", str(settings)], 3)  # the data folders come from the file: accepted
    check_final(["--data_dir", "x", "--test-fraction", "0", "--label-fraction=1.0", "--flips"], 2)  # nothing drawn
    with pytest.raises(ValueError, match="draws synthetic data"):
        check_final(["--config", str(settings), "--data-dir", ""], 2)  # the command line wins over the file
    settings.write_text('{"data_dir": "a", "test_fraction": 0.2}')
    with pytest.raises(ValueError, match=r"draws --test-fraction 0.2: each model"):
        check_final(["--config=" + str(settings)], 2)
    check_final(["--config", str(settings)], 1)  # one model: its seed is the folds' own
    assert given_settings(["--flips", "--seed", "3", "--config", str(settings), "--data-dir=c"]) == {
        "data_dir": "c", "test_fraction": "0.2", "flips": "true", "seed": "3"}


def test_cv_refuses_arguments_it_sets_itself(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--name", "x", "--",
                           "--fold", "1"], cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--fold" in proc.stderr


@pytest.mark.parametrize("name", ["", "..", "../beside"])
def test_cv_refuses_a_name_that_is_not_a_plain_folder_name(tmp_path, name, monkeypatch, capsys):
    """--name "" put the folds and cv.json straight into --output-dir, ".." beside it: refused before training."""
    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    cv = load_recipe("brain_mri_cv")
    monkeypatch.setattr(cv, "train_folds", lambda *a: pytest.fail("nothing may train"))
    with pytest.raises(SystemExit) as err:
        cv.main(["--name", name, "--output-dir", str(tmp_path / "runs"), "--", *TINY])
    assert err.value.code == 2 and f"--name must be a plain folder name (no '/', not . or ..), got {name!r}" in \
        capsys.readouterr().err


def test_cv_on_volumes_chooses_the_3d_rule_out_of_fold(tmp_path):
    # LGG patient folders: the out-of-fold search leaves components to the 3D rule, stored beside the 2D choice,
    # and the folds' ensemble applies it in evaluate (slices and patients)
    data = make_lgg(tmp_path / "lgg", patients=4, slices=6)
    args = [sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--folds", "2", "--name", "cv",
            "--output-dir", str(tmp_path / "runs"), "--", *TINY, "--data-dir", str(data)]
    proc = subprocess.run(args, cwd=ROOT, env=run_env(LAUNCH=sys.executable), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    root = tmp_path / "runs" / "cv"
    stored = json.loads((root / "postprocess.json").read_text())
    assert "components" not in [s["step"] for s in stored["steps"]]
    assert stored["volume"]["chosen_on"] == "out-of-fold predictions of 2 folds: 4 patient(s)"
    cv = json.loads((root / "cv.json").read_text())
    assert cv["num_images"] == 24 and cv["volume_postprocess"]["patients"] == 4
    assert toolkit_main(["evaluate", "--weights", str(root), "--split", "all"]) == 0
    result = json.loads((root / "eval_all.json").read_text())
    assert str(root / "postprocess.json") in result["postprocess"]["volume"] and "without_volume_postprocess" in result
    # a CV made before the 3D rule existed: `toolkit postprocess` chooses it again out of fold, keeping the old file
    (root / "postprocess.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "volume"}))
    assert toolkit_main(["postprocess", "--weights", str(root)]) == 0
    assert "volume" not in json.loads((root / "postprocess.previous.json").read_text())
    assert json.loads((root / "postprocess.json").read_text())["volume"]["rules"] == stored["volume"]["rules"]


def _cv_on(tmp_path, data, *extra, ours=()):
    # launched from another folder than the repository's: the folds run the recipe beside the script
    args = [sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--folds", "2", "--name", "cv",
            "--output-dir", str(tmp_path / "runs"), *ours, "--", *TINY, "--data-dir", str(data), *extra]
    proc = subprocess.run(args, cwd=tmp_path, env=run_env(LAUNCH=sys.executable), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return tmp_path / "runs" / "cv", proc.stdout


def test_cv_of_a_regions_run_scores_every_region_out_of_fold_and_chooses_3d_rules(tmp_path):
    # BraTS-style regions (dataset.json): no binary 2D search; slice and per-patient Dice per region out of fold,
    # the 3D rules chosen on the out-of-fold volumes and applied by the folds' ensemble
    data = make_raw(tmp_path / "raw", cases=4)
    root, out = _cv_on(tmp_path, data, "--in-channels", "2")
    cv = json.loads((root / "cv.json").read_text())
    names = cv["target"]["names"]
    assert cv["target"]["kind"] == "regions" and len(names) == 3
    assert cv["num_images"] == sum(f["num_images"] for f in cv["per_fold"])
    assert [f["per_patient"]["mean"]["n_cases"] for f in cv["per_fold"]] == [2, 2]  # 2 cases a fold
    oof = cv["out_of_fold"]
    assert oof["slices"]["num_images"] == cv["num_images"] and oof["per_patient"]["mean"]["n_cases"] == 4
    for name in names:
        assert 0 <= oof["slices"][f"dice_{name}"] <= 1 and 0 <= oof["per_patient"][name]["dice"] <= 1
    assert cv["volume_postprocess"]["patients"] == 4 and set(cv["volume_postprocess"]["channels"]) == set(names)
    assert set(cv["out_of_fold_postprocessed"]["per_patient"]) == {*names, "mean"}
    stored = json.loads((root / "postprocess.json").read_text())
    assert stored["volume"]["chosen_on"] == "out-of-fold predictions of 2 folds: 4 patient(s)"
    assert "out-of-fold (" in out and f"per patient {names[0]}" in out
    assert toolkit_main(["evaluate", "--weights", str(root), "--split", "all"]) == 0
    result = json.loads((root / "eval_all.json").read_text())
    assert str(root / "postprocess.json") in result["postprocess"]["volume"]
    assert result["summary"]["num_patients"] == 4
    assert toolkit_main(["postprocess", "--weights", str(root)]) == 0  # chosen again out of fold: the same rules
    assert json.loads((root / "postprocess.json").read_text())["volume"]["rules"] == stored["volume"]["rules"]


def test_cv_of_types_from_a_metadata_column_reports_class_accuracy(tmp_path):
    # figshare-style 2D slices whose class is a metadata column: per-type Dice and type accuracy out of fold,
    # no postprocess.json (no 2D search for classes, no volumes for a 3D rule)
    data = make_folder(tmp_path / "fig", n=8, size=(32, 32))
    rows = ["id,patient_id,tumour_type"] + [f"{p.stem},P{i // 2},{'glioma' if i % 2 else 'pituitary'}"
                                             for i, p in enumerate(sorted((data / "images").iterdir()))]
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    root, out = _cv_on(tmp_path, data, "--target", "classes", "--class-column", "tumour_type")
    cv = json.loads((root / "cv.json").read_text())
    assert cv["target"]["names"] == ["glioma", "pituitary"] and cv["num_images"] == 8
    acc = cv["out_of_fold"]["class_accuracy"]
    assert acc["num_slices"] == 8 and acc["correct"] == sum(e["correct"] for e in acc["per_class"].values())
    assert "volume_postprocess" not in cv and not (root / "postprocess.json").exists()
    assert cv["out_of_fold"]["spacing"].startswith("2D slices") and "class accuracy" in out


def test_cv_lines_reads_binary_results_with_and_without_their_target():
    from toolkit.crossval import cv_lines

    scores = {"dice": 0.5, "dice_global": 0.6, "per_patient": {"dice": 0.7}}
    result = {"folds": 1, "num_images": 3, "per_fold": [{"fold": 0, "num_images": 3, **scores}],
              "out_of_fold": scores, "out_of_fold_postprocessed": {**scores, "dice": 0.55, "dice_global": 0.65},
              "postprocess": {"summary": "threshold 0.5"}, "target": {"kind": "binary", "names": ["tumour"]}}
    legacy = {k: v for k, v in result.items() if k != "target"}  # cv.json written before 2 Dec 2026
    for r in (result, legacy):
        lines = cv_lines(r)
        assert lines[0] == "fold 0: 3 validation slices, per-image Dice 0.5000, per patient 0.7000"
        assert "pooled 0.6000; post-processed: per-image 0.5500, pooled 0.6500" in lines[1]


def test_help_says_where_the_recipe_arguments_go():
    """--help shows the whole usage: arguments after -- go to recipes/brain_mri.py, launched with $LAUNCH."""
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "brain_mri_cv.py"), "--help"], cwd=ROOT,
                          env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-- RECIPE ARGS" in proc.stdout and "recipes/brain_mri.py" in proc.stdout and "$LAUNCH" in proc.stdout
    assert "default 3" in proc.stdout


def _hand_made_folds(tmp_path, threshold=0.5):
    """A 2-fold CV folder of random autoencoders on 6 synthetic slices, each fold finished (summary.json)."""
    import torch

    from toolkit import build_segmentation_model, generate_synthetic_mri, save_weights
    from toolkit.checkpoint import save_json

    data = generate_synthetic_mri(tmp_path / "data", num_images=6, seed=1)
    root, ids = tmp_path / "cv", [str(i) for i in range(1, 7)]
    for k in range(2):
        fold = root / f"fold{k}"
        torch.manual_seed(k)
        save_weights(fold / "best.pth", build_segmentation_model("autoencoder").state_dict())
        save_json(fold / "config.json", {"recipe": "brain_mri", "model": "autoencoder", "image_size": 64,
                                         "in_channels": 1, "threshold": threshold, "data_dir": str(data)})
        val = ids[3 * k: 3 * k + 3]
        save_json(fold / "split.json", {"data_dir": str(data), "train": [i for i in ids if i not in val], "val": val})
        save_json(fold / "summary.json", {"monitor": "dice"})
    return root, data


def test_out_of_fold_scores_each_fold_at_its_own_threshold(tmp_path):
    """cv.json's per-fold and out-of-fold figures without post-processing are at the folds' --threshold: what each
    fold validated and what `toolkit evaluate --postprocess none` gives (they were at 0.5 whatever the runs used)."""
    from toolkit import out_of_fold

    root, _ = _hand_made_folds(tmp_path, threshold=0.42)  # random weights: fold 0 gives ~0.43 everywhere
    result = out_of_fold(root, [root / "fold0", root / "fold1"])
    for k in range(2):
        assert toolkit_main(["evaluate", "--weights", str(root / f"fold{k}"), "--split", "val", "--postprocess",
                             "none", "--output", str(tmp_path / f"eval{k}.json")]) == 0
        plain = json.loads((tmp_path / f"eval{k}.json").read_text())["summary"]
        for key in ("dice", "dice_global"):
            assert abs(result["per_fold"][k][key] - plain[key]) < 1e-9, (k, key)


def test_cv_whose_data_lost_a_slice_after_training_ends_in_one_error_line(tmp_path, capsys):
    from .utils import load_recipe

    root, data = _hand_made_folds(tmp_path)
    (data / "images" / "2.png").unlink()  # fold 0 validated on slice 2
    (data / "masks" / "2_mask.png").unlink()
    cv = load_recipe("brain_mri_cv")
    assert cv.main(["--folds", "2", "--name", "cv", "--output-dir", str(tmp_path), "--"]) == 2  # folds reused
    err = capsys.readouterr().err
    assert f"error: scoring the folds of {root} out of fold: {root / 'fold0' / 'split.json'}: 1 of the 3 ids" in err


def test_out_of_fold_join_keeps_one_copy_of_the_probabilities():
    # the folds' views are joined one at a time and each fold's copy dropped: the peak is the joined arrays plus
    # one view, not every view twice (1,932 figshare slices at 240 px: 1.8 GB of float32 views)
    import tracemalloc

    import numpy as np

    from toolkit.crossval import _join
    from toolkit.seg_eval import Predictions

    keys = ("probs", "flipped", "targets", "scaled", "scaled_flipped")
    rng = np.random.default_rng(0)

    def fold(n):
        return Predictions(scales=(0.8, 1.25), **{k: rng.random((n, 64, 64), dtype=np.float32) for k in keys})

    tracemalloc.start()  # before the folds: their frees count
    folds = [fold(n) for n in (30, 20, 25)]
    expected = {k: np.concatenate([getattr(f, k) for f in folds]) for k in keys}
    view = expected["probs"].nbytes
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    joined = {k: _join(folds, k) for k in keys}
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert all(np.array_equal(joined[k], expected[k]) for k in keys)
    assert all(getattr(f, k) is None for f in folds for k in keys)  # the folds' copies are gone
    assert peak <= 1.1 * view  # above what the folds held before: one view (the one being joined), not five
