import pytest
import torch
import torch.nn.functional as F

from toolkit.losses import DiceBCELoss, SoftDiceLoss


def _probs_to_logits(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-6, 1 - 1e-6))


def test_hand_computed_2x2():
    # p = [[0.9, 0.2], [0.6, 0.0]], t = [[1, 0], [1, 0]]
    p = torch.tensor([[0.9, 0.2], [0.6, 0.0]]).view(1, 1, 2, 2)
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    eps = 1e-6
    inter = 0.9 + 0.6  # 1.5
    denom = (0.81 + 0.04 + 0.36) + 2.0  # 3.21
    expected = 1 - (2 * inter + eps) / (denom + eps)
    loss = SoftDiceLoss(eps=eps, from_logits=False)(p, t)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_perfect_and_disjoint():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, 2:5, 2:5] = 1
    loss = SoftDiceLoss(from_logits=False)
    assert loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(1 - t, t).item() == pytest.approx(1.0, abs=1e-6)


def test_empty_target():
    t = torch.zeros(1, 1, 4, 4)
    loss = SoftDiceLoss(eps=1e-6, from_logits=False)
    # empty target and empty prediction: eps / eps -> loss 0
    assert loss(torch.zeros_like(t), t).item() == pytest.approx(0.0, abs=1e-6)
    # empty target, nonzero prediction: 1 - eps / (sum p^2 + eps) -> ~1
    p = torch.zeros_like(t)
    p[0, 0, 0, 0] = 0.5
    assert loss(p, t).item() == pytest.approx(1 - 1e-6 / (0.25 + 1e-6), abs=1e-7)


def test_from_logits_matches_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5, 5)
    t = (torch.rand(3, 2, 5, 5) > 0.5).float()
    a = SoftDiceLoss(from_logits=True)(logits, t)
    b = SoftDiceLoss(from_logits=False)(torch.sigmoid(logits), t)
    torch.testing.assert_close(a, b)


def test_batch_vs_per_sample():
    # sample 0: perfect, sample 1: empty target with a full prediction
    p = torch.zeros(2, 1, 2, 2)
    t = torch.zeros(2, 1, 2, 2)
    p[0] = 1
    t[0] = 1
    p[1] = 1
    per_sample = SoftDiceLoss(from_logits=False, batch=False)(p, t)
    pooled = SoftDiceLoss(from_logits=False, batch=True)(p, t)
    assert per_sample.item() == pytest.approx(0.5, abs=1e-6)  # mean of 0 and ~1
    # pooled: inter 4, sum p^2 8, sum t^2 4 -> 1 - 8/12
    assert pooled.item() == pytest.approx(1 - 8 / 12, abs=1e-6)


@pytest.mark.parametrize("batch", [False, True])
def test_against_monai(batch):
    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(1)
    logits = torch.randn(4, 3, 16, 16)
    t = (torch.rand(4, 3, 16, 16) > 0.7).float()
    t[1] = 0  # one sample with empty targets in every channel
    eps = 1e-6
    ref = monai_losses.DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=eps, smooth_dr=eps, batch=batch)
    ours = SoftDiceLoss(eps=eps, from_logits=True, batch=batch)
    torch.testing.assert_close(ours(logits, t), ref(logits, t), rtol=1e-5, atol=1e-6)


def test_3d_input_and_uint8_target():
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 4, 6, 6)
    t = torch.rand(2, 1, 4, 6, 6) > 0.5
    a = SoftDiceLoss()(logits, t.to(torch.uint8))
    b = SoftDiceLoss()(logits, t.float())
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input_gives_float32(dtype):
    torch.manual_seed(3)
    logits = torch.randn(2, 1, 32, 32)
    t = (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss = SoftDiceLoss()
    low = loss(logits.to(dtype), t.to(dtype))
    assert low.dtype == torch.float32
    ref = loss(logits.to(dtype).float(), t)
    torch.testing.assert_close(low, ref)
    assert abs(low.item() - loss(logits, t).item()) < 1e-2


def test_gradient_flows():
    torch.manual_seed(4)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    SoftDiceLoss()(logits, t).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_gradient_flows_bf16():
    logits = torch.randn(2, 1, 8, 8).to(torch.bfloat16).requires_grad_()
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    DiceBCELoss()(logits, t).backward()
    assert logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"eps": 0}, "eps"),
        ({"eps": -1e-6}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"from_logits": "yes"}, "from_logits"),
        ({"batch": 1}, "batch"),
    ],
)
def test_soft_dice_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SoftDiceLoss(**kwargs)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 1, 4, 5\)"):
        SoftDiceLoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 4, 4\)"):
        DiceBCELoss()(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))


