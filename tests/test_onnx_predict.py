"""``toolkit predict --weights model.onnx``: the same masks as ``--weights best.pth`` from the exported file's
metadata alone, without torch, and clear refusals of files it cannot use."""

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch

from tests.test_export import _fake_mri, _segmentation_run
from tests.utils import ROOT
from toolkit.checkpoint import save_json
from toolkit.cli import main
from toolkit.data.mri.io import read_image
from toolkit.inference import load_ensemble, pick_postprocess, predict_probs
from toolkit.onnx_predict import OnnxSegmenter
from toolkit.seg_images import class_labels, read_input, tumour_map, write_class_map
from toolkit.postprocess import POSTPROCESS_FILE, PostProcess
from toolkit.targets import TargetSpec

PROB_TOLERANCE = 1e-4  # max abs difference of the (H, W) probability maps, ONNX vs PyTorch
MASK_TOLERANCE = 1e-3  # at most this fraction of mask pixels may differ, and only where p is within PROB_TOLERANCE of t
SIZES = [(32, 32, 1), (48, 40, 1), (20, 28, 3)]  # (H, W, C) of the test images: same, larger, smaller, RGB


def _images(folder):
    """Fake MRI scans as PNG files of several sizes (grey and RGB) in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w, c) in enumerate(SIZES):
        scan = _fake_mri(1, c, max(h, w), seed=10 + i)[0].numpy().transpose(1, 2, 0)[:h, :w]
        path = folder / f"scan{i}.png"
        cv2.imwrite(str(path), scan[..., 0] if c == 1 else cv2.cvtColor(np.ascontiguousarray(scan), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


EXPORTS = [("per_slice", {"min_size": 4}), ("zscore", {"flips": True})]  # (intensity, stored post-processing)


@pytest.fixture(scope="module", params=EXPORTS, ids=["per_slice+min_size", "zscore+flips"])
def exported(request, tmp_path_factory):
    """A binary 1-channel run whose stored threshold is the median PyTorch probability (half the pixels on
    each side, so the masks are not trivially empty or full), exported to ONNX; (run, onnx path, images)."""
    intensity, post_parts = request.param
    root = tmp_path_factory.mktemp(intensity)
    run, _ = _segmentation_run(root, intensity=intensity, spec=TargetSpec.binary(), channels="", in_channels=1)
    images = _images(root / "images")
    ensemble, _, _, _ = load_ensemble([run / "best.pth"])
    probs = np.concatenate([predict_probs(ensemble, read_image(p), 32)[0].ravel() for p in images])
    post = PostProcess(threshold=round(float(np.median(probs)), 4), **post_parts)
    save_json(run / POSTPROCESS_FILE, {"choice": post.to_dict()})
    out = root / "model.onnx"
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output", str(out),
                 "--no-check"]) == 0
    return run, out, images, post


def test_onnx_predict_matches_the_pytorch_predict(exported, tmp_path, capsys):
    run, onnx_file, images, post = exported
    assert main(["predict", "--weights", str(run / "best.pth"), "--input", str(images[0].parent),
                 "--output", str(tmp_path / "pth")]) == 0
    assert main(["predict", "--weights", str(onnx_file), "--input", str(images[0].parent),
                 "--output", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert post.describe() in printed and "onnxruntime" in printed

    model, (ensemble, _, _, _) = OnnxSegmenter(onnx_file), load_ensemble([run / "best.pth"])
    differing = total = 0
    worst = 0.0
    for path, (h, w, _) in zip(images, SIZES):
        a = cv2.imread(str(tmp_path / "pth" / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "onnx" / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        assert a.shape == b.shape == (h, w) and set(np.unique(b)) <= {0, 255}
        assert cv2.imread(str(tmp_path / "onnx" / f"{path.stem}_overlay.png")).shape == (h, w, 3)
        image = read_image(path)  # grey, as both predicts read it for a 1-channel model
        p_torch = predict_probs(ensemble, image, 32, flips=post.flips)[0]
        p_onnx = model.tumour_probs(image, flips=post.flips)
        worst = max(worst, float(np.abs(p_torch - p_onnx).max()))
        assert worst < PROB_TOLERANCE
        off = a != b
        assert (np.abs(p_torch[off] - post.threshold) < PROB_TOLERANCE).all()  # only at the threshold
        differing, total = differing + int(off.sum()), total + a.size
    print(f"{model.meta['intensity']}, {post.describe()}: max abs probability difference {worst:.3g}; "
          f"{differing} of {total} mask pixels differ")
    assert differing <= MASK_TOLERANCE * total, f"{differing} of {total} mask pixels differ"
    all_masks = np.concatenate([cv2.imread(str(p), 0).ravel() for p in (tmp_path / "onnx").glob("*_mask.png")])
    assert 0 < (all_masks > 0).mean() < 1  # neither empty nor full: the threshold is really compared


@pytest.mark.parametrize("exported", EXPORTS[:1], indirect=True, ids=["per_slice+min_size"])
def test_onnx_predict_keeps_the_subfolders_of_the_input(exported, tmp_path):
    _, onnx_file, images, _ = exported
    for patient, image in (("p1", images[0]), ("p2", images[1])):  # one name in two patient folders
        (tmp_path / "in" / patient).mkdir(parents=True)
        (tmp_path / "in" / patient / "slice_1.png").write_bytes(image.read_bytes())
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(onnx_file), "--input", str(tmp_path / "in"), "--output", str(out)]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "p1/slice_1_mask.png", "p1/slice_1_overlay.png", "p2/slice_1_mask.png", "p2/slice_1_overlay.png"]
    shapes = [cv2.imread(str(out / p / "slice_1_mask.png"), cv2.IMREAD_UNCHANGED).shape for p in ("p1", "p2")]
    assert shapes == [cv2.imread(str(f), cv2.IMREAD_UNCHANGED).shape[:2] for f in images[:2]]  # each its own scan


@pytest.mark.parametrize("exported", EXPORTS[:1], indirect=True, ids=["per_slice+min_size"])
def test_onnx_predict_runs_with_torch_blocked(exported, tmp_path):
    _, onnx_file, images, _ = exported
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "from toolkit.cli import main\n"
            f"rc = main(['predict', '--weights', {str(onnx_file)!r}, '--input', {str(images[1])!r}, "
            f"'--output', {str(tmp_path)!r}])\n"
            "assert sys.modules['torch'] is None\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert cv2.imread(str(tmp_path / "scan1_mask.png"), 0).shape == SIZES[1][:2]


@pytest.mark.parametrize("exported", EXPORTS[:1], indirect=True, ids=["per_slice+min_size"])
def test_onnx_postprocess_comes_from_the_metadata_with_command_line_overrides(exported):
    _, onnx_file, _, post = exported
    model = OnnxSegmenter(onnx_file)
    assert model.postprocess()[0] == post  # the run's postprocess.json, carried by the export
    run_cfg = {"threshold": 0.5}  # the config of _segmentation_run
    assert model.postprocess("none")[0] == pick_postprocess(None, run_cfg, "none")[0] == PostProcess(threshold=0.5)
    assert model.postprocess(threshold=0.7)[0] == PostProcess(**{**post.to_dict(), "threshold": 0.7})
    assert (model.size, model.in_channels, model.channels) == (32, 1, ())


def test_onnx_predict_runs_the_stored_scale_tta_as_the_pytorch_predict(tmp_path, capsys):
    """A 64-px run whose postprocess.json holds flips and scale TTA (48 and 80 px views): the export takes those
    sides, and the ONNX predict's probabilities and masks are the PyTorch predict's."""
    with torch.random.fork_rng():  # fixed weights, the global draw of other tests untouched
        torch.manual_seed(6)  # the scales move this draw's maps by >= 1.5e-3 (other draws: 3e-4 to 2e-3)
        run, _ = _segmentation_run(tmp_path, intensity="per_slice", spec=TargetSpec.binary(), channels="",
                                   in_channels=1, size=64)
    images = _images(tmp_path / "images")
    ensemble = load_ensemble([run / "best.pth"])[0]
    probs = np.concatenate([predict_probs(ensemble, read_image(p), 64)[0].ravel() for p in images])
    post = PostProcess(threshold=round(float(np.median(probs)), 4), flips=True, scales=(0.8, 1.25))
    save_json(run / POSTPROCESS_FILE, {"choice": post.to_dict()})
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output", str(onnx_file)]) == 0
    model = OnnxSegmenter(onnx_file)
    assert model.multiple == 4 and model.postprocess() == (post, f"{onnx_file} metadata 'postprocess'")
    for path in images:
        image = read_image(path)
        p_torch = predict_probs(ensemble, image, 64, flips=True, scales=post.scales)[0]
        p_onnx = model.tumour_probs(image, flips=True, scales=post.scales)
        assert np.abs(p_torch - p_onnx).max() < PROB_TOLERANCE
        assert np.abs(p_onnx - model.tumour_probs(image, flips=True)).max() > 1e-3  # the scales do change it
    for weights, out in ((run / "best.pth", "pth"), (onnx_file, "onnx")):
        assert main(["predict", "--weights", str(weights), "--input", str(images[0].parent),
                     "--output", str(tmp_path / out)]) == 0
    assert "without its scale TTA" not in capsys.readouterr().out
    for path in images:
        a, b = (cv2.imread(str(tmp_path / out / f"{path.stem}_mask.png"), 0) for out in ("pth", "onnx"))
        assert (a != b).mean() <= MASK_TOLERANCE and 0 < (b > 0).mean() < 1


@pytest.mark.parametrize("exported", EXPORTS[:1], indirect=True, ids=["per_slice+min_size"])
def test_onnx_predict_leaves_out_a_scale_tta_its_graph_cannot_take_and_says_so(exported, tmp_path, capsys):
    """An export of S x S input only (before dynamic sides) or of sides the scaled views are not multiples of
    cannot run the scale TTA of a run's postprocess.json: left out, and said."""
    _, onnx_file, images, post = exported
    scaled = {**post.to_dict(), "scales": [0.8, 1.25]}
    kept = OnnxSegmenter(_edited(onnx_file, tmp_path / "dyn.onnx", lambda p: {**p, "postprocess": json.dumps(scaled)}))
    assert kept.postprocess()[0].scales == (0.8, 1.25)  # 32 px: views of 32 px, multiples of the graph's 4
    odd = _edited(onnx_file, tmp_path / "odd.onnx", lambda p: {**p, "postprocess": json.dumps(scaled),
                                                               "dynamic_size_multiple": "64"})
    chosen, source = OnnxSegmenter(odd).postprocess()
    assert chosen == post and "(the ONNX graph takes sides that are multiples of 64, not [32, 32])" in source
    edited = _edited(onnx_file, tmp_path / "scaled.onnx", lambda p: {
        **{k: v for k, v in p.items() if k != "dynamic_size_multiple"}, "postprocess": json.dumps(scaled)})
    chosen, source = OnnxSegmenter(edited).postprocess()
    assert chosen == post and "without its scale TTA (the ONNX graph takes 32x32 input only" in source
    assert main(["predict", "--weights", str(edited), "--input", str(images[0]), "--output", str(tmp_path / "o")]) == 0
    assert "without its scale TTA" in capsys.readouterr().out
    assert main(["predict", "--weights", str(onnx_file), "--input", str(images[0]), "--output", str(tmp_path / "p"),
                 "--scale-tta"]) == 2
    assert "--scale-tta are not applied with an ONNX file" in capsys.readouterr().err


