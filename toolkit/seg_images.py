"""The 2D image files of ``toolkit predict``: which files to read, how to read one as model input, and the
mask / overlay PNGs written. NumPy and OpenCV only (no torch), shared by the PyTorch path
(:mod:`toolkit.seg_commands`) and the ONNX path (:mod:`toolkit.onnx_predict`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from .checkpoint import atomic_write
from .data.errors import MRIDataError
from .data.mri.io import CHANNEL_NAMES, IMAGE_EXTENSIONS, read_image

__all__ = ["channel_names", "class_labels", "input_files", "output_stem", "overlay", "per_volume", "read_input",
           "tumour_map", "write_class_map", "write_outputs", "write_png"]


def tumour_map(probs: np.ndarray, kind: str) -> np.ndarray:
    """Per-channel probabilities (..., K, H, W) in [0, 1] → (..., H, W) probability of any tumour in [0, 1].

    ``kind`` is the run's target kind: ``"binary"`` the one channel; ``"regions"`` (overlapping sigmoids, e.g.
    BraTS whole tumour / core / enhancing) the largest region probability; ``"classes"`` (softmax, channel 0 =
    background) one minus the background probability. The 2D masks of ``toolkit predict`` are this map,
    thresholded, for every kind and both the PyTorch and the ONNX path.
    """
    if kind == "binary":
        return probs[..., 0, :, :]
    if kind == "regions":
        return probs.max(axis=-3)
    if kind == "classes":
        return 1.0 - probs[..., 0, :, :]
    raise ValueError(f"target kind must be binary, regions or classes, got {kind!r}")


def class_labels(probs: np.ndarray, values: Sequence[int], names: Sequence[str]) -> tuple[np.ndarray, str]:
    """Classes runs: softmax probabilities (K, H, W) in [0, 1], channel 0 background → (uint8 (H, W) label map:
    each pixel the label value ``values[k]`` of its most probable class k, the rule ``toolkit evaluate`` scores
    classes by; the name (of ``names``, foreground classes in order) of the foreground class with the most
    pixels, the slice-level class of ``evaluate``'s ``class_accuracy``, or "" when no pixel is foreground)."""
    idx = probs.argmax(0)
    counts = np.bincount(idx.ravel(), minlength=len(values))[1:]
    return np.asarray(values, dtype=np.uint8)[idx], (names[int(counts.argmax())] if counts.any() else "")


def write_class_map(path: Path, channels: np.ndarray, target: Mapping) -> str:
    """Classes runs (``target``: the run's ``target_spec`` dict, kind "classes"): write the label map of
    :func:`class_labels` (channels: float32 (K, H, W) softmax probabilities) as a PNG at ``path`` and return
    ", class <name> (label map <file>)" for the printed line (", no tumour class (nothing predicted) ..." when
    no pixel is foreground). Other targets: nothing written, "" returned."""
    if target["kind"] != "classes":
        return ""
    labels, name = class_labels(channels, target["values"], target["names"])
    write_png(path, labels)
    return f", {f'class {name}' if name else 'no tumour class (nothing predicted)'} (label map {path.name})"


def write_outputs(stem: Path, image: np.ndarray, mask: np.ndarray, maps: np.ndarray, target: Mapping,
                  dispute: np.ndarray | None = None) -> str:
    """Write one image's ``predict`` outputs beside ``stem`` (:func:`output_stem`): ``<stem>_mask.png`` (``mask``,
    uint8 (H, W) {0, 1}, as 0/255), ``<stem>_overlay.png`` (:func:`overlay` of ``image``, uint8 (H, W, C)), with
    ``dispute`` (float (H, W) in [0, 1], an ensemble's disagreement) ``<stem>_disagreement.png`` (0-255), and for
    classes runs ``<stem>_classes.png`` (:func:`write_class_map` of ``maps``, float32 (K, H, W)). Returns the
    printed line's tail: :func:`write_class_map`'s, "" for other targets."""
    def named(kind: str) -> Path:
        return stem.with_name(f"{stem.name}_{kind}.png")

    write_png(named("mask"), mask * 255)
    write_png(named("overlay"), overlay(image, mask))
    if dispute is not None:
        write_png(named("disagreement"), (dispute * 255).round().astype(np.uint8))
    return write_class_map(named("classes"), maps, target)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write uint8 (H, W) or BGR (H, W, 3) ``image`` as a PNG at ``path``, atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) scan + {0,1} (H, W) mask → BGR uint8 with the mask in red and its outline.

    The scan is drawn in grey under the red: C == 3 (RGB) as its luminance; any other C (1, 2, 4, ...)
    as channel 0 (e.g. FLAIR of BraTS ``flair,t1ce``). A (H, W) scan counts as C = 1.
    """
    image = image[..., None] if image.ndim == 2 else image
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.shape[2] == 3 else np.ascontiguousarray(image[..., 0])
    bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    red = bgr.copy()
    red[mask > 0] = (0, 0, 255)
    out = cv2.addWeighted(bgr, 0.6, red, 0.4, 0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(out, contours, -1, (0, 0, 255), 1)


def read_input(path: Path, channels: tuple[int, ...], in_channels: int, names: str) -> np.ndarray:
    """A 2D image file as the model's input, uint8 (H, W, C), C = ``in_channels``.

    A 2D file gives one grey channel or three RGB ones (RGBA: the alpha is dropped). Models of 1 channel
    take either (an RGB file is turned grey, or the run's one channel is picked) and models of 3 channels
    take RGB or grey (three equal channels). Any other channel count (BraTS ``flair,t1ce``: 2, all four
    modalities: 4) cannot come from a 2D file: refused with an MRIDataError naming the file, the channels
    the model expects (``names``, e.g. "flair, t1ce of brats data") and those the file has.
    """
    if in_channels in (1, 3):
        return read_image(path, channels)
    rgb = read_image(path, (0, 1, 2))  # a grey file gives three equal channels
    grey = bool((rgb == rgb[..., :1]).all())
    raise MRIDataError(path, f"this 2D image has {'1 channel (grey)' if grey else '3 channels (RGB)'} but the "
                             f"model expects {in_channels} ({names}); predict takes grey or RGB image files for "
                             f"models of 1 or 3 channels only; give it NIfTI volumes, or score the run with "
                             f"`toolkit evaluate --weights ... --data-dir DIR`")


def channel_names(layout: str, channels: tuple[int, ...]) -> str:
    """"flair, t1ce of brats data" for the indices (0, 2) of ``layout``; "grey" for ()."""
    if not channels:
        return "grey"
    known = CHANNEL_NAMES.get(layout, ())
    return ", ".join(known[c] if c < len(known) else str(c) for c in channels) + f" of {layout} data"


def input_files(source: Path, output: Path | None = None) -> list[Path]:
    """The images to predict: ``source`` itself, or every PNG/JPEG/TIFF under the folder ``source`` (sorted,
    ``*_mask`` files skipped; linked folders followed, each real folder once; the ``output`` folder, where predict
    writes, left out, so a second run does not predict its own overlays). Raises FileNotFoundError when it
    does not exist or holds none, ValueError naming both files when two in one folder share a name without
    extension (their ``<name>_mask.png`` would overwrite each other; files of other subfolders write into their own
    subfolders of the output, :func:`output_stem`)."""
    if source.is_dir():
        inside = output is not None and os.path.realpath(output) != os.path.realpath(source)
        files, seen = [], {os.path.realpath(output)} if inside else set()  # a folder in seen is not read
        for folder, subfolders, names in os.walk(source, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a link back to a folder already read
                subfolders.clear()
                continue
            seen.add(real)
            files += [Path(folder) / n for n in names
                      if Path(n).suffix.lower() in IMAGE_EXTENSIONS and not Path(n).stem.endswith("_mask")]
        files.sort()
    elif source.is_file():
        files = [source]
    else:
        raise FileNotFoundError(f"--input {source} does not exist")
    if not files:
        raise FileNotFoundError(f"--input {source} holds no PNG/JPEG/TIFF images")
    by_stem: dict[Path, Path] = {}
    for f in files:  # the outputs are named <stem>_mask.png: 1.png and 1.tif of one folder would overwrite each other
        stem = output_stem(f, source, Path())
        if stem in by_stem:
            raise ValueError(f"--input {source}: {by_stem[stem]} and {f} would both be written as "
                             f"{stem}_mask.png (outputs are named by the file name without its extension); "
                             f"predict them into separate --output folders, or rename one")
        by_stem[stem] = f
    return files


def output_stem(path: Path, source: Path, output: Path) -> Path:
    """Where predict writes ``path``'s outputs, without their ``_mask.png``/``_overlay.png`` ending: ``output`` /
    the image's folder relative to the ``--input`` folder ``source`` / its name without extension (an image
    given itself, or at the top of ``source``: ``output / <name>``). So the subfolders of the input (one per
    patient, say) come back as subfolders of the output, and ``p1/slice_1.png`` and ``p2/slice_1.png`` do not
    overwrite each other."""
    if source.is_dir():
        return output / path.parent.relative_to(source) / path.stem
    return output / path.stem


def per_volume(images: Sequence[Path], predicted: Callable[[Path], tuple], vpost, size: int,
               say: Callable[[str], Any] = print, rule: str = "") -> Iterator[tuple]:
    """Yield ``(path, predicted(path))`` per image; ``predicted(path)`` is a tuple whose item 1 is the image's
    mask, uint8 (H, W) {0, 1} (the other items pass through). With ``vpost`` (a binary
    :class:`~toolkit.volume_postprocess.VolumePostprocess`, or None), the images of each LGG patient (same folder,
    ``<patient>_<n>.tif``) are predicted together and their masks stacked by ``n`` into a volume that ``vpost``
    post-processes first, its minimum sizes scaled from the model's ``size`` x ``size`` to the images' own. A
    patient whose folder holds slices not given (one file, part of a folder) is yielded as predicted, and ``say``
    tells so: a 3D rule on part of a volume would judge other components than on the whole. So is an image whose
    name gives no slice number, or of another size than its patient's. With ``vpost``, ``say`` first names the
    rule: ``rule``, or ``vpost.describe()``."""
    if vpost is None:
        yield from ((path, predicted(path)) for path in images)
        return
    say(f"then per patient folder (LGG slices stacked by the number in their names): {rule or vpost.describe()}")
    from .volume_metrics import lgg_case_and_index

    groups: dict[tuple, list[tuple[int, Path]]] = {}
    for path in images:
        try:
            case, index = lgg_case_and_index(path.name)
            key: tuple = (path.parent, case)
        except ValueError:
            key, index = (path,), 0  # no slice number: an image of its own
        groups.setdefault(key, []).append((index, path))
    partial = []
    for key, members in groups.items():
        results = {path: predicted(path) for _, path in members}
        shapes = {results[p][1].shape for _, p in members}
        whole = len(key) == 2 and len(_patient_slices(*key)) == len({p for _, p in members})
        if len(key) == 2 and not whole:
            partial.append(key[1])
        if whole and len(shapes) == 1:
            depth = max(i for i, _ in members) + 1
            (h, w), = shapes
            volume = np.zeros((1, depth, h, w), bool)
            for i, p in members:
                volume[0, i] |= results[p][1].astype(bool)
            kept = vpost.apply(volume, h * w / size**2)[0]
            for i, p in members:
                mask = results[p][1]
                results[p] = (results[p][0], (mask.astype(bool) & kept[i]).astype(mask.dtype), *results[p][2:])
        yield from ((p, results[p]) for _, p in members)
    if partial:
        say(f"3D rule not applied to {len(partial)} patient(s) given in part (it needs every slice of the patient "
            f"folder): {', '.join(partial[:5])}{' ...' if len(partial) > 5 else ''}")


def _patient_slices(folder: Path, case: str) -> list[Path]:
    """The image files of LGG patient ``case`` in ``folder`` (``<case>_<n>.<ext>``, masks left out)."""
    from .volume_metrics import lgg_case_and_index

    out = []
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.stem.endswith("_mask"):
            try:
                if lgg_case_and_index(p.name)[0] == case:
                    out.append(p)
            except ValueError:
                pass
    return out
