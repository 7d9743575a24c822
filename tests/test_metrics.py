import math

import pytest
import torch

from toolkit.metrics import Accuracy, ReconstructionMetrics, SegmentationMetrics


def _mask(h, w, boxes):
    m = torch.zeros(1, h, w)
    for r0, r1, c0, c1 in boxes:
        m[0, r0:r1, c0:c1] = 1
    return m


def test_hand_computed_single_image():
    # truth: 4 pixels, prediction: 6 pixels, 2 of them on the truth
    t = torch.zeros(1, 1, 4, 4)
    t[0, 0, 0, 0:4] = 1
    p = torch.zeros(1, 1, 4, 4)
    p[0, 0, 0, 2:4] = 0.9
    p[0, 0, 1, 0:4] = 0.7
    m = SegmentationMetrics()
    m.update(p, t)
    r = m.compute()
    tp, fp, fn = 2, 4, 2
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 4/10
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))  # 2/8
    assert r["dice_global"] == pytest.approx(0.4)
    assert r["iou_global"] == pytest.approx(0.25)
    assert r["dice_tumour"] == pytest.approx(0.4)
    assert math.isnan(r["empty_correct"])
    assert r["num_images"] == 1


def test_threshold_is_inclusive():
    t = torch.ones(1, 1, 1, 2)
    p = torch.tensor([0.5, 0.4999]).view(1, 1, 1, 2)
    m = SegmentationMetrics(threshold=0.5)
    m.update(p, t)
    s = m.per_image_scores()
    assert (s["tp"].item(), s["fp"].item(), s["fn"].item()) == (1, 0, 1)


