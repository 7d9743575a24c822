"""Ensembles, per-image/patient/type summaries and the disagreement report, on tiny models and constructed masks."""

import numpy as np
import pytest
import torch

from toolkit.ensemble import SegmentationEnsemble, disagreement, resolve_weights, scaled_side, slice_disagreement
from toolkit.models.segmentation import build_segmentation_model
from toolkit.postprocess import PostProcess
from toolkit.seg_eval import collect_probs, disagreement_report, image_records, summarise


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, n=5, size=32, channels=1):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        self.y = (torch.rand(n, 1, size, size, generator=g) > 0.8).to(torch.uint8)
        self.ids = [str(i) for i in range(n)]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _model(seed):
    torch.manual_seed(seed)
    return build_segmentation_model("unet", widths=(4, 8)).eval()


def test_ensemble_of_identical_models_equals_the_single_model():
    data = _Pairs()
    single = collect_probs(SegmentationEnsemble([_model(0)]), data, flips=True)
    copies = SegmentationEnsemble([_model(0), _model(0), _model(0)])
    triple = collect_probs(copies, data, flips=True)
    np.testing.assert_allclose(triple.probs, single.probs, atol=1e-6)
    np.testing.assert_allclose(triple.flipped, single.flipped, atol=1e-6)
    assert single.disagreement is None
    np.testing.assert_array_equal(triple.disagreement, 0.0)  # identical members never disagree


def test_ensemble_averages_member_probabilities():
    a, b = _model(0), _model(1)
    x = torch.randn(2, 1, 32, 32)
    mean = SegmentationEnsemble([a, b])(x)
    expected = 0.5 * (torch.sigmoid(a(x)) + torch.sigmoid(b(x)))
    torch.testing.assert_close(mean, expected)
    with pytest.raises(ValueError, match="at least one"):
        SegmentationEnsemble([])


def test_scale_tta_predicts_each_scale_and_averages_them_back_at_the_scan_size():
    seen = []

    class Probe(torch.nn.Module):  # logit = the input, so the probabilities are sigmoid(view of x)
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return x

    ens = SegmentationEnsemble([Probe()])
    x = torch.randn(2, 1, 240, 200)
    assert scaled_side(240, 0.8) == 192 and scaled_side(240, 1.25) == 304 and scaled_side(200, 1.25) == 256
    assert scaled_side(10, 0.5) == 16  # never below one multiple
    out = ens.member_probs(x, flips=True, scales=(0.8, 1.25))
    assert out.shape == (1, 2, 1, 240, 200)
    assert seen == [(240, 200)] * 2 + [(192, 160)] * 2 + [(304, 256)] * 2  # each scale with its flip
    views = [ens.view_probs(x, s) for s in (1.0, 0.8, 1.25)]
    assert all(v.shape == (1, 2, 1, 240, 200) for v in views)
    torch.testing.assert_close(views[0][0], torch.sigmoid(x))  # the scan's own scale is the plain prediction
    flipped = [ens.view_probs(x, s, flip=True) for s in (1.0, 0.8, 1.25)]
    torch.testing.assert_close(out, sum(0.5 * (v + f) for v, f in zip(views, flipped)) / 3)
    torch.testing.assert_close(ens(x, scales=(0.8, 1.25)), sum(views)[0] / 3)
    flat = torch.full((1, 1, 240, 240), 0.3)  # a flat scan resizes to itself: every scale agrees
    torch.testing.assert_close(ens(flat, flips=True, scales=(0.8, 1.25)), torch.sigmoid(flat))


