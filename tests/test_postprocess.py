"""Post-processing: component rules, per-image Dice, and the automatic search on constructed cases."""

import json

import numpy as np
import pytest

from toolkit.postprocess import (
    PostProcess,
    largest_component,
    load_postprocess,
    per_image_dice,
    pooled_dice,
    remove_small_components,
    search_postprocess,
)


def _disk(size=64, r=10, cx=32, cy=32):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def test_per_image_dice_hand_cases_and_empty_rule():
    t = np.zeros((4, 4, 4), np.uint8)
    p = np.zeros_like(t)
    t[0, :2, :2] = 1; p[0, :2, :2] = 1           # perfect: 1
    t[1, :2, :2] = 1; p[1, :1, :2] = 1           # 2*2 / (4+2) = 2/3
    p[2, 0, 0] = 1                               # empty truth, predicted something: 0
    # slice 3: both empty: 1
    np.testing.assert_allclose(per_image_dice(p, t), [1.0, 2 / 3, 0.0, 1.0])


def test_pooled_dice_hand_cases():
    t = np.zeros((3, 4, 4), np.uint8)
    p = np.zeros_like(t)
    t[0, :2, :2] = 1; p[0, :2, :2] = 1           # 4 tp
    t[1, :2, :2] = 1; p[1, :1, :2] = 1           # 2 tp, 2 fn
    p[2, 0, :2] = 1                              # empty truth, 2 fp
    assert pooled_dice(p, t) == pytest.approx(2 * 6 / (8 + 8))
    assert pooled_dice(np.zeros_like(t), np.zeros_like(t)) == 1.0  # nothing anywhere: the empty rule
    assert pooled_dice(np.zeros_like(t), t) == 0.0
    with pytest.raises(ValueError, match="shape"):
        pooled_dice(p[:2], t)


def test_component_rules():
    m = np.zeros((20, 20), np.uint8)
    m[2:8, 2:8] = 1      # 36 px
    m[15:17, 15:17] = 1  # 4 px
    assert largest_component(m).sum() == 36
    assert remove_small_components(m, 5).sum() == 36
    assert remove_small_components(m, 4).sum() == 40
    assert remove_small_components(m, 0).sum() == 40


def test_binarize_shapes_and_options():
    probs = np.zeros((2, 20, 20), np.float32)
    probs[:, 2:8, 2:8] = 0.6
    probs[:, 15:17, 15:17] = 0.9
    assert PostProcess(threshold=0.5).binarize(probs).sum() == 2 * 40
    assert PostProcess(threshold=0.7).binarize(probs).sum() == 2 * 4
    assert PostProcess(largest_only=True).binarize(probs[0]).sum() == 36
    assert PostProcess(min_size=10).binarize(probs).shape == (2, 20, 20)


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.0}, {"min_size": -1},
                                 {"largest_only": True, "min_size": 5}, {"scales": (1.0,)}, {"scales": (0.2,)},
                                 {"scales": (0.8, 0.8)}, {"scales": (5,)}])
def test_postprocess_refuses_bad_options(bad):
    with pytest.raises(ValueError):
        PostProcess(**bad)


def test_search_finds_the_known_best_on_a_constructed_case():
    # every true tumour is a disk predicted with probability 0.42, plus a small confident false speck:
    # the best is a threshold <= 0.42 and a component rule that drops the speck (Dice 1 on every slice)
    n, size = 6, 64
    targets = np.stack([_disk(size, r=6 + i, cx=20 + 3 * i) for i in range(n)])
    probs = targets * 0.42
    probs[:, 55:57, 55:57] = 0.95
    choice, steps = search_postprocess(probs, targets)
    assert choice.threshold <= 0.42
    assert choice.largest_only or choice.min_size > 4
    assert steps[-1]["dice"] == pytest.approx(1.0)
    assert steps[0]["step"] == "baseline" and steps[0]["dice"] < 0.1  # at 0.5 only the specks are left
    assert [s["step"] for s in steps] == ["baseline", "threshold", "components"]
    assert all(s["gain"] >= 0 for s in steps)
    # volume data leaves the components to the 3D rules: the speck stays, the threshold is still chosen
    choice, steps = search_postprocess(probs, targets, components=False)
    assert [s["step"] for s in steps] == ["baseline", "threshold"] and choice.threshold <= 0.42
    assert not choice.largest_only and choice.min_size == 0 and steps[-1]["dice"] < 1.0


def test_pooled_search_keeps_the_tumour_that_the_per_image_search_gives_up():
    # one tumour slice (a disk at probability 0.55) and two tumour-free slices with a 4-px speck at 0.55: per image,
    # a threshold above 0.55 wins (2 empty slices right, 1 tumour missed: 2/3 against 1/3); pooled, the tumour's
    # pixels outweigh the specks (Dice 0.97 against 0), so the threshold stays at or below 0.55
    targets = np.stack([_disk(r=8), np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)])
    probs = targets * 0.55
    probs[1:, 5:7, 5:7] = 0.55
    per_image, _ = search_postprocess(probs, targets)
    assert per_image.threshold > 0.55
    pooled, steps = search_postprocess(probs, targets, pooled=True)
    assert pooled.threshold <= 0.55 and 4 < pooled.min_size <= _disk(r=8).sum()  # and the specks dropped
    assert steps[-1]["dice"] == pytest.approx(1.0) and {s["figure"] for s in steps} == {"dice_global"}