def test_empty_masks_convention():
    m = SegmentationMetrics()
    both_empty = torch.zeros(1, 1, 4, 4)
    fp_pred = torch.zeros(1, 1, 4, 4)
    fp_pred[0, 0, 1, 1] = 1.0
    m.update(both_empty, both_empty)  # both empty -> 1
    m.update(fp_pred, torch.zeros(1, 1, 4, 4))  # empty truth + false positive -> 0
    s = m.per_image_scores()
    torch.testing.assert_close(s["dice"], torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(s["iou"], torch.tensor([1.0, 0.0], dtype=torch.float64))
    r = m.compute()
    assert r["dice"] == pytest.approx(0.5)
    assert r["iou"] == pytest.approx(0.5)
    assert r["empty_correct"] == pytest.approx(0.5)
    assert math.isnan(r["dice_tumour"])
    # pooled: tp 0, fp 1, fn 0 -> 0
    assert r["dice_global"] == pytest.approx(0.0)


def test_all_empty_global_is_one():
    m = SegmentationMetrics()
    m.update(torch.zeros(3, 1, 5, 5), torch.zeros(3, 1, 5, 5))
    r = m.compute()
    assert r["dice"] == r["iou"] == r["dice_global"] == r["iou_global"] == 1.0
    assert r["empty_correct"] == 1.0


def test_per_image_vs_global_differ():
    # image 0: large tumour, perfect; image 1: 1-pixel tumour, missed
    t = torch.stack([_mask(10, 10, [(0, 10, 0, 5)]), _mask(10, 10, [(0, 1, 0, 1)])])
    p = torch.stack([_mask(10, 10, [(0, 10, 0, 5)]), torch.zeros(1, 10, 10)])
    m = SegmentationMetrics()
    m.update(p, t)
    r = m.compute()
    assert r["dice"] == pytest.approx(0.5)  # mean of 1 and 0
    assert r["dice_global"] == pytest.approx(100 / 101)  # 2*50 / (2*50 + 0 + 1)
    assert r["iou_global"] == pytest.approx(50 / 51)
    assert r["dice_tumour"] == pytest.approx(0.5)


def test_accumulation_equals_single_update():
    torch.manual_seed(0)
    p = torch.rand(10, 1, 12, 12)
    t = (torch.rand(10, 1, 12, 12) > 0.8).float()
    t[3] = 0
    t[7] = 0
    p[7] = 0.1  # predicted empty
    one = SegmentationMetrics()
    one.update(p, t)
    many = SegmentationMetrics()
    for i in range(0, 10, 3):
        many.update(p[i : i + 3], t[i : i + 3])
    assert one.compute() == many.compute()
    for k in ("dice", "iou"):
        torch.testing.assert_close(one.per_image_scores()[k], many.per_image_scores()[k])


def test_reset():
    m = SegmentationMetrics()
    m.update(torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    m.reset()
    r = m.compute()
    assert r["num_images"] == 0
    assert math.isnan(r["dice"])


def test_input_dtypes():
    torch.manual_seed(1)
    probs = torch.rand(4, 1, 8, 8)
    t = (torch.rand(4, 1, 8, 8) > 0.5).float()
    ref = SegmentationMetrics()
    ref.update(probs, t)
    # binary masks as bool / uint8, targets as uint8 / bool / long
    for preds, tgt in [
        (probs >= 0.5, t.to(torch.uint8)),
        ((probs >= 0.5).to(torch.uint8), t.bool()),
        (probs.to(torch.float64), t.long()),
    ]:
        m = SegmentationMetrics()
        m.update(preds, tgt)
        assert m.compute() == ref.compute()
    # bf16 probabilities: thresholded in bf16, tp/fp/fn still int64
    m = SegmentationMetrics()
    m.update(probs.to(torch.bfloat16), t.to(torch.bfloat16))
    assert m.per_image_scores()["tp"].dtype == torch.int64


def test_errors():
    with pytest.raises(ValueError, match="threshold"):
        SegmentationMetrics(threshold=1.5)
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        SegmentationMetrics().update(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_against_smp():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(2)
    p = torch.rand(8, 1, 16, 16)
    t = (torch.rand(8, 1, 16, 16) > 0.7).long()
    t[2] = 0
    p[2] = 0.2  # empty truth, predicted empty: both empty
    t[5] = 0  # empty truth with false positives
    p[0, 0, 0, 0] = 0.5  # exactly at the threshold: smp uses >= too
    ours = SegmentationMetrics(threshold=0.5)
    ours.update(p, t)
    r = ours.compute()
    tp, fp, fn, tn = smp.metrics.get_stats(p, t, mode="binary", threshold=0.5)
    s = ours.per_image_scores()
    assert torch.equal(s["tp"], tp[:, 0]) and torch.equal(s["fp"], fp[:, 0]) and torch.equal(s["fn"], fn[:, 0])
    assert r["iou_global"] == pytest.approx(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro").item())
    assert r["dice_global"] == pytest.approx(smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro").item())
    # smp's default zero_division=1.0 gives a both-empty image the score 1, as we do
    assert r["iou"] == pytest.approx(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise").item())
    assert r["dice"] == pytest.approx(smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise").item())
    per_image = smp.metrics.iou_score(tp, fp, fn, tn, reduction="none")[:, 0]
    assert per_image[2].item() == 1.0 and per_image[5].item() == 0.0
    torch.testing.assert_close(s["iou"], per_image.double())


def test_accuracy():
    m = Accuracy()
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.1, 0.2, 0.3], [5.0, 0.0, 0.0]])
    m.update(logits[:2], torch.tensor([0, 2]))
    m.update(logits[2:].softmax(dim=1), torch.tensor([2, 0]))
    r = m.compute()
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["num_samples"] == 4
    m.reset()
    assert math.isnan(m.compute()["accuracy"])
    with pytest.raises(ValueError, match="targets"):
        m.update(logits, torch.tensor([0, 1]))


def test_reconstruction_metrics():
    m = ReconstructionMetrics(data_range=1.0)
    target = torch.zeros(2, 1, 2, 2)
    recon = torch.zeros(2, 1, 2, 2)
    recon[0] = 0.1  # mse_0 = 0.01 -> 20 dB
    recon[1, 0, 0, 0] = 0.2  # mse_1 = 0.04 / 4 = 0.01 -> 20 dB
    m.update(recon[:1], target[:1])
    m.update(recon[1:], target[1:])
    r = m.compute()
    assert r["mse"] == pytest.approx(0.01)
    assert r["psnr"] == pytest.approx(20.0)
    assert r["psnr_global"] == pytest.approx(20.0)
    assert r["num_images"] == 2


def test_reconstruction_psnr_mean_vs_global_and_clamp():
    m = ReconstructionMetrics(data_range=2.0)
    target = torch.zeros(2, 4)
    recon = target.clone()
    recon[1] = 0.2  # image 0 perfect (mse clamped to 1e-10), image 1 mse 0.04
    m.update(recon, target)
    r = m.compute()
    psnr0 = 10 * math.log10(4.0 / 1e-10)
    psnr1 = 10 * math.log10(4.0 / 0.04)
    assert r["mse"] == pytest.approx(0.02)
    assert r["psnr"] == pytest.approx((psnr0 + psnr1) / 2)
    assert r["psnr_global"] == pytest.approx(10 * math.log10(4.0 / 0.02))
    with pytest.raises(ValueError, match="data_range"):
        ReconstructionMetrics(data_range=0)
