"""`toolkit export`: ONNX (onnxruntime) and TorchScript files of every recipe's model match PyTorch
on a batch size other than the export's, carry the run's input contract as metadata, and refuse bad input."""


import numpy as np
import pytest
import torch

from toolkit.checkpoint import save_json, save_weights
from toolkit.cli import main
from toolkit.data.batch_transforms import input_preprocess, to_unit_range
from toolkit.export import export_model, read_metadata, run_exported
from toolkit.inference import load_segmentation_run
from toolkit.models import MODEL_BUILDERS, build_segmentation_model, parse_widths
from toolkit.models.registry import recipe_key
from toolkit.postprocess import POSTPROCESS_FILE, PostProcess
from toolkit.targets import BRATS_REGIONS, TARGET_FILE, TargetSpec

TOLERANCE = 1e-4


def _randomise_batchnorm(model):
    """Non-trivial BatchNorm statistics, so that the exported eval-mode arithmetic is really compared."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _compare(path, model, x, what):
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    got = run_exported(path, x.numpy())
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    print(f"{what} {path.suffix}: max abs difference {diff:.3g} on batch {x.shape[0]}")
    assert diff < TOLERANCE, diff
    return diff


def _fake_mri(n, channels, size, seed=0):
    """uint8 (n, channels, size, size): an elliptic brain with noise and a bright lesion per slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    brain = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.35 * size)) ** 2 < 1
    out = np.zeros((n, channels, size, size), np.float32)
    for i in range(n):
        cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
        lesion = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 8) ** 2
        for c in range(channels):
            out[i, c] = brain * (90 + 20 * c) + lesion * 80 + rng.normal(0, 8, (size, size)) * brain
    return torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8))


def _segmentation_run(root, intensity="zscore", threshold=0.35, spec=None, channels="flair,t1ce", in_channels=2,
                      arch="unet", size=32):
    """A run folder (config.json, target.json, postprocess.json, best.pth) of a random ``arch`` 8,16,32 at
    ``size`` x ``size``; default: BraTS regions on flair,t1ce."""
    run = root / "seg"
    spec = spec or TargetSpec.regions_of(BRATS_REGIONS)
    cfg = {"recipe": "brain_mri", "model": arch, "widths": "8,16,32", "image_size": size,
           "in_channels": in_channels, "channels": channels, "threshold": 0.5}
    model = _randomise_batchnorm(build_segmentation_model(arch, in_channels, spec.out_channels,
                                                          parse_widths("8,16,32")))
    save_json(run / "config.json", cfg)
    save_json(run / TARGET_FILE, {**spec.to_dict(), "intensity": intensity})
    save_json(run / POSTPROCESS_FILE, {"choice": PostProcess(threshold=threshold).to_dict()})
    save_weights(run / "best.pth", model.state_dict())
    return run, spec


@pytest.mark.parametrize("fmt, arch", [("onnx", "unet"), ("torchscript", "unet"), ("onnx", "unet_s2d"),
                                       ("torchscript", "unet_s2d")])
def test_segmentation_export_matches_pytorch_and_carries_the_input_contract(tmp_path, capsys, fmt, arch):
    run, spec = _segmentation_run(tmp_path, arch=arch)
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--weights", str(run / "best.pth"), "--format", fmt, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preprocessing NOT in the graph: zscore" in printed and "max abs difference" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left

    meta = read_metadata(out)
    assert meta["intensity"] == meta["preprocess"] == "zscore" and meta["preprocess_in_graph"] is False
    assert meta["image_size"] == 32 and meta["in_channels"] == 2 and meta["channels"] == "flair,t1ce"
    assert TargetSpec.from_dict(meta["target_spec"]) == spec
    assert meta["threshold"] == 0.35  # postprocess.json, not the config's 0.5
    assert meta["input_shape"] == [2, 32, 32]
    # ONNX: any multiple of the model's padding-free side (unet 8,16,32: 4; unet_s2d: 2 x 4); TorchScript: 32 x 32
    assert meta.get("dynamic_size_multiple") == ({"unet": 4, "unet_s2d": 8}[arch] if fmt == "onnx" else None)

    model, cfg = load_segmentation_run(run / "best.pth")
    x = input_preprocess(meta["intensity"])(_fake_mri(3, 2, 32))  # a fake MRI slice batch, as the run reads it
    _compare(out, model, x, f"segmentation {fmt}")
    x1 = input_preprocess("zscore")(_fake_mri(1, 2, 32, seed=1))  # batch 1 as well: the batch is dynamic
    assert run_exported(out, x1.numpy()).shape == (1, spec.out_channels, 32, 32)
    if fmt == "onnx":  # other sides, multiples of 8: the same as PyTorch
        _compare(out, model, input_preprocess("zscore")(_fake_mri(2, 2, 48, seed=2))[..., :40], f"{fmt} at 48 x 40")


