"""Segmentation targets (binary, classes, regions): label conversions, the multi-class loss against MONAI,
per-class metrics, classes from metadata, and the recipe trained on a raw layout with regions."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from toolkit import DiceCELoss, TargetMetrics, TargetSpec, parse_regions, resolve_target, segmentation_loss
from toolkit.data.mri import AttributeClasses, MRISlice, attribute_classes
from toolkit.targets import BRATS_REGIONS

from .mri_fake import make_brats, make_raw
from .utils import ROOT, logged, run_env

BRATS = TargetSpec.regions_of(BRATS_REGIONS)
CLASSES = TargetSpec.classes({"background": 0, "necrosis": 1, "edema": 2, "enhancing": 4})


def labels_of(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.uint8).view(1, 1, len(rows), len(rows[0]))


def test_regions_truth_and_round_trip():
    lab = labels_of([[0, 1, 2, 4]])
    truth = BRATS.truth(lab)[0, :, 0]  # (R, W)
    assert truth.tolist() == [[False, True, True, True], [False, True, False, True], [False, False, False, True]]
    assert BRATS.paint_order() == [(0, 2), (1, 1), (2, 4)]
    back = BRATS.to_labels(truth.unsqueeze(0).unsqueeze(2).float())  # (1, 1, W) labels
    assert back[0, 0].tolist() == [0, 1, 2, 4]
    # label 3 (non-enhancing) shares every region with 1: it comes back as 1, as the module says
    assert BRATS.to_labels(BRATS.truth(labels_of([[3]])).float())[0].item() == 1



def test_overlapping_regions_that_do_not_nest_come_back_as_their_labels():
    """x = 1+2, y = 2+3: a pixel of y alone is label 3. Painting alone wrote 2 (so it read back in x too: a perfect
    prediction scored Dice 0.8 for x); now every label whose regions differ comes back. BraTS is unchanged: each
    of the 8 combinations of its regions gives the value the largest-first painting gives."""
    from toolkit.volume_postprocess import ComponentRule, VolumePostprocess

    for regions, labels in (({"x": (1, 2), "y": (2, 3)}, [0, 1, 2, 3]),
                            ({"a": (1, 2, 3), "b": (2, 3), "c": (3, 4)}, [0, 1, 2, 3, 4])):
        spec = TargetSpec.regions_of(regions)
        lab = labels_of([labels])
        assert spec.to_labels(spec.truth(lab).float())[0, 0].tolist() == labels
        assert torch.equal(spec.written(spec.truth(lab).float()), spec.truth(lab))  # evaluate: Dice 1 when perfect
        none = VolumePostprocess(spec, (ComponentRule(),) * len(regions))  # predict's 3D repainting, identity
        volume = lab[0].numpy()  # (1, 1, W): any 3 axes
        assert (none.apply_labels(volume) == volume).all()
    combos = torch.tensor([[(k >> r) & 1 for r in range(3)] for k in range(8)], dtype=torch.bool).T.reshape(1, 3, 1, 8)
    painted = torch.zeros(1, 1, 8, dtype=torch.uint8)
    for r, value in BRATS.paint_order():
        painted[combos[:, r]] = value
    assert torch.equal(BRATS.to_labels(combos.float()), painted)


def test_written_regions_are_those_the_label_map_holds():
    # pixel 0: enhancing alone (no whole tumour, no core): painted 4, so in all three regions as written;
    # pixel 1: core without whole tumour; pixel 2: nothing; pixel 3: whole tumour alone
    probs = torch.tensor([[0.1, 0.2, 0.1, 0.9], [0.3, 0.8, 0.1, 0.2], [0.7, 0.1, 0.2, 0.1]]).view(1, 3, 1, 4)
    hard, written = BRATS.hard(probs)[0, :, 0], BRATS.written(probs)[0, :, 0]
    assert hard.tolist() == [[False, False, False, True], [False, True, False, False], [True, False, False, False]]
    assert written.tolist() == [[True, True, False, True], [True, True, False, False], [True, False, False, False]]
    assert torch.equal(BRATS.truth(BRATS.to_labels(probs)[:, None]), BRATS.written(probs))
    assert torch.equal(CLASSES.written(probs.softmax(1).repeat(1, 2, 1, 1)[:, :4]),
                       CLASSES.hard(probs.softmax(1).repeat(1, 2, 1, 1)[:, :4]))  # classes: as hard


def test_classes_encode_hard_and_labels_with_gaps():
    lab = labels_of([[0, 1, 2, 4, 7]])  # 7 is not a class: background
    assert CLASSES.out_channels == 4
    assert CLASSES.encode(lab)[0, 0].tolist() == [0, 1, 2, 3, 0]
    probs = torch.nn.functional.one_hot(CLASSES.encode(lab), 4).permute(0, 3, 1, 2).float()
    assert CLASSES.to_labels(probs)[0, 0].tolist() == [0, 1, 2, 4, 0]
    hard = CLASSES.hard(probs)
    assert hard.shape == (1, 3, 1, 5) and torch.equal(hard, CLASSES.truth(lab))


def test_spec_dict_round_trip_and_bad_specs():
    for spec in (TargetSpec.binary(), CLASSES, BRATS):
        assert TargetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert TargetSpec.from_dict(None) == TargetSpec.binary()
    with pytest.raises(ValueError, match="background"):
        TargetSpec.classes({"a": 1, "b": 2})
    with pytest.raises(ValueError, match="kind"):
        TargetSpec("softmax")


def test_parse_and_resolve():
    assert parse_regions("wt=1+2+3+4, et=4") == {"wt": (1, 2, 3, 4), "et": (4,)}
    for bad in ("wt", "wt=a", "wt=0", ""):
        with pytest.raises(ValueError):
            parse_regions(bad)
    labels = {"background": 0, "necrosis": 1, "edema": 2}
    assert resolve_target("").kind == "binary"
    assert resolve_target("", labels=labels).kind == "classes"
    assert resolve_target("", labels=labels, regions={"wt": [1, 2]}).kind == "regions"
    assert resolve_target("binary", labels=labels, regions={"wt": [1, 2]}).kind == "binary"
    assert resolve_target("regions", labels=labels, regions_text="a=1,b=2").names == ("a", "b")
    assert resolve_target("", class_names=["glioma", "meningioma"]).values == (0, 1, 2)
    with pytest.raises(ValueError, match="regions"):
        resolve_target("regions", labels=labels)
    with pytest.raises(ValueError, match="class-column"):
        resolve_target("classes")


def test_user_regions_are_checked_against_the_target_and_the_declared_labels():
    labels = {"background": 0, "necrosis": 1, "edema": 2, "non_enhancing": 3, "enhancing": 4}
    assert resolve_target("", labels=labels, regions_text="wt=1+2").regions == ((1, 2),)
    assert resolve_target("", class_names=["glioma", "meningioma"], regions_text="any=1+2").kind == "regions"
    for kind in ("classes", "binary"):  # not silently ignored
        with pytest.raises(ValueError, match=f"given with target '{kind}'.*--target regions"):
            resolve_target(kind, labels=labels, regions_text="wt=1+2")
    # data that declare no labels (BraTS case folders: label maps in their _seg files): the regions as given
    assert resolve_target("", regions_text="wt=1+2+4,et=4").regions == ((1, 2, 4), (4,))
    with pytest.raises(ValueError, match=r"region 'wt' holds label value\(s\) 9 that the data do not declare; "
                                         r"valid labels: 1 \(necrosis\), 2 \(edema\), 3 \(non_enhancing\), 4 "):
        resolve_target("regions", labels=labels, regions_text="et=4,wt=1+2+9")
    with pytest.raises(ValueError, match=r"value\(s\) 3 that"):
        resolve_target("", class_names=["glioma", "meningioma"], regions_text="x=3")


def test_recipe_refuses_regions_it_would_ignore_or_not_find(tmp_path):
    data = make_raw(tmp_path / "raw", cases=2, shape=(32, 32, 8))
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data), "--epochs", "1",
           "--output-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"]
    proc = subprocess.run([*cmd, "--target", "classes", "--regions", "wt=1+2"], env=run_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "error: regions 'wt=1+2' given with target 'classes'" in proc.stderr
    proc = subprocess.run([*cmd, "--regions", "wt=1+2+9"], env=run_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("error: ") == 1, proc.stderr[-3000:]
    assert "region 'wt' holds label value(s) 9 that the data do not declare; valid labels: 1 (necrosis)" in proc.stderr
    # BraTS case folders declare no labels but hold label maps: --regions is how they train regions
    brats = make_brats(tmp_path / "brats", cases=2, shape=(32, 32, 8))
    proc = subprocess.run([*cmd[:3], str(brats), *cmd[4:], "--regions", "wt=1+2+4,et=4", "--image-size", "32",
                           "--widths", "8,16,32", "--num-workers", "0", "--postprocess", "false", "--run-name", "b"],
                          env=run_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "runs" / "b" / "target.json").read_text())["regions"] == [[1, 2, 4], [4]]


def test_dice_ce_matches_monai():
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 8, 8)
    target = torch.randint(0, 4, (3, 8, 8))
    ours = DiceCELoss(eps=1e-6)(logits, target)
    ref = monai_losses.DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, squared_pred=True,
                                  smooth_nr=1e-6, smooth_dr=1e-6)(logits, target[:, None])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    ce_only = DiceCELoss(dice_weight=0)(logits, target)
    assert ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="ce_weight"):
        DiceCELoss(ce_weight=-1)
    with pytest.raises(ValueError, match="class indices"):
        DiceCELoss()(logits, target[:, None])
    assert isinstance(segmentation_loss("classes", "dice_bce"), DiceCELoss)
    # multi-output targets use batch Dice: a class absent from one slice does not push the others to zero
    assert segmentation_loss("classes", "dice").dice.batch and segmentation_loss("regions", "dice_bce").dice.batch
    assert not segmentation_loss("binary", "dice").batch  # the spec's per-image soft Dice
    # --batch-dice: one Dice over the batch. Hand-computed on logits +/-20 (p = 1 or 0 to float precision):
    # image 0 right (4 pixels), image 1 without tumour but 2 false-positive pixels. Per image: (0 + 1) / 2 = 0.5,
    # whatever image 1 predicts; over the batch: 1 - 2*4 / (6 + 4) = 0.2, lower when the false positives go
    logits, mask = torch.full((2, 1, 4, 4), -20.0), torch.zeros(2, 1, 4, 4)
    logits[0, 0, :2, :2], mask[0, 0, :2, :2], logits[1, 0, 0, :2] = 20.0, 1.0, 20.0
    batch_loss = segmentation_loss("binary", "dice", batch_dice=True)
    assert batch_loss.batch and segmentation_loss("regions", "dice", batch_dice=False).batch  # regions: always
    assert segmentation_loss("binary", "dice")(logits, mask).item() == pytest.approx(0.5, abs=1e-5)
    assert batch_loss(logits, mask).item() == pytest.approx(0.2, abs=1e-5)
    assert segmentation_loss("binary", "dice_bce", batch_dice=True).dice.batch
    with pytest.raises(ValueError, match="batch_dice"):
        segmentation_loss("binary", "dice", batch_dice="yes")
    one_slice_each = torch.zeros(2, 3, 4, 4)
    one_slice_each[0, 1], one_slice_each[1, 2] = 8.0, 8.0  # confident, correct class per slice
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0], target[1] = 1, 2
    assert segmentation_loss("classes", "dice").dice(torch.softmax(one_slice_each, 1)[:, 1:],
                                                     torch.nn.functional.one_hot(target, 3).movedim(-1, 1)[:, 1:].float()) < 0.01
    assert DiceCELoss(ce_weight=0)(one_slice_each, target) > 0.25  # per image: each absent class costs ~0.6 here


def test_target_metrics_per_class_hand_computed():
    spec = TargetSpec.classes({"background": 0, "a": 1, "b": 2})
    lab = labels_of([[1, 1, 2, 0]])
    pred_labels = torch.tensor([[1, 0, 2, 2]])  # a: tp 1, fn 1 -> 2/3; b: tp 1, fp 1 -> 2/3
    probs = torch.nn.functional.one_hot(pred_labels, 3).permute(0, 2, 1).unsqueeze(2).float()
    m = TargetMetrics(spec)
    m.update(probs, lab)
    out = m.compute()
    assert out["dice_a"] == pytest.approx(2 / 3) and out["dice_b"] == pytest.approx(2 / 3)
    assert out["dice"] == pytest.approx(2 / 3) and out["num_images"] == 1
    with pytest.raises(ValueError, match="channels"):
        m.update(probs[:, :2], lab)
    masks = TargetMetrics(spec)  # the same figures from masks made beforehand (out-of-fold scoring)
    masks.update_masks(spec.hard(probs), spec.truth(lab))
    assert masks.compute() == out
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        masks.update_masks(spec.hard(probs)[:, :1], spec.truth(lab)[:, :1])
    m.reset()
    assert math.isnan(m.compute()["dice"])


def test_attribute_classes(tmp_path):
    recs = [MRISlice(str(i), "p", "folder", tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png",
                     attributes=(("tumour_type", t),)) for i, t in enumerate(["glioma", "pituitary", "glioma"])]
    assert attribute_classes(recs, "tumour_type") == ["glioma", "pituitary"]
    with pytest.raises(ValueError, match="grade"):
        attribute_classes(recs, "grade")

    class Binary:
        records = recs

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2, dtype=torch.uint8), torch.ones(1, 2, 2, dtype=torch.uint8)

    wrapped = AttributeClasses(Binary(), "tumour_type", ["glioma", "pituitary"])
    assert [int(wrapped[i][1].max()) for i in range(3)] == [1, 2, 1]
    assert wrapped.records is recs  # other attributes are the wrapped dataset's


def test_recipe_trains_regions_on_raw_layout(tmp_path):
    data = make_raw(tmp_path / "raw", cases=4, shape=(32, 32, 8))
    cmd = [sys.executable, str(ROOT / "recipes" / "brain_mri.py"), "--data-dir", str(data), "--in-channels", "2",
           "--image-size", "32", "--epochs", "1", "--widths", "8,16,32", "--batch-size", "4", "--num-workers", "0",
           "--val-fraction", "0.25", "--output-dir", str(tmp_path / "runs"), "--run-name", "r"]
    env = run_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-env"), WANDB_SILENT="true",
                  WANDB_DATA_DIR=str(tmp_path / "wandb-data"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
                  WANDB_INIT_TIMEOUT="300")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "r"
    stored = json.loads((run / "target.json").read_text())
    assert stored["kind"] == "regions" and stored["intensity"] == "zscore"
    assert stored["names"] == ["whole_tumour", "tumour_core", "enhancing_tumour"]
    last = json.loads((run / "history.json").read_text())[-1]
    assert {"dice_whole_tumour", "dice_tumour_core", "dice_enhancing_tumour"} <= set(last)
    assert (run / "figures" / "overlays_epoch001.png").is_file()
    post = json.loads((run / "postprocess.json").read_text())  # the 2D search is binary only: the 3D choice
    assert post["choice"]["flips"] is False and post["choice"]["largest_only"] is False
    assert set(post["volume"]["rules"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # W&B media show tumour of any region
    rows, _ = logged(run_file)
    assert [r for r in rows if r.get("val/segmentation/_type") == "images/separated"]
    assert [r for r in rows if r.get("val/worst_slices/_type") == "table-file"]