def test_collect_probs_with_scale_tta_matches_the_ensemble_and_names_what_is_missing():
    data = _Pairs(n=3)
    ens = SegmentationEnsemble([_model(0)])
    preds = collect_probs(ens, data, flips=True, scales=(0.8, 1.25))
    x = ens.preprocess(data.x)
    np.testing.assert_allclose(preds.scaled, ens(x, scales=(0.8, 1.25))[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(preds.scaled_flipped, ens(x, True, (0.8, 1.25))[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(preds.flipped, ens(x, True)[:, 0].numpy(), atol=1e-6)
    assert preds.chosen(PostProcess(flips=True, scales=(0.8, 1.25))) is preds.scaled_flipped
    with pytest.raises(ValueError, match=r"computed at scales \[0.8, 1.25\]"):
        preds.chosen(PostProcess(scales=(0.9,)))
    plain = collect_probs(ens, data, flips=False)
    assert plain.scaled is None and plain.flipped is None
    with pytest.raises(ValueError, match="flip TTA chosen but its probabilities were not computed"):
        plain.chosen(PostProcess(flips=True))


def test_disagreement_map_and_slice_score():
    m = torch.zeros(4, 1, 1, 2, 2)
    m[:2, 0, 0, 0, 0] = 0.9           # half the members: maximal disagreement at one pixel
    m[:, 0, 0, 1, 1] = 0.9            # all agree at another
    d = disagreement(m, 0.5)
    assert d[0, 0, 0, 0] == 1 and d[0, 0, 1, 1] == 0
    assert slice_disagreement(m, 0.5).tolist() == [0.5]  # union of 2 pixels, one disputed


def test_resolve_weights(tmp_path):
    for k in range(3):
        (tmp_path / "cv" / f"fold{k}").mkdir(parents=True)
        (tmp_path / "cv" / f"fold{k}" / "best.pth").write_bytes(b"")
    (tmp_path / "cv" / "postprocess.json").write_text("{}")
    files, post = resolve_weights([tmp_path / "cv"])
    assert [f.parent.name for f in files] == ["fold0", "fold1", "fold2"] and post == tmp_path / "cv" / "postprocess.json"
    files, post = resolve_weights([tmp_path / "cv" / "fold1", tmp_path / "cv" / "fold2" / "best.pth"])
    assert len(files) == 2 and post is None
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_weights([tmp_path / "nowhere"])


def test_resolve_weights_refuses_a_cross_validation_killed_before_its_last_fold_finished(tmp_path):
    cv = tmp_path / "cv"
    for k in range(3):  # fold 2 was killed mid-training: a best.pth of an early epoch, no summary.json
        (cv / f"fold{k}").mkdir(parents=True)
        (cv / f"fold{k}" / "best.pth").write_bytes(b"")
        if k < 2:
            (cv / f"fold{k}" / "summary.json").write_text("{}")
    (cv / "cv_args.json").write_text('{"folds": 3, "args": []}')
    with pytest.raises(ValueError, match=r"3-fold cross-validation has not finished \(fold2 without summary.json"):
        resolve_weights([cv])
    (cv / "fold2" / "summary.json").write_text("{}")
    assert len(resolve_weights([cv])[0]) == 3
    (cv / "cv_args.json").write_text('{"folds": 4, "args": []}')  # started with 4: fold3 never trained
    with pytest.raises(ValueError, match="fold3 without"):
        resolve_weights([cv])


def test_resolve_weights_refuses_a_model_given_twice(tmp_path):
    for k in range(2):
        (tmp_path / "cv" / f"fold{k}").mkdir(parents=True)
        (tmp_path / "cv" / f"fold{k}" / "best.pth").write_bytes(b"")
    with pytest.raises(ValueError, match=r"fold0.best.pth is given twice"):  # fold 0 would weigh double
        resolve_weights([tmp_path / "cv", tmp_path / "cv" / "fold0"])


def test_summary_per_image_pooled_patient_and_type():
    t = np.zeros((3, 2, 2), np.uint8)
    p = np.zeros_like(t)
    t[0, 0, :] = 1; p[0, 0, :] = 1          # slice a: Dice 1
    t[1, 0, :] = 1; p[1, 0, 0] = 1          # slice b: Dice 2/3
    p[2, 1, 1] = 1                          # slice c: empty truth, a false pixel: Dice 0
    meta = [{"patient": "P1", "tumour_type": "glioma"}, {"patient": "P1", "tumour_type": "glioma"},
            {"patient": "P2", "tumour_type": "meningioma"}]
    records = image_records(["a", "b", "c"], p, t, meta)
    s = summarise(records)
    assert s["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert s["dice_global"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp 3, fp 1, fn 1
    assert s["per_patient"]["num_patients"] == 2
    assert s["per_patient"]["dice"] == pytest.approx((2 * 3 / (2 * 3 + 1) + 0) / 2)
    assert s["per_tumour_type"]["glioma"]["dice"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["empty_correct"] == 0 and s["dice_tumour"] == pytest.approx(5 / 6)


def test_disagreement_report_flags_the_worst():
    records = [{"dice": d} for d in np.linspace(0, 1, 20)]
    report = disagreement_report(records, np.linspace(1, 0, 20))  # most disputed = lowest Dice
    assert report["flagged_among_lowest_dice"] == 1.0 and report["spearman_dice_vs_disagreement"] == pytest.approx(-1)
    report = disagreement_report(records, np.linspace(0, 1, 20))
    assert report["flagged_among_lowest_dice"] == 0.0


def test_disagreement_spearman_gives_tied_slices_their_mean_rank():
    # four empty slices predicted empty (Dice 1, nobody disputes) and one disputed miss: a perfect negative relation;
    # ranking ties by their order gave 0 (on real LGG slices, +0.081 where Spearman is -0.219)
    records = [{"dice": d} for d in (1.0, 1.0, 1.0, 1.0, 0.5)]
    report = disagreement_report(records, np.array([0.0, 0.0, 0.0, 0.0, 0.8]))
    assert report["spearman_dice_vs_disagreement"] == pytest.approx(-1)


def test_disagreement_lowest_dice_share_counts_every_slice_tied_with_the_last():
    # 5 slices of Dice 0 but "the lowest 10%" of 20 is 2 of them: the 2 most disputed are Dice 0 slices, which
    # the arbitrary pick by order (slices 0 and 1) left out (0% flagged); chance is then the 5 of 20
    records = [{"dice": d} for d in [0.0] * 5 + list(np.linspace(0.5, 1, 15))]
    report = disagreement_report(records, np.array([0.0, 0.0, 0.0, 0.9, 0.8] + [0.1] * 15))
    assert report["flagged_among_lowest_dice"] == 1.0 and report["chance"] == 0.25


def test_summary_counts_tumour_missed_and_found_elsewhere():
    t = np.zeros((4, 4, 4), np.uint8)
    p = np.zeros_like(t)
    t[0, :2, :2] = 1                         # slice 0: tumour predicted empty
    t[1, :2, :2] = 1; p[1, 3, 3] = 1         # slice 1: a region, but none of it on the tumour
    t[2, :2, :2] = 1; p[2, 0, 0] = 1; p[2, 3, 3] = 1   # slice 2: partly right: neither count
    p[3, 3, 3] = 1                           # slice 3: no tumour, a false pixel: neither count
    s = summarise(image_records(["a", "b", "c", "d"], p, t))
    assert (s["tumour_missed"], s["tumour_elsewhere"]) == (1, 1)


def test_members_trained_on_other_folders_are_not_refused_for_clashing_ids(tmp_path):
    """evaluate --split val refuses a member that trained on the scored slices; slice ids are compared per data
    folder, so numeric ids of another folder do not count, and a run on A meets a run on A,B."""
    import json
    from types import SimpleNamespace

    from toolkit.seg_commands import _refuse_trained_on

    def member(name, data_dir, train):
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.json").write_text(json.dumps({"data_dir": data_dir, "train": train, "val": []}))
        return tmp_path / name / "best.pth"

    first = member("a", "/d/fig", ["1", "2"])
    scored = [SimpleNamespace(id="3"), SimpleNamespace(id="4")]  # val slices of /d/fig
    _refuse_trained_on(scored, [first, member("other", "/d/lgg", ["3", "4"])], "val", "/d/fig")  # same ids, other data
    with pytest.raises(ValueError, match=r"--split val .*both/best.pth trained on 1 of its 2 slices"):
        _refuse_trained_on(scored, [first, member("both", "/d/fig, /d/more", ["fig/4", "more/3"])], "val", "/d/fig")
    with pytest.raises(ValueError, match="same/best.pth trained on 2 of its 2"):
        _refuse_trained_on(scored, [first, member("same", "/d/fig", ["3", "4"])], "val", "/d/fig")


def test_an_lgg_folder_and_its_kaggle_3m_root_are_the_same_data(tmp_path):
    """evaluate: --data-dir X/kaggle_3m of a run on X (or X of a run whose split.json, written before 3 Dec 2026,
    holds X/kaggle_3m) reads the same slices and ids: the default split stays test, not all (which scored the
    training slices), and a member trained on them is still refused for --split val."""
    import json
    from types import SimpleNamespace

    from toolkit.seg_commands import _folders, _refuse_trained_on

    (tmp_path / "lgg" / "kaggle_3m").mkdir(parents=True)
    lgg, root = str(tmp_path / "lgg"), str(tmp_path / "lgg" / "kaggle_3m")
    assert _folders(root) == _folders(lgg) != _folders(str(tmp_path))
    for name, data_dir in (("a", lgg), ("b", root)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.json").write_text(json.dumps({"data_dir": data_dir, "train": ["p_1"]}))
    with pytest.raises(ValueError, match="b/best.pth trained on 1 of its 1"):
        _refuse_trained_on([SimpleNamespace(id="p_1")], [tmp_path / "a" / "best.pth", tmp_path / "b" / "best.pth"],
                           "val", lgg)