def test_threshold_falls_back_to_the_config_without_postprocess_json(tmp_path):
    run, _ = _segmentation_run(tmp_path, intensity="per_slice")
    (run / POSTPROCESS_FILE).unlink()
    out, meta, diff = export_model(run, "torchscript")  # the run folder is enough
    assert out == run / "best.pt" and meta["threshold"] == 0.5 and meta["intensity"] == "per_slice"
    assert read_metadata(out)["threshold"] == 0.5 and diff < TOLERANCE


RECIPES = {  # config.json fields as the recipes write them (small widths: seconds per export)
    "cifar10": {"width": 8, "depth": 1, "dropout": 0.1},
    "mnist_cnn_denoising": {"model": "cnn", "cnn_channels": [8, 16, 15]},
    "mnist_linear_reconstruction": {"model": "linear", "cnn_channels": [16, 32, 15]},
    "stl10_supervised": {"width": 8, "dropout": 0.3},
    "stl10_pretrain": {"channels": [8, 16, 16, 24]},
    "stl10_probe": {"channels": [24, 48, 64, 96], "dropout": 0.0},  # encoder.json's widths win
    "stl10_resnet18": {"image_size": 64, "weights": "IMAGENET1K_V1"},
    "brain_mri_pretrain": {"model": "unet", "in_channels": 1, "image_size": 32, "widths": "8,16,32"},
    # "<recipe>:<variant>": the same recipe with other settings
    "cifar10:fast": {"model": "fast", "widths": "8,16,32", "width": 16, "depth": 3, "dropout": 0.1},
    "stl10_probe:cifar10": {"channels": [24, 48, 64, 96], "dropout": 0.0, "dataset": "cifar10"},
}


@pytest.mark.parametrize("recipe, fmt", [("cifar10", "onnx"), ("cifar10", "torchscript"),
                                         ("mnist_cnn_denoising", "onnx"), ("mnist_cnn_denoising", "torchscript"),
                                         ("mnist_linear_reconstruction", "onnx"), ("stl10_probe", "onnx"),
                                         ("stl10_supervised", "torchscript"), ("stl10_pretrain", "onnx"),
                                         ("stl10_resnet18", "torchscript"), ("brain_mri_pretrain", "onnx"),
                                         ("cifar10:fast", "onnx"), ("stl10_probe:cifar10", "torchscript")])