def _edited(onnx_file, path, change):
    """A copy of ``onnx_file`` at ``path`` whose metadata_props {key: JSON text} went through ``change``."""
    proto = onnx.load(str(onnx_file))
    props = change({p.key: p.value for p in proto.metadata_props})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("exported", EXPORTS[:1], indirect=True, ids=["per_slice+min_size"])
def test_onnx_predict_refuses_files_it_cannot_use(exported, tmp_path, capsys, monkeypatch):
    _, onnx_file, images, _ = exported
    args = ["--input", str(images[0]), "--output", str(tmp_path / "out")]

    bare = _edited(onnx_file, tmp_path / "bare.onnx", lambda p: {})
    assert main(["predict", "--weights", str(bare), *args]) == 2
    assert f"{bare} holds no toolkit metadata (metadata_props key 'kind' missing)" in capsys.readouterr().err

    partial = _edited(onnx_file, tmp_path / "partial.onnx", lambda p: {k: v for k, v in p.items() if k != "intensity"})
    assert main(["predict", "--weights", str(partial), *args]) == 2
    assert f"{partial} lacks the toolkit metadata key(s) 'intensity'" in capsys.readouterr().err

    clf = _edited(onnx_file, tmp_path / "clf.onnx", lambda p: {**p, "kind": '"classifier"', "recipe": '"cifar10"'})
    assert main(["predict", "--weights", str(clf), *args]) == 2
    err = capsys.readouterr().err
    assert f"{clf} is a classifier export (recipe 'cifar10')" in err and "segmentation models only" in err

    assert main(["predict", "--weights", str(onnx_file), "--input", str(tmp_path / "x.nii.gz"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "reads 2D images" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if onnxruntime were not installed
    assert main(["predict", "--weights", str(onnx_file), *args]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written by any refused call


def test_tumour_map_of_each_target_kind():
    p = np.array([[[0.7, 0.1]], [[0.2, 0.6]], [[0.1, 0.3]]], dtype=np.float32)  # (K=3, H=1, W=2)
    assert np.allclose(tumour_map(p[:1], "binary"), [[0.7, 0.1]])
    assert np.allclose(tumour_map(p, "regions"), [[0.7, 0.6]])  # any region: the largest
    assert np.allclose(tumour_map(p, "classes"), [[0.3, 0.9]])  # any foreground class: 1 - background
    assert tumour_map(np.stack([p, p]), "classes").shape == (2, 1, 2)  # leading dims kept
    with pytest.raises(ValueError, match="binary, regions or classes, got 'labels'"):
        tumour_map(p, "labels")


def test_classes_run_masks_tumour_not_background_in_both_predicts(tmp_path, capsys):
    """A 3-class run (background + 2 types): both predicts threshold 1 - p(background), and agree; both write
    the same class label map."""
    spec = TargetSpec.classes({"background": 0, "glioma": 1, "meningioma": 2})
    run, _ = _segmentation_run(tmp_path, intensity="per_slice", spec=spec, channels="", in_channels=1)
    images = _images(tmp_path / "images")
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output", str(onnx_file),
                 "--no-check"]) == 0
    ensemble, _, _, _ = load_ensemble([run / "best.pth"])
    model = OnnxSegmenter(onnx_file)
    for path in images:
        image = read_image(path)
        x = ensemble.preprocess(torch.from_numpy(cv2.resize(image, (32, 32))[..., None]).permute(2, 0, 1)[None]) \
            if image.shape[:2] == (32, 32) else None
        p_torch = predict_probs(ensemble, image, 32)[0]
        assert np.abs(p_torch - model.tumour_probs(image)).max() < PROB_TOLERANCE
        if x is not None:  # at the run's own size: exactly 1 - the background channel of the model
            background = ensemble(x)[0, 0].numpy()
            assert np.allclose(p_torch, 1.0 - background, atol=1e-6)
    # both predicts also write the class label map (argmax, the data's label values) and name the slice's class
    for name, weights in (("pth", run / "best.pth"), ("onnx", onnx_file)):
        assert main(["predict", "--weights", str(weights), "--input", str(tmp_path / "images"),
                     "--output", str(tmp_path / name), "--postprocess", "none"]) == 0
        out = capsys.readouterr().out
        assert ", class " in out or ", no tumour class (nothing predicted)" in out
    for path in images:
        image = read_input(path, model.channels, 1, model.channel_names)
        a, b = (cv2.imread(str(tmp_path / n / f"{path.stem}_classes.png"), cv2.IMREAD_UNCHANGED)
                for n in ("pth", "onnx"))
        expected, _ = class_labels(predict_probs(ensemble, image, 32).channels, spec.values, spec.names)
        assert a.shape == image.shape[:2] and np.array_equal(a, expected)
        assert (a != b).mean() <= MASK_TOLERANCE


def test_class_labels_by_hand(tmp_path):
    p = np.array([[[0.6, 0.1, 0.2, 0.1]], [[0.3, 0.5, 0.1, 0.2]], [[0.1, 0.4, 0.7, 0.7]]], dtype=np.float32)
    labels, name = class_labels(p, (0, 1, 4), ("core", "enhancing"))  # (K=3, H=1, W=4), label values 0, 1, 4
    assert labels.dtype == np.uint8 and labels.tolist() == [[0, 1, 4, 4]] and name == "enhancing"
    background = np.zeros_like(p)
    background[0] = 1.0
    labels, name = class_labels(background, (0, 1, 4), ("core", "enhancing"))
    assert not labels.any() and name == ""  # no foreground pixel: no class
    spec = {"kind": "classes", "values": [0, 1, 4], "names": ["core", "enhancing"]}
    assert write_class_map(tmp_path / "a.png", p, spec) == ", class enhancing (label map a.png)"
    assert write_class_map(tmp_path / "b.png", background, spec).startswith(", no tumour class (nothing predicted)")
    assert (tmp_path / "b.png").is_file() and write_class_map(tmp_path / "c.png", p, {"kind": "binary"}) == ""


def test_onnx_reads_the_channel_the_run_trained_on(tmp_path):
    """An LGG run (split.json source "lgg") with the default channel reads FLAIR, the green channel of
    an LGG .tif, not the grey of a folder run: in the PyTorch predict and, from the export's ``layout``,
    in the ONNX predict; exports without ``layout`` (older ones) keep the first file layout that fits."""
    with torch.random.fork_rng():  # fixed weights (an unseeded draw could leave the two channels' maps too close)
        torch.manual_seed(4)  # the maps of grey and FLAIR differ by 5.3e-3 here (seeds 0-5: 1.2e-3 to 5.3e-3)
        run, _ = _segmentation_run(tmp_path, intensity="per_slice", spec=TargetSpec.binary(), channels="",
                                   in_channels=1)
    save_json(run / "split.json", {"source": "lgg", "train": [], "val": []})
    rgb = _fake_mri(1, 3, 32, seed=3)[0].numpy().transpose(1, 2, 0).copy()
    rgb[..., 0] = np.rot90(rgb[..., 1])  # grey is not an affine map of flair: standardised, they differ
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "scan.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", "--weights", str(run / "best.pth"), "--format", "onnx", "--output", str(onnx_file),
                 "--no-check"]) == 0
    model = OnnxSegmenter(onnx_file)
    assert model.meta["layout"] == "lgg" and model.channels == (1,) and model.channel_names == "flair of lgg data"

    ensemble, _, _, _ = load_ensemble([run / "best.pth"])
    p_torch = predict_probs(ensemble, rgb[..., 1:2], 32)[0]  # what the PyTorch predict feeds: FLAIR alone
    p_grey = predict_probs(ensemble, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 32)[0]
    assert np.abs(p_torch - p_grey).max() > 10 * PROB_TOLERANCE  # the test can tell the two channels apart
    image = read_input(tmp_path / "in" / "scan.png", model.channels, 1, model.channel_names)
    assert np.abs(model.tumour_probs(image) - p_torch).max() < PROB_TOLERANCE
    for name in ("pth", "onnx"):
        weights = run / "best.pth" if name == "pth" else onnx_file
        assert main(["predict", "--weights", str(weights), "--input", str(tmp_path / "in"),
                     "--output", str(tmp_path / name), "--postprocess", "none"]) == 0
    a, b = (cv2.imread(str(tmp_path / n / "scan_mask.png"), 0) for n in ("pth", "onnx"))
    assert (a != b).mean() <= MASK_TOLERANCE

    old = _edited(onnx_file, tmp_path / "old.onnx", lambda props: {k: v for k, v in props.items()
                                                                  if k not in ("layout", "run_threshold")})
    old = OnnxSegmenter(old)  # an export from before ``layout`` and ``run_threshold`` were stored
    assert old.channels == () and old.postprocess("none")[0].threshold == model.meta["threshold"]  # as before


