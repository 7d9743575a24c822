"""The label-efficiency curve (issue 14 item 3): folders, JSON fields, plot, comparison file, resume; and the
aggregation and argument handling on their own."""

import json
import sys

import pytest

from toolkit.compare import split_args
from toolkit.comparison import Comparison
from toolkit.ssl_curve import curve_summary, run_name, score_run

from .mri_fake import make_lgg
from .utils import ROOT, load_recipe


def _driver():
    sys.path.insert(0, str(ROOT / "recipes"))  # the driver imports the recipes beside it
    return load_recipe("brain_mri_ssl_curve")


def test_curve_trains_both_arms_per_fraction_writes_the_results_and_resumes(tmp_path):
    driver = _driver()
    data = make_lgg(tmp_path / "lgg", patients=8, slices=2)
    argv = ["--data-dir", str(data), "--name", "curve", "--output-dir", str(tmp_path / "runs"), "--fractions", "1,0.5",
            "--seeds", "3", "--pretrain-minutes", "5", "--finetune-minutes", "5", "--pretrain-args", "--epochs 1",
            "--epochs", "1", "--image-size", "32", "--widths", "8,16,32", "--num-workers", "0", "--batch-size", "4",
            "--val-fraction", "0.25", "--test-fraction", "0.25", "--wandb-mode", "disabled"]
    calls = []

    def runner(script, args, name, root):
        calls.append((script.name, name))
        return driver.run_in_process(script, args, name, root)

    summary = driver.main(argv, runner)
    names = ["f0.5-s3-pretrained", "f0.5-s3-scratch", "f1-s3-pretrained", "f1-s3-scratch"]
    assert calls == [("brain_mri_pretrain.py", "pretrain"), *(("brain_mri.py", n) for n in names)]
    root = tmp_path / "runs" / "curve"
    for name in ["pretrain", *names]:
        assert (root / name / "best.pth").is_file() and (root / name / "summary.json").is_file()
    config = {n: json.loads((root / n / "config.json").read_text()) for n in names}
    assert config["f0.5-s3-pretrained"]["init_from"] == str(root / "pretrain" / "best.pth")
    assert config["f0.5-s3-scratch"]["init_from"] == ""
    assert {(c["label_fraction"], c["seed"], c["max_minutes"], c["postprocess"]) for c in config.values()} == {
        (0.5, 3, 5.0, False), (1.0, 3, 5.0, False)}
    splits = {n: json.loads((root / n / "split.json").read_text()) for n in names}
    assert splits["f0.5-s3-pretrained"]["train"] == splits["f0.5-s3-scratch"]["train"]  # the same labelled patients
    assert len(splits["f0.5-s3-scratch"]["train"]) < len(splits["f1-s3-scratch"]["train"])
    assert splits["f0.5-s3-scratch"]["test"] == splits["f1-s3-scratch"]["test"]

    saved = json.loads((root / "ssl_curve.json").read_text())
    assert saved["split"] == "test" and saved["selection_split"] is False
    assert [r["fraction"] for r in saved["fractions"]] == [0.5, 1.0]
    for row in saved["fractions"]:
        for arm in ("pretrained", "scratch"):
            assert len(row[arm]["values"]) == 1 and row[arm]["std"] is None and 0 <= row[arm]["mean"] <= 1
        assert row["gain"] == pytest.approx(row["pretrained"]["mean"] - row["scratch"]["mean"])
    score = json.loads((root / "f1-s3-scratch" / "ssl_score.json").read_text())
    assert score["split"] == "test" and score["num_images"] == len(splits["f1-s3-scratch"]["test"])
    assert (root / "ssl_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = Comparison.load(root / "comparison.json")
    assert [r["fraction"] for r in table.rows] == [0.5, 1.0]
    assert "| labelled patients |" in (root / "ssl_curve.md").read_text()
    assert "| – |" in (root / "ssl_curve.md").read_text()  # one seed: no std

    with pytest.raises(ValueError, match="were trained or validated on"):  # the training data as "external" test
        score_run(root / "f1-s3-scratch", str(data))

    calls.clear()  # a second call finds every run finished: nothing is trained again
    again = driver.main(argv, runner)
    assert calls == [] and again["fractions"] == summary["fractions"]


def test_summary_aggregates_seeds_and_names_a_missing_score():
    scores = {(f, s, arm): {"dice": d, "split": "val", "selection_split": True, "data_dir": "d", "train_slices": 10}
              for (f, s, arm), d in {(0.1, 0, "pretrained"): 0.6, (0.1, 1, "pretrained"): 0.8,
                                     (0.1, 0, "scratch"): 0.5, (0.1, 1, "scratch"): 0.5}.items()}
    row = curve_summary(scores, [0.1], [0, 1])["fractions"][0]
    assert row["pretrained"]["mean"] == pytest.approx(0.7)
    assert row["pretrained"]["std"] == pytest.approx(0.1414, abs=1e-4)  # sample std (ddof 1) of 0.6 and 0.8
    assert row["gain_per_seed"] == pytest.approx([0.1, 0.3]) and row["gain_min"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="fraction 0.1, seed 2, arm pretrained"):
        curve_summary(scores, [0.1], [0, 1, 2])
    assert run_name(0.05, 1, "scratch") == "f0.05-s1-scratch"
    assert [run_name(f, 0, "scratch") for f in (1.0, 0.1, 0.1000001)] == [  # 6 digits would give 0.1 twice
        "f1-s0-scratch", "f0.1-s0-scratch", "f0.1000001-s0-scratch"]


def test_arguments_are_split_and_refused_before_training(capsys):
    driver = _driver()
    ours, rest = split_args(["--fractions", "0.1,1", "--widths", "8,16", "--pretrain-args", "--epochs 3",
                             "--skip-bad-files", "--seeds=0"], driver.OWN, takes_value=driver.OWN)
    assert ours == ["--fractions", "0.1,1", "--pretrain-args", "--epochs 3", "--seeds=0"]
    assert rest == ["--widths", "8,16", "--skip-bad-files"]
    for argv, message in ((["--seed", "1"], "set by the curve"), (["--fractions", "0,1"], "fractions"),
                          (["--seeds", "1,1"], "seeds"), (["--seeds", "0,-1"], "in [0, 2**31)"),
                          (["--finetune-minutes", "nan"], "finetune_minutes must be finite"),
                          (["--finetune-minutes", "inf"], "finetune_minutes must be finite"),
                          (["--name", ".."], "name must be a plain folder name"),
                          (["--pretrain-args", '"--epochs 3'], "pretrain_args '\"--epochs 3' cannot be split into "
                                                                "arguments: No closing quotation"),  # a traceback
                          (["--pretrain-args", "--epochs 9 --max-minutes 30"], "(in --pretrain-args) are set by"),
                          (["--context-slices", "1"], "cannot start a 2.5D or multi-class run"),
                          (["--target", "regions"], "cannot start a 2.5D or multi-class run")):
        with pytest.raises(SystemExit) as err:  # as the script ends: run_recipe(main)
            driver.run_recipe(lambda: driver.main(argv, runner=lambda *a: pytest.fail("nothing may train")))
        stderr = capsys.readouterr().err
        assert err.value.code == 2 and stderr.startswith("error: ") and message in stderr, (argv, stderr)


def test_a_run_of_other_arguments_is_neither_reused_nor_resumed(tmp_path):
    driver = _driver()
    calls = []

    def runner(script, argv, name, root):
        calls.append(list(argv))
        (root / name / "summary.json").write_text("{}")
        return root / name

    first = driver.ensure_run(runner, driver.FINETUNE, ["--epochs", "1"], "f1-s0-scratch", tmp_path)
    assert driver.ensure_run(runner, driver.FINETUNE, ["--epochs", "1"], "f1-s0-scratch", tmp_path) == first
    with pytest.raises(driver.ConfigError, match=r"f1-s0-scratch was trained with the arguments '--epochs 1' "
                                                 r"\(changed: epochs '1' -> '2'\); .* into the curve"):
        driver.ensure_run(runner, driver.FINETUNE, ["--epochs", "2"], "f1-s0-scratch", tmp_path)
    assert calls == [["--epochs", "1"]]  # trained once, reused once, refused once


def test_one_of_several_training_folders_given_as_test_data_is_refused(tmp_path, capsys):
    """With two data folders the run's ids carry a folder prefix ("a/TCGA_..."); the same slices read from
    folder a alone have plain ids, and used to be scored as "external" test data."""
    from accelerate.state import AcceleratorState

    sys.path.insert(0, str(ROOT / "recipes"))
    a, b = make_lgg(tmp_path / "a", patients=3, slices=2), make_lgg(tmp_path / "b", patients=3, slices=2)
    try:
        load_recipe("brain_mri").main([
            "--data-dir", f"{a},{b}", "--output-dir", str(tmp_path / "runs"), "--run-name", "r", "--epochs", "1",
            "--image-size", "32", "--widths", "4,8", "--num-workers", "0", "--batch-size", "4", "--postprocess",
            "false", "--wandb-mode", "disabled"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert json.loads((tmp_path / "runs" / "r" / "split.json").read_text())["train"][0].startswith(("a/", "b/"))
    with pytest.raises(ValueError, match="were trained or validated on"):
        score_run(tmp_path / "runs" / "r", str(a))
    assert score_run(tmp_path / "runs" / "r")["split"] == "val"  # the split read back from split.json's folders
    c = make_lgg(tmp_path / "c", patients=4, slices=2)  # other files, but 3 of its patient ids are the run's
    assert score_run(tmp_path / "runs" / "r", str(c))["shared_patient_ids"] == 3
    assert "note: 3 patient id(s) of test_data_dir" in capsys.readouterr().out


def test_pretrain_args_replace_the_shared_settings_instead_of_repeating_them(tmp_path):
    """--batch-size goes to the pretraining too; --pretrain-args "--batch-size 2" replaces it there (a key given
    twice is refused by the recipes), and the fine-tuning runs keep 4."""
    driver = _driver()
    seen = {}

    class Stop(Exception):
        pass

    def runner(script, args, name, root):
        seen[name] = args
        raise Stop

    with pytest.raises(Stop):
        driver.main(["--output-dir", str(tmp_path), "--batch-size", "4", "--pretrain-args", "--batch-size=2",
                     "--synthetic-dir", str(tmp_path / "syn")], runner)
    args = seen["pretrain"]
    assert [a for a in args if a.startswith("--batch")] == ["--batch-size=2"], args
    assert "--synthetic-dir" in args  # the other shared settings still go


def test_pretrained_only_settings_reach_the_pretrained_arm_alone(tmp_path, monkeypatch):
    """--freeze-encoder-epochs and --encoder-lr-scale go to the pretrained arm; the scratch arm of the same point
    trains without them (and without --init-from), with every other setting the same."""
    driver = _driver()
    weights = tmp_path / "pretrained.pth"
    weights.write_bytes(b"")  # only its presence is checked before training
    seen = {}

    class Stop(Exception):
        pass

    def runner(script, args, name, root):
        seen[name] = args
        if name.endswith("scratch"):
            raise Stop
        return root / name

    monkeypatch.setattr(driver, "score_run", lambda *a, **k: None)  # nothing trained: nothing to score
    with pytest.raises(Stop):
        driver.main(["--output-dir", str(tmp_path), "--fractions", "1", "--seeds", "0", "--pretrained", str(weights),
                     "--freeze-encoder-epochs", "2", "--encoder-lr-scale", "0.1", "--synthetic-dir",
                     str(tmp_path / "syn")], runner)
    pre, scratch = seen["f1-s0-pretrained"], seen["f1-s0-scratch"]
    only = ["--freeze-encoder-epochs", "2", "--encoder-lr-scale", "0.1", "--init-from", str(weights)]
    assert all(a in pre for a in only) and not {"--freeze-encoder-epochs", "--encoder-lr-scale", "--init-from"} & {
        *scratch}
    assert [a for a in pre if a not in only] == scratch  # the same settings otherwise


def test_a_test_data_dir_without_slices_is_refused_before_training(tmp_path, capsys):
    """It was read only to score the first finished run (a traceback after the pretraining and a fine-tuning)."""
    driver = _driver()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        driver.run_recipe(lambda: driver.main(["--test-data-dir", str(tmp_path / "empty"), "--output-dir",
                                               str(tmp_path)], runner=lambda *a: pytest.fail("nothing may train")))
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and stderr.startswith("error: test_data_dir: no brain-MRI layout recognised in "
                                                     f"{tmp_path / 'empty'}"), stderr