def test_classifier_and_autoencoder_exports_match_pytorch(tmp_path, recipe, fmt):
    variant, recipe = recipe, recipe.split(":")[0]
    run = tmp_path / recipe
    cfg = {"recipe": recipe, **RECIPES[variant]}
    save_json(run / "config.json", cfg)
    built = dict(cfg)
    if recipe == "stl10_probe":
        save_json(run / "encoder.json", {"encoder": "runs/pre/best.pth", "channels": [8, 16, 16, 24]})
        built["channels"] = [8, 16, 16, 24]
    entry = MODEL_BUILDERS[recipe_key(recipe)]
    model = _randomise_batchnorm(entry.build(built))
    save_weights(run / "best.pth", model.state_dict())

    out, meta, diff = export_model(run / "best.pth", fmt)
    assert out.suffix == (".onnx" if fmt == "onnx" else ".pt") and diff < TOLERANCE
    assert meta["kind"] == entry.kind and read_metadata(out)["recipe"] == recipe
    shape = tuple(meta["input_shape"])
    assert shape[1:] == ((32, 32) if variant in ("cifar10:fast", "stl10_probe:cifar10") else shape[1:])
    images = torch.randint(0, 256, (3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    x = to_unit_range(images)  # random images; the recipe's normalisation does not change the graph
    _compare(out, model, x, f"{recipe} {fmt}")


def test_export_errors_name_the_file(tmp_path, capsys):
    lone = tmp_path / "lone" / "best.pth"
    save_weights(lone, {"w": torch.zeros(1)})
    assert main(["export", "--weights", str(lone), "--format", "onnx"]) == 2
    assert f"{lone.parent / 'config.json'} not found" in capsys.readouterr().err

    save_json(lone.parent / "config.json", {"recipe": "mystery"})
    with pytest.raises(ValueError, match=r"config\.json: unknown recipe 'mystery'"):
        export_model(lone, "onnx")
    save_json(lone.parent / "config.json", {"recipe": "cifar10", **RECIPES["cifar10"]})
    with pytest.raises(ValueError, match=rf"{lone} does not match the cifar10 model"):
        export_model(lone, "torchscript")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_model(lone, "tflite")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        export_model(tmp_path / "nothing" / "best.pth", "onnx")
    assert sorted(p.name for p in lone.parent.iterdir()) == ["best.pth", "config.json"]  # nothing half-written
    entry = MODEL_BUILDERS[recipe_key("cifar10")]
    save_weights(lone, entry.build({"recipe": "cifar10", **RECIPES["cifar10"]}).state_dict())
    for name in ("config.json", "best.safetensors", "best.pth"):  # the files that rebuild the model stay
        with pytest.raises(ValueError, match=f"--output .*{name} would overwrite a file of the run"):
            export_model(lone, "torchscript", output=lone.parent / name)
    with pytest.raises(SystemExit):
        main(["export", "--weights", str(lone), "--format", "tflite"])


def test_a_torchscript_export_given_as_weights_is_named_as_such(tmp_path, capsys):
    # torch's own message advised weights_only=False, which no toolkit command lets a user set
    traced = torch.jit.trace(torch.nn.Conv2d(1, 1, 1).eval(), torch.zeros(1, 1, 4, 4))
    torch.jit.save(traced, str(tmp_path / "best.pt"))
    save_json(tmp_path / "config.json", {"recipe": "brain_mri", "model": "unet", "image_size": 32, "in_channels": 1})
    assert main(["predict", "--weights", str(tmp_path / "best.pt"), "--input", str(tmp_path),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "best.pt: it is a TorchScript export" in err and "weights_only" not in err


def test_a_2_5d_run_is_refused_naming_the_file(tmp_path, capsys):
    """A run with --context-slices takes a slice and its neighbours stacked (C = 3 here): one image cannot
    feed it, so neither format is written."""
    run, spec = _segmentation_run(tmp_path, spec=TargetSpec.binary(), channels="", in_channels=1)
    save_json(run / "config.json", {"recipe": "brain_mri", "model": "unet", "widths": "8,16,32", "image_size": 32,
                                    "in_channels": 1, "channels": "", "threshold": 0.5, "context_slices": 1})
    save_weights(run / "best.pth", build_segmentation_model("unet", 3, spec.out_channels,
                                                           parse_widths("8,16,32")).state_dict())
    for fmt in ("onnx", "torchscript"):
        assert main(["export", "--weights", str(run), "--format", fmt]) == 2
        assert f"{run / 'best.pth'}: a 2.5D run (context_slices 1)" in capsys.readouterr().err
    assert not list(run.glob("best.onnx")) and not list(run.glob("best.pt"))