def test_both_predicts_resize_a_scan_as_the_run_s_slices_were_resized(tmp_path):
    """A scan wider than the model but not taller (20 x 48 for 32 px) reaches the model with the pixels the
    dataset gives it in training and evaluate (area resize when either side shrinks; predict took bilinear)."""
    from toolkit.data.mri.dataset import MRISegmentationDataset
    from toolkit.ensemble import SegmentationEnsemble

    scan = np.random.default_rng(0).integers(0, 256, (20, 48), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "1.png"), scan)
    cv2.imwrite(str(tmp_path / "1_mask.png"), np.zeros_like(scan))
    trained = MRISegmentationDataset([("1", tmp_path / "1.png", tmp_path / "1_mask.png")], size=32)[0][0]

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 1, *x.shape[2:])

    image = read_image(tmp_path / "1.png")
    predict_probs(SegmentationEnsemble([Probe()], preprocess=lambda x: x.float()), image, 32)
    assert torch.equal(seen[0][0], trained.float())

    onnx_seen = []
    model = object.__new__(OnnxSegmenter)  # the ONNX path's resize, without an ONNX file
    model.size, model.target, model.meta = 32, {"kind": "binary"}, {}
    model.preprocess = lambda images: onnx_seen.append(images) or images.transpose(0, 3, 1, 2).astype(np.float32)
    model.probs = lambda x, flips=False, scales=(): np.zeros((len(x), 1, 32, 32), np.float32)
    model.scan_probs(image)
    assert np.array_equal(onnx_seen[0][0].transpose(2, 0, 1), trained.numpy())