def test_search_keeps_flips_only_when_they_help():
    targets = np.stack([_disk(r=8), _disk(r=9, cx=30)])
    plain = targets * 0.45   # misses everything at 0.5
    flipped = targets * 0.9  # TTA probabilities: right at 0.5
    choice, steps = search_postprocess(plain, targets, flipped_probs=flipped)
    assert choice.flips and steps[1]["step"] == "flip TTA" and steps[1]["kept"]
    choice, _ = search_postprocess(flipped, targets, flipped_probs=plain)
    assert not choice.flips


def test_search_keeps_scale_tta_only_when_it_helps_and_with_the_flip_choice():
    targets = np.stack([_disk(r=8), _disk(r=9, cx=30)])
    low, high = targets * 0.45, targets * 0.9  # all missed / all found at 0.5
    choice, steps = search_postprocess(low, targets, flipped_probs=low, scaled_probs=high, scaled_flipped_probs=low)
    assert choice.scales == (0.8, 1.25) and not choice.flips  # the scaled probabilities without flips
    assert [s["step"] for s in steps] == ["baseline", "flip TTA", "scale TTA", "threshold", "components"]
    assert steps[2]["kept"] and steps[2]["dice"] == 1.0 and "scale x0.8, x1.25 TTA" in steps[2]["choice"]
    choice, _ = search_postprocess(low, targets, flipped_probs=high, scaled_probs=high, scaled_flipped_probs=low,
                                   scales=(0.9,))
    assert choice.flips and not choice.scales  # with flips kept, only the flipped scaled ones are judged
    choice, _ = search_postprocess(low, targets, flipped_probs=low, scaled_probs=high, scaled_flipped_probs=low,
                                   scales=(0.9,), threshold=0.4)
    assert not choice.scales and choice.threshold == 0.4  # at the run's 0.4 the plain ones are right already
    with pytest.raises(ValueError, match="scaled_probs must match"):
        search_postprocess(low, targets, scaled_probs=high[:1])


def test_scales_round_trip_through_postprocess_json(tmp_path):
    choice = PostProcess(threshold=0.4, flips=True, min_size=20, scales=(0.8, 1.25))
    path = tmp_path / "postprocess.json"
    path.write_text(json.dumps({"choice": choice.to_dict()}))
    assert load_postprocess(path)[0] == choice
    assert choice.describe() == "threshold 0.4, flip + scale x0.8, x1.25 TTA, regions under 20 px removed"
    assert PostProcess(scales=[0.9]).scales == (0.9,) and PostProcess().tta() == "no TTA"
    old = {"threshold": 0.4, "flips": True, "largest_only": False, "min_size": 0}  # written before scale TTA
    assert PostProcess.from_dict(old).scales == ()
    with pytest.raises(ValueError, match=r"scales must be a list"):
        PostProcess.from_dict({**old, "scales": 0.8}, where="f.json")
    with pytest.raises(ValueError, match=r"f.json: scales must be distinct factors"):
        PostProcess.from_dict({**old, "scales": [1]}, where="f.json")


def test_search_keeps_defaults_when_nothing_helps():
    targets = np.stack([_disk(r=8)])
    choice, steps = search_postprocess(targets.astype(np.float32), targets)
    assert choice == PostProcess()
    assert not any(s.get("kept") for s in steps)


def test_search_starts_from_the_run_s_threshold():
    """The baseline is what the run validated (its --threshold), and a threshold that gains nothing stays it."""
    targets = np.stack([_disk(r=8), _disk(r=9, cx=30)])
    probs = targets * 0.45  # right at 0.4, all missed at 0.5
    choice, steps = search_postprocess(probs, targets, threshold=0.4)
    assert steps[0]["step"] == "baseline" and "threshold 0.4" in steps[0]["choice"] and steps[0]["dice"] == 1.0
    assert choice.threshold == 0.4 and not any(s.get("kept") for s in steps)  # 0.25 .. 0.45 tie: 0.4 stays
    flipped = targets * 0.9
    choice, steps = search_postprocess(probs, targets, flipped_probs=flipped, threshold=0.4)
    assert not choice.flips and not steps[1]["kept"]  # flips judged at 0.4, where they gain nothing


def test_load_postprocess_names_the_file_and_key(tmp_path):
    good = tmp_path / "postprocess.json"
    good.write_text(json.dumps({"choice": {"threshold": 0.4, "flips": True, "largest_only": True, "min_size": 0}}))
    choice, data = load_postprocess(good)
    assert choice == PostProcess(0.4, True, True, 0) and "choice" in data
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"choice": {"thresold": 0.4}}))
    with pytest.raises(ValueError, match="bad.json.*thresold"):
        load_postprocess(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        load_postprocess(bad)