def test_dice_bce_is_weighted_sum():
    torch.manual_seed(5)
    logits = torch.randn(3, 1, 10, 10)
    t = (torch.rand(3, 1, 10, 10) > 0.6).float()
    dice = SoftDiceLoss(eps=1e-6)(logits, t)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    torch.testing.assert_close(DiceBCELoss()(logits, t), dice + bce)
    torch.testing.assert_close(DiceBCELoss(dice_weight=0.3, bce_weight=2.0)(logits, t), 0.3 * dice + 2.0 * bce)
    torch.testing.assert_close(DiceBCELoss(dice_weight=0.0)(logits, t), bce)
    torch.testing.assert_close(DiceBCELoss(bce_weight=0.0)(logits, t), dice)
    dice_b = SoftDiceLoss(batch=True)(logits, t)
    torch.testing.assert_close(DiceBCELoss(batch=True)(logits, t), dice_b + bce)


def test_dice_bce_pos_weight():
    torch.manual_seed(6)
    logits = torch.randn(2, 1, 6, 6)
    t = (torch.rand(2, 1, 6, 6) > 0.5).float()
    loss = DiceBCELoss(dice_weight=0.0, pos_weight=3.0)
    expected = F.binary_cross_entropy_with_logits(logits, t, pos_weight=torch.tensor(3.0))
    torch.testing.assert_close(loss(logits, t), expected)
    assert "pos_weight" not in loss.state_dict()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"dice_weight": -1.0}, "dice_weight"),
        ({"bce_weight": -0.1}, "bce_weight"),
        ({"dice_weight": 0.0, "bce_weight": 0.0}, "both"),
        ({"pos_weight": 0.0}, "pos_weight"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_dice_bce_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DiceBCELoss(**kwargs)


def test_deep_supervision_against_monai():
    """Our weighted sum equals MONAI's DeepSupervisionLoss given the same (normalised) weights."""
    from toolkit.losses import DeepSupervisionLoss

    monai_losses = pytest.importorskip("monai.losses")
    torch.manual_seed(3)
    outs = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4)]
    t = (torch.rand(2, 1, 16, 16) > 0.6).float()
    ours = DeepSupervisionLoss(DiceBCELoss())(outs, t)
    ref = monai_losses.DeepSupervisionLoss(DiceBCELoss(), weights=[1 / 1.75, 0.5 / 1.75, 0.25 / 1.75])
    assert ref.interp_mode == "nearest-exact"
    torch.testing.assert_close(ours, ref(outs, t))


def test_deep_supervision_hand_computed_and_classes():
    """Block-constant targets shrink exactly; a single tensor is scored as by the wrapped loss; class maps keep
    their dtype; the weights given are normalised."""
    from toolkit.losses import DeepSupervisionLoss, DiceCELoss

    inner = SoftDiceLoss(from_logits=False)
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :2] = 1  # one 2x2 block: at 2x2 the top-left pixel only
    p_full, p_half = t.clone(), torch.zeros(1, 1, 2, 2)  # full size perfect, half size predicts nothing
    loss = DeepSupervisionLoss(inner, weights=(3.0, 1.0))
    expected = 0.75 * 0.0 + 0.25 * (1 - 1e-6 / (1 + 1e-6))
    assert loss([p_full, p_half], t).item() == pytest.approx(expected, abs=1e-6)
    assert loss(p_full, t).item() == pytest.approx(0.0, abs=1e-6)
    classes = torch.randint(0, 3, (2, 8, 8))
    logits = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    ds = DeepSupervisionLoss(DiceCELoss())(logits, classes)  # (N, H, W) int64 indices resized as such
    small = classes[:, 1::2, 1::2]  # nearest-exact at half size: each 2x2 block's lower-right pixel
    manual = (2 / 3) * DiceCELoss()(logits[0], classes) + (1 / 3) * DiceCELoss()(logits[1], small)
    torch.testing.assert_close(ds, manual)


@pytest.mark.parametrize("weights", [(), (1.0, -1.0), (0.0, 0.0), (float("nan"),)])
def test_deep_supervision_bad_weights(weights):
    from toolkit.losses import DeepSupervisionLoss

    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(SoftDiceLoss(), weights=weights)
    with pytest.raises(ValueError, match="2 weights for 3 outputs"):
        DeepSupervisionLoss(SoftDiceLoss(), weights=(1, 1))([torch.zeros(1, 1, 4, 4)] * 3, torch.zeros(1, 1, 4, 4))


def test_segmentation_objective_scores_every_output_of_a_deeply_supervised_model():
    """The objective passes the list to DeepSupervisionLoss and takes the full-size logits as preds; a plain loss
    with such a model is refused by name instead of failing inside the loss."""
    from toolkit import SegmentationObjective, build_segmentation_model, segmentation_loss

    torch.manual_seed(0)
    model = build_segmentation_model("unet_s2d", widths=(4, 8, 16), deep_supervision=True).train()
    images, masks = torch.rand(2, 1, 32, 32) * 255, (torch.rand(2, 1, 32, 32) > 0.7).to(torch.uint8)
    step = SegmentationObjective(segmentation_loss("binary", "dice_bce", deep_supervision=True))(model, (images, masks))
    assert step.loss.ndim == 0 and step.preds.shape == (2, 1, 32, 32) and 0 <= step.preds.min() <= step.preds.max() <= 1
    with pytest.raises(ValueError, match="returned 2 outputs .* wrap it in DeepSupervisionLoss"):
        SegmentationObjective(segmentation_loss("binary", "dice_bce"))(model, (images, masks))