@pytest.mark.parametrize("flip_trained", [False, True])
@pytest.mark.parametrize("shape, size", [((128, 128), 60), ((96, 150), 64), ((50, 40), 64)])
def test_both_predicts_put_a_perfect_model_s_mask_back_where_the_scan_has_it(tmp_path, shape, size, flip_trained):
    """A model that predicts exactly what it was trained on gets the scan's own mask back at the scan's size. Its
    masks were nearest-resized (each pixel the source pixel floor(m * scale), about half a model pixel up-left of
    the image's pixel m); trained with left-right flips it saw that offset both ways in the columns and learnt the
    mean of both masks there. A centre-aligned resize put the masks half a model pixel down and right (Dice about
    0.957 on figshare-like 512 → 240 slices); moving the columns of a flip-trained model put them left."""
    from toolkit.data.mri.dataset import MRISegmentationDataset
    from toolkit.ensemble import SegmentationEnsemble

    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - 0.45 * h) ** 2 / (0.2 * h) ** 2 + (xx - 0.55 * w) ** 2 / (0.25 * w) ** 2 <= 1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "1.png"), (mask * 200 + 20).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "1_mask.png"), mask * 255)
    cv2.imwrite(str(tmp_path / "2_mask.png"), mask[:, ::-1] * 255)
    read = MRISegmentationDataset([("1", tmp_path / "1.png", tmp_path / "1_mask.png"),
                                   ("2", tmp_path / "1.png", tmp_path / "2_mask.png")], size=size)
    learnt = read[0][1].float()
    if flip_trained:  # the flipped slice's nearest-resized mask, flipped back: the other offset of the columns
        learnt = (learnt + read[1][1].float().flip(-1)) / 2
    probs = learnt[None].clamp(1e-4, 1 - 1e-4)  # (1, 1, S, S)
    logits = torch.log(probs / (1 - probs))

    class Perfect(torch.nn.Module):
        def forward(self, x):
            return logits.expand(len(x), -1, -1, -1)

    def centroid(m):
        return np.array([yy[m > 0].mean(), xx[m > 0].mean()])

    image = read_image(tmp_path / "1.png")
    torch_map = predict_probs(SegmentationEnsemble([Perfect()], preprocess=lambda x: x.float()), image, size,
                              flip_trained=flip_trained).tumour
    model = object.__new__(OnnxSegmenter)  # the ONNX path, without an ONNX file
    model.size, model.target, model.meta = size, {"kind": "binary"}, {"flip_trained": flip_trained}
    model.preprocess = lambda images: images.transpose(0, 3, 1, 2).astype(np.float32)
    model.probs = lambda x, flips=False, scales=(): probs.numpy().repeat(len(x), 0)
    onnx_map = model.scan_probs(image)[0]
    for found in (torch_map, onnx_map):
        found = (found >= 0.5).astype(np.uint8)
        assert found.shape == mask.shape
        assert 2 * (found & mask).sum() / (found.sum() + mask.sum()) > 0.95
        assert np.abs(centroid(found) - centroid(mask)).max() < 0.4  # scan pixels (a centre-aligned resize: 1.2 here)


def test_mask_roundtrip_tool_scores_both_ways(tmp_path, capsys):
    """tools/mask_roundtrip.py (the figures of docs/brain-mri.md#evaluate-and-predict) on three ellipse masks."""
    import importlib.util

    from .utils import ROOT

    spec = importlib.util.spec_from_file_location("mask_roundtrip", ROOT / "tools" / "mask_roundtrip.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    yy, xx = np.mgrid[:128, :128]
    files = []
    for k, (cy, cx) in enumerate([(40, 50), (64, 70), (90, 60)]):
        mask = ((yy - cy) ** 2 / 20 ** 2 + (xx - cx) ** 2 / 14 ** 2 <= 1).astype(np.uint8) * 255
        cv2.imwrite(str(tmp_path / f"{k}_mask.png"), mask)
        files.append(str(tmp_path / f"{k}_mask.png"))
    cv2.imwrite(str(tmp_path / "empty_mask.png"), np.zeros((128, 128), np.uint8))
    means = tool.main([*files, str(tmp_path / "empty_mask.png"), "--size", "60"])
    assert "3 masks with tumour, 60 px" in capsys.readouterr().out
    assert means["resize_back"] > 0.97 and means["resize_back"] > means["centre-aligned"] + 0.02
