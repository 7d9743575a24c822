import pytest
import torch
import torch.nn as nn

from toolkit.models.segmentation import SegAutoEncoder, build_segmentation_model
from toolkit.models.utils import count_parameters

NAMES = ["autoencoder", "unet", "unet_s2d"]


@pytest.mark.parametrize("name", [*NAMES, "smp_unet"])
@pytest.mark.parametrize("shape", [(1, 1, 240, 240), (1, 1, 250, 250), (2, 1, 100, 100), (1, 1, 37, 61)])
def test_output_shape_matches_input(name, shape):
    torch.manual_seed(0)
    model = build_segmentation_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == shape
    assert out.dtype == torch.float32


@pytest.mark.parametrize("name", [*NAMES, "smp_unet"])
def test_parameter_budget(name):
    model = build_segmentation_model(name)
    n = count_parameters(model)
    assert 0 < n <= 500_000
    assert count_parameters(model, trainable_only=False) == n


def test_default_parameter_counts():
    assert count_parameters(build_segmentation_model("unet")) == 486_409
    assert count_parameters(build_segmentation_model("autoencoder")) == 437_449
    assert count_parameters(build_segmentation_model("unet_s2d")) == 482_932
    assert count_parameters(build_segmentation_model("smp_unet")) == 390_473  # smp baseline, same budget


def test_count_parameters_trainable_only():
    model = build_segmentation_model("unet")
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.encoder.parameters())
    assert count_parameters(model) == count_parameters(model, trainable_only=False) - frozen


def test_skip_variant_differs():
    plain = build_segmentation_model("autoencoder")
    unet = build_segmentation_model("unet")
    assert not plain.skip and unet.skip
    assert count_parameters(unet) > count_parameters(plain)
    # decoder convs read the concatenation (2w channels) in the U-Net only
    for w, p_stage, u_stage in zip(reversed(unet.widths[:-1]), plain.decoder, unet.decoder):
        assert p_stage[0].in_channels == w
        assert u_stage[0].in_channels == 2 * w
    # symmetric: one decoder stage per encoder stage, mirrored widths
    assert len(unet.encoder) == len(unet.decoder) == unet.depth
    enc = [s[0].out_channels for s in unet.encoder]
    dec = [s[0].out_channels for s in unet.decoder]
    assert dec == enc[::-1]


def test_skip_actually_used():
    # the last decoder stage really receives the concatenation [upsampled, skip]
    torch.manual_seed(0)
    unet = SegAutoEncoder(widths=(4, 8, 16), skip=True).eval()
    x = torch.randn(1, 1, 16, 16)
    captured = {}

    def hook(module, inputs, output):
        captured["in_ch"] = inputs[0].shape[1]

    unet.decoder[-1].register_forward_hook(hook)
    with torch.no_grad():
        unet(x)
    assert captured["in_ch"] == 2 * 4


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_channels_last(name):
    torch.manual_seed(0)
    model = build_segmentation_model(name).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 64, 72).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == x.shape
    assert out.dtype == torch.bfloat16  # inside autocast; Accelerate casts back to fp32
    loss = out.float().sigmoid().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = build_segmentation_model("unet").eval()
    x = torch.randn(1, 1, 50, 50)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_multichannel_in_out():
    model = SegAutoEncoder(in_channels=4, out_channels=3, skip=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 4, 48, 40))
    assert out.shape == (1, 3, 48, 40)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 1, 48, 40))


def test_unknown_name():
    with pytest.raises(ValueError, match="autoencoder.*unet"):
        build_segmentation_model("resnet")


@pytest.mark.parametrize(
    "kwargs, name",
    [({"widths": (8,)}, "widths"), ({"widths": (8, 0)}, "widths"), ({"in_channels": 0}, "in_channels"),
     ({"skip": "yes"}, "skip"), ({"space_to_depth": 0}, "space_to_depth"), ({"space_to_depth": 1.5}, "space_to_depth")],
)
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SegAutoEncoder(**kwargs)


def test_logits_no_sigmoid():
    model = build_segmentation_model("unet").eval()
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    assert isinstance(model.head, nn.Conv2d) and model.head.kernel_size == (1, 1)


