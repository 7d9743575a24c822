"""``toolkit predict --weights model.onnx``: masks and overlays from a segmentation model exported by
``toolkit export --format onnx``, with onnxruntime on the CPU and without PyTorch.

Everything the PyTorch path takes from the run folder comes from the file's ``metadata_props``
(written by :mod:`toolkit.export`, each value JSON text): ``kind`` (must be ``segmentation``),
``image_size``, ``in_channels``, ``channels`` (of the data ``layout``, when the export names it),
``intensity`` (``per_slice`` or ``zscore``), ``target_spec`` and ``threshold``, and the stored 2D
``postprocess`` (threshold, flip TTA, connected-component rule, and its scale TTA when the graph takes other
sides than S x S: ``dynamic_size_multiple``) when the export carries it, and on LGG
patient folders its 3D rule ``postprocess_volume`` per patient, as the PyTorch path. A classes
run also gets its label map (:func:`~toolkit.seg_images.write_class_map`, as the PyTorch path). This
module imports NumPy, OpenCV, onnxruntime and torch-free toolkit helpers only;
``tests/test_onnx_predict.py`` checks that it runs with torch blocked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .data.mri.channels import resolve_channels
from .data.mri.resize import resize_back, resize_square
from .data.mri.nifti import ZSCORE_CLIP
from .postprocess import PostProcess, scaled_side
from .seg_images import channel_names, input_files, output_stem, per_volume, read_input, tumour_map, write_outputs

__all__ = ["OnnxSegmenter", "REQUIRED_KEYS", "predict", "read_onnx_metadata"]

#: metadata_props keys the ONNX path needs (``postprocess`` is optional: without it, the threshold alone).
REQUIRED_KEYS = ("kind", "image_size", "in_channels", "channels", "intensity", "target_spec", "threshold")
STD_EPS = 1e-5  # toolkit.data.batch_transforms.standardize_per_image's eps
FILE_LAYOUTS = ("folder", "lgg")  # layouts whose slices are 2D image files (their channel names)


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(f"--weights {path}: predicting with an ONNX file needs onnxruntime; "
                         f"pip install onnxruntime (or pip install -e '.[export]')") from None
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own classes for unreadable files
        raise ValueError(f"{path}: onnxruntime cannot load it as an ONNX model: {err}") from None


def read_onnx_metadata(session, path: Path) -> dict[str, Any]:
    """The toolkit metadata of an onnxruntime ``session`` loaded from ``path``: {key: JSON-decoded value}.

    Raises ValueError naming the file and the key when the toolkit metadata is missing, not JSON, or the
    model is not a segmentation model (classifier, autoencoder and restoration exports are refused with
    what to use instead).
    """
    props = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, text in props.items():
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError:
            meta[key] = text  # keys not written by toolkit export may hold plain text
    if "kind" not in meta:
        raise ValueError(f"{path} holds no toolkit metadata (metadata_props key 'kind' missing): predict needs a "
                         f"file written by `toolkit export --weights <run>/best.pth --format onnx`")
    if meta["kind"] != "segmentation":
        raise ValueError(f"{path} is a {meta['kind']} export (recipe {meta.get('recipe')!r}); toolkit predict "
                         f"handles segmentation models only; run this one with onnxruntime directly (input "
                         f"{meta.get('input', '?')}, preprocessing {meta.get('preprocess', '?')}; in Python "
                         f"toolkit.export.run_exported(path, x))")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks the toolkit metadata key(s) {', '.join(map(repr, missing))}; re-export "
                         f"the run with `toolkit export --weights <run>/best.pth --format onnx`")
    if meta["intensity"] not in ("per_slice", "zscore"):
        raise ValueError(f"{path}: metadata 'intensity' must be per_slice or zscore, got {meta['intensity']!r}")
    if meta["target_spec"].get("kind") not in ("binary", "classes", "regions"):
        raise ValueError(f"{path}: metadata 'target_spec' has kind {meta['target_spec'].get('kind')!r}; "
                         f"expected binary, classes or regions")
    return meta


def _file_channels(channels: str, in_channels: int, layout: str = "") -> tuple[tuple[int, ...], str]:
    """The channels of a 2D file to read for a model trained on ``channels`` (names or "") and
    ``in_channels`` of the data ``layout`` (the export's; older exports have none: the first file layout
    that accepts the channels): indices into the file's RGB channels (() = grey) and their names."""
    layouts = (layout,) if layout in FILE_LAYOUTS else FILE_LAYOUTS
    for layout in layouts:
        try:
            picked = resolve_channels(layout, channels or in_channels)
        except (ValueError, KeyError):
            continue
        return picked, channel_names(layout, picked)
    return (), channels or f"{in_channels} channels"  # NIfTI channels (brats): read_input refuses C not 1 or 3


def bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (N, C, H, W) → float32 (N, C, height, width), bilinear with half-pixel centres and no antialiasing:
    torch's ``F.interpolate(mode="bilinear", align_corners=False)``, which the PyTorch scale TTA uses
    (:meth:`toolkit.ensemble.SegmentationEnsemble.view_probs`); values stay in the input's range."""
    if a.shape[-2:] == (height, width):
        return a
    out = np.empty((*a.shape[:2], height, width), np.float32)
    for i, x in enumerate(a):  # OpenCV resizes (H, W, C) with C <= 512
        r = cv2.resize(np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.float32), (width, height),
                       interpolation=cv2.INTER_LINEAR)
        out[i] = r.reshape(height, width, -1).transpose(2, 0, 1)
    return out


class OnnxSegmenter:
    """A segmentation model exported to ONNX, run with onnxruntime on the CPU.

    path: the ``.onnx`` file written by ``toolkit export``. Its metadata (see :func:`read_onnx_metadata`) sets
    the input size S = ``image_size``, the channels C, the uint8 → float preprocessing and the target.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.session = _session(self.path)
        self.meta = read_onnx_metadata(self.session, self.path)
        self.size, self.in_channels = int(self.meta["image_size"]), int(self.meta["in_channels"])
        self.target = self.meta["target_spec"]
        self.input_name = self.session.get_inputs()[0].name
        # sides the graph takes besides S x S: any multiples of this (0: S x S only; exports before a12fd8a, 4 Dec 2026)
        self.multiple = int(self.meta.get("dynamic_size_multiple") or 0)
        shape = self.session.get_inputs()[0].shape  # [batch (a name), C, S, S] or [batch, C, "16*height", ...]
        sides = list(shape[2:]) if len(shape) == 4 else []
        if len(shape) != 4 or shape[1] != self.in_channels or not (
                sides == [self.size, self.size] or all(isinstance(d, str) for d in sides)):  # names: dynamic sides
            raise ValueError(f"{self.path}: the graph takes input {shape} but the metadata says "
                             f"(N, {self.in_channels}, {self.size}, {self.size})")
        self.channels, self.channel_names = _file_channels(
            str(self.meta["channels"] or ""), self.in_channels, str(self.meta.get("layout") or ""))

    def postprocess(self, mode: str = "auto", threshold: float | None = None) -> tuple[PostProcess, str]:
        """The stored post-processing (``mode`` "auto"; "none": the run's own threshold alone, as the PyTorch
        predict's ``--postprocess none``), ``threshold`` overriding the threshold. Returns (PostProcess, where
        it came from). The stored scale TTA is left out where the graph cannot take its sides (S x S only, or
        sides that are not multiples of ``dynamic_size_multiple``), and ``source`` says so."""
        stored = self.meta.get("postprocess")
        if mode == "auto" and isinstance(stored, dict):
            post, source = PostProcess.from_dict(stored, where=f"{self.path} metadata 'postprocess'"), \
                f"{self.path} metadata 'postprocess'"
        else:
            key = "run_threshold" if "run_threshold" in self.meta else "threshold"  # older exports: the stored one
            post, source = PostProcess(threshold=float(self.meta[key])), f"{self.path} metadata {key!r}"
        sides = [scaled_side(self.size, s) for s in post.scales]
        if sides and not (self.multiple and all(side % self.multiple == 0 for side in sides)):
            post = PostProcess(**{**post.to_dict(), "scales": ()})  # onnxruntime refuses sides the graph lacks
            source += " without its scale TTA (" + (
                f"the ONNX graph takes sides that are multiples of {self.multiple}, not {sides}" if self.multiple else
                f"the ONNX graph takes {self.size}x{self.size} input only; a re-export takes other sides") + ")"
        if threshold is not None:
            post = PostProcess(**{**post.to_dict(), "threshold": threshold})
            source += f" with threshold={threshold} from the command line"
        return post, source

    def volume_rule(self, mode: str = "auto"):
        """The stored 3D rule (a binary :class:`~toolkit.volume_postprocess.VolumePostprocess`) that predict
        applies to each LGG patient folder's stacked masks, as the PyTorch path; None for other layouts or
        targets, ``mode`` "none", or an export without one (``postprocess_volume``)."""
        stored = self.meta.get("postprocess_volume")
        if mode != "auto" or not stored or self.meta.get("layout") != "lgg" or self.target.get("kind") != "binary":
            return None
        from .targets import TargetSpec
        from .volume_postprocess import VolumePostprocess

        return VolumePostprocess.from_dict(stored, TargetSpec.binary(), where=f"{self.path} metadata "
                                                                              "'postprocess_volume'")

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, C) → float32 (N, C, S, S) model input: per-image standardisation (``per_slice``,
        unbiased std as torch) or the z-score decoding ``x * 2 * ZSCORE_CLIP / 255 - ZSCORE_CLIP`` (``zscore``)."""
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        if self.meta["intensity"] == "zscore":
            return x * np.float32(2.0 * ZSCORE_CLIP / 255.0) - np.float32(ZSCORE_CLIP)
        x /= np.float32(255.0)
        mean = x.mean(axis=(-2, -1), keepdims=True)
        std = x.std(axis=(-2, -1), keepdims=True, ddof=1)
        return (x - mean) / (std + np.float32(STD_EPS))

    def probs(self, x: np.ndarray, flips: bool = False, scales: tuple[float, ...] = ()) -> np.ndarray:
        """float32 (N, C, S, S) model input → float32 (N, out_channels, S, S) probabilities in [0, 1]
        (softmax over channels for classes, sigmoid otherwise); ``flips`` averages with the horizontally
        flipped input's prediction; ``scales`` (factors of the side, a graph of dynamic sides only) adds the input
        predicted at each scale (sides :func:`~toolkit.postprocess.scaled_side`, each with its flip when ``flips``)
        to the average, as the PyTorch ensemble's ``member_probs``."""
        views = [self._view(x, flips, scale) for scale in (1.0, *scales)]
        return views[0] if len(views) == 1 else np.mean(views, axis=0, dtype=np.float32)

    def _view(self, x: np.ndarray, flips: bool, scale: float) -> np.ndarray:
        """:meth:`probs` of ``x`` resized by ``scale`` (bilinear), mapped back to x's sides."""
        h, w = x.shape[-2:]
        x = bilinear(x, scaled_side(h, scale), scaled_side(w, scale)) if scale != 1.0 else x
        batch = np.concatenate([x, x[..., ::-1]]) if flips else x
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        if self.target["kind"] == "classes":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        else:
            p = 1.0 / (1.0 + np.exp(-logits))
        if flips:
            p = 0.5 * (p[: len(x)] + p[len(x):][..., ::-1])
        return bilinear(p.astype(np.float32), h, w)

    def tumour_probs(self, image: np.ndarray, flips: bool = False, scales: tuple[float, ...] = ()) -> np.ndarray:
        """uint8 (H, W, C) scan → float32 (H, W) tumour probability in [0, 1] at the scan's own size.

        The scan is resized to S x S as the run's slices were (:func:`~toolkit.data.mri.resize.resize_square`), the map
        resized back bilinearly. Tumour: binary the one channel; regions any region (the largest probability);
        classes any foreground class (1 - background probability). ``flips``, ``scales``: TTA as :meth:`probs`.
        """
        return self.scan_probs(image, flips, scales)[0]

    def scan_probs(self, image: np.ndarray, flips: bool = False,
                   scales: tuple[float, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, C) scan → (float32 (H, W) tumour probability as :meth:`tumour_probs`, float32 (K, H, W)
        probability per output channel), both in [0, 1] at the scan's own size."""
        h, w = image.shape[:2]
        resized = resize_square(image, self.size)  # as the run's slices were: area when either side shrinks
        resized = resized[..., None] if resized.ndim == 2 else resized
        p = self.probs(self.preprocess(resized[None]), flips=flips, scales=scales)[0]
        kind = self.target["kind"]
        back = {"width": w, "height": h, "flip_trained": bool(self.meta.get("flip_trained", True))}  # older: augment 1
        tumour = resize_back(tumour_map(p, kind)[None], **back)[0]
        return tumour, (tumour[None] if kind == "binary" else resize_back(p, **back))  # binary: one channel, resized


def predict(args: argparse.Namespace) -> int:
    """``toolkit predict`` with an ONNX file: ``<name>_mask.png`` (0/255 at the image's own size) and
    ``<name>_overlay.png`` for each 2D image of ``args.input``, into ``args.output`` (the input folder's subfolders
    kept, :func:`~toolkit.seg_images.output_stem`)."""
    if len(args.weights) != 1:
        raise ValueError(f"--weights: give one ONNX file (ensembles need best.pth files), got {args.weights}")
    if args.flips or args.one_region or args.scale_tta:
        raise ValueError("--flips, --one-region and --scale-tta are not applied with an ONNX file: it uses the post-processing "
                         "stored by `toolkit export` (--threshold and --postprocess none are)")
    source_path = Path(args.input)
    if source_path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"--input {source_path}: predict with an ONNX file reads 2D images (PNG/JPEG/TIFF); "
                         f"for NIfTI volumes use --weights <run>/best.pth")
    model = OnnxSegmenter(args.weights[0])
    post, source = model.postprocess(args.postprocess, args.threshold)
    out, size = Path(args.output), model.size
    print(f"{model.path} (onnxruntime, CPU); input {model.channel_names}, {size}x{size}, {model.meta['intensity']}; "
          f"post-processing: {post.describe()} ({source})")
    vpost = model.volume_rule(args.postprocess)

    def predicted(path):
        image = read_input(path, model.channels, model.in_channels, model.channel_names)
        probs, maps = model.scan_probs(image, flips=post.flips, scales=post.scales)
        return image, post.at_scale(probs.size / size**2).binarize(probs), maps

    images = input_files(source_path, out)
    for path, (image, mask, maps) in per_volume(images, predicted, vpost, size):
        told = write_outputs(output_stem(path, source_path, out), image, mask, maps, model.target)  # subfolders kept
        print(f"{path}: {int(mask.sum())} tumour pixels of {mask.size}{told}")
    print(f"wrote {len(images)} masks and overlays to {out}/")
    return 0