def test_space_to_depth_is_a_lossless_stem():
    """unet_s2d: the first stage reads the 2x2 pixel-unshuffled scan (4x the channels at half the side), and
    the head's 4 logit channels per output go back to full resolution by the pixel shuffle: each output
    pixel depends on its own input pixel, not only on its 2x2 block's average."""
    model = build_segmentation_model("unet_s2d").eval()
    assert model.space_to_depth == 2 and model.widths == (16, 32, 64, 128) and model.skip
    assert model.encoder[0][0].in_channels == 4 and model.head.out_channels == 4
    captured = {}

    def hook(module, inputs, output):
        captured["side"] = inputs[0].shape[-2:]

    model.encoder[0].register_forward_hook(hook)
    x = torch.randn(1, 1, 240, 240)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and tuple(captured["side"]) == (120, 120)
    # moving one pixel inside its 2x2 block changes the output: the stem keeps every pixel
    y = x.clone()
    y[0, 0, 100, 100], y[0, 0, 100, 101] = x[0, 0, 100, 101], x[0, 0, 100, 100]
    with torch.no_grad():
        assert not torch.allclose(model(y), out)
    # more channels in and out, odd sides: padded to a multiple of 2 * 2**depth and cropped back
    multi = SegAutoEncoder(in_channels=3, out_channels=2, widths=(8, 16, 32), skip=True, space_to_depth=2).eval()
    with torch.no_grad():
        assert multi(torch.randn(2, 3, 37, 61)).shape == (2, 2, 37, 61)
    assert "space_to_depth=2" in repr(multi)


@pytest.mark.parametrize("name, sizes", [("unet_s2d", [96, 24, 12]), ("unet", [96, 48, 24, 12])])
def test_deep_supervision_outputs_in_training_only(name, sizes):
    """Training mode: the full-size logits, then one per coarser decoder stage (finest first); eval mode: the
    one tensor, equal to that of the same weights without the auxiliary heads (they cost nothing there)."""
    torch.manual_seed(0)
    model = build_segmentation_model(name, out_channels=2, deep_supervision=True)
    plain = build_segmentation_model(name, out_channels=2)
    extra = sum(h.weight.numel() + h.bias.numel() for h in model.aux_heads)
    assert count_parameters(model) == count_parameters(plain) + extra
    assert extra == sum(w * 2 + 2 for w in model.widths[1:-1])  # unet_s2d defaults: 32 and 64 channels in
    outs = model.train()(torch.randn(2, 1, 96, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 2, s, s) for s in sizes]
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")})
    x = torch.randn(1, 1, 80, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x))
    (sum(o.float().mean() for o in model.train()(torch.randn(2, 1, 96, 96)))).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.aux_heads)


def test_deep_supervision_refuses_padded_training_sides_and_smp():
    model = build_segmentation_model("unet_s2d", deep_supervision=True).train()
    with pytest.raises(ValueError, match="multiples of 16, got \\(40, 40\\)"):
        model(torch.randn(1, 1, 40, 40))
    with pytest.raises(ValueError, match="not to smp_unet"):
        build_segmentation_model("smp_unet", deep_supervision=True)
    with pytest.raises(ValueError, match="deep_supervision"):
        SegAutoEncoder(deep_supervision=1)


def test_init_from_across_deep_supervision(tmp_path):
    """Weights without auxiliary heads start a deeply supervised model (heads fresh), and the other way round;
    any other difference is still refused."""
    from toolkit.models.utils import init_from

    plain, ds = build_segmentation_model("unet_s2d"), build_segmentation_model("unet_s2d", deep_supervision=True)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    torch.save(ds.state_dict(), tmp_path / "ds.pth")
    fresh = build_segmentation_model("unet_s2d", deep_supervision=True)
    heads = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("aux_heads.")}
    init_from(fresh, tmp_path / "plain.pth")
    state = fresh.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in heads.items())
    back = init_from(build_segmentation_model("unet_s2d"), tmp_path / "ds.pth")
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ds.state_dict().items() if k in back.state_dict())
    with pytest.raises(ValueError, match="another model"):
        init_from(build_segmentation_model("unet_s2d", widths=(8, 16, 32, 64), deep_supervision=True),
                  tmp_path / "plain.pth")


@pytest.mark.parametrize("name, widths", [("unet", None), ("unet_s2d", None), ("autoencoder", (8, 16, 32)),
                                          ("unet_s2d", (8, 16, 32, 64, 128)), ("smp_unet", None)])
def test_size_multiple_without_building_the_model(name, widths):
    from toolkit.models.segmentation import size_multiple

    assert size_multiple(name, widths) == build_segmentation_model(name, widths=widths).size_multiple
