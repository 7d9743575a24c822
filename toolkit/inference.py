"""Load trained segmentation runs (one, several, or the folds of a cross-validation) and predict masks,
for the ``toolkit evaluate | predict`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .checkpoint import load_weights
from .data.batch_transforms import input_preprocess
from .data.mri.context import context_channels
from .data.mri.dataset import MRISegmentationDataset
from .data.mri.folders import discover_folders
from .data.mri.resize import resize_back, resize_square
from .ensemble import SegmentationEnsemble, disagreement, resolve_weights
from .models.segmentation import build_segmentation_model, parse_widths
from .postprocess import SCALE_TTA, PostProcess, load_postprocess
from .seg_images import tumour_map
from .targets import TARGET_FILE, TargetSpec

__all__ = ["load_segmentation_run", "stored_target", "load_ensemble", "ScanProbs", "scan_member_probs",
           "predict_probs", "pick_postprocess", "run_slices", "run_dataset", "run_layout", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# config keys every member of an ensemble must share (context_slices: the 2.5D neighbours stacked as input channels)
SAME_INPUT = ("image_size", "in_channels", "channels", "intensity", "target_spec", "context_slices")


def load_segmentation_run(weights: str | Path) -> tuple[torch.nn.Module, dict]:
    """Model and recipe config of a segmentation run from its ``best.pth``.

    The architecture comes from ``config.json`` beside the weights (written by every run), the target and
    input scaling from ``target.json`` (binary and per-slice without one); the weights load with
    ``weights_only=True``. Returns (model in eval mode, config dict with ``target_spec`` (a
    :meth:`TargetSpec.to_dict`) and ``intensity`` added).
    """
    weights = Path(weights)
    config_path = weights.parent / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: --weights must be a best.pth inside a run folder")
    cfg = json.loads(config_path.read_text())
    if "model" not in cfg or "image_size" not in cfg:
        raise ValueError(f"{config_path} is not the config of a segmentation run (recipe {cfg.get('recipe')!r})")
    stored = stored_target(weights.parent)
    target = TargetSpec.from_dict(stored)
    cfg = {**cfg, "target_spec": target.to_dict(), "intensity": stored.get("intensity", "per_slice")}
    model = build_segmentation_model(cfg["model"], in_channels=context_channels(cfg.get("in_channels", 1),
                                                                               cfg.get("context_slices", 0)),
                                     out_channels=target.out_channels,
                                     widths=parse_widths(cfg.get("widths", "")),
                                     deep_supervision=bool(cfg.get("deep_supervision", False)))
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the model {cfg['model']!r} of {config_path}: {err}") from err
    return model.eval(), cfg


def stored_target(run_dir: str | Path) -> dict:
    """A run's ``target.json`` (its :meth:`TargetSpec.to_dict` and ``intensity``); {} (binary, per-slice scaling)
    for a run written before the file existed."""
    path = Path(run_dir) / TARGET_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_layout(run_dir: str | Path) -> str:
    """The data layout a run trained on ("folder", "lgg", "figshare_mat", "brats"), from its ``split.json``
    ``source`` (several folders: the first one's); "folder" for a run folder without one. It decides which
    channels ``channels``/``in_channels`` of the run's config name (:func:`~toolkit.data.mri.channels.resolve_channels`)."""
    split_file = Path(run_dir) / "split.json"
    source = json.loads(split_file.read_text()).get("source", "folder") if split_file.is_file() else "folder"
    return str(source).split("+")[0]


def run_inputs(run_dir: str | Path) -> str:
    """What a run's model read, in words, from its ``config.json``, ``split.json`` and ``target.json``: e.g.
    "flair, t1ce of brats data, z-scored per volume" or "grey, scaled per slice"; "" for a folder without a
    ``config.json`` or with channels it does not name."""
    from .data.mri.channels import resolve_channels
    from .data.mri.nifti import NIFTI_SOURCES
    from .seg_images import channel_names

    path = Path(run_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
        layout = run_layout(run_dir)
        intensity = stored_target(run_dir).get("intensity") or ("zscore" if layout in NIFTI_SOURCES else "per_slice")
        names = (f"{cfg.get('in_channels')} channel(s) of raw data" if layout == "raw" else
                 channel_names(layout, resolve_channels(layout, cfg.get("channels") or cfg.get("in_channels", 1))))
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"{names}, {'z-scored per volume' if intensity == 'zscore' else 'scaled per slice'}"


def input_difference(weights: str | Path, run_dir: str | Path) -> str:
    """A note when the run folder of ``weights`` (a ``best.pth``) read other inputs than the run ``run_dir``
    (:func:`run_inputs`: channels, intensity scaling); "" when they read the same or either is unknown. Weights
    of another channel count are refused by :func:`~toolkit.models.utils.init_from`; these load, so the note
    says what a shape check cannot (e.g. FLAIR weights fine-tuned on T1ce slices)."""
    before, now = run_inputs(Path(weights).parent), run_inputs(run_dir)
    if not before or not now or before == now:
        return ""
    return f"the weights' run read {before}; this run reads {now}"


def trained_with_flips(cfg: dict) -> bool:
    """Whether a brain-MRI run (its config.json) trained with left-right flips: ``augment`` > 0 (default 1)."""
    return float(cfg.get("augment", 1.0)) > 0


def run_slices(data_dir: str, cfg: dict) -> list:
    """The slices of ``data_dir`` (one folder or several, comma-separated) read as the run of ``cfg`` read
    its data: the same channels, slice rule and bad-file policy. Returns a list of MRISlice."""
    return discover_folders(data_dir, channels=cfg.get("channels") or cfg.get("in_channels", 1),
                            slice_rule=cfg.get("slice_rule") or None,
                            skip_bad_files=cfg.get("skip_bad_files", False)).slices


def run_dataset(records, cfg: dict, **kwargs) -> MRISegmentationDataset:
    """``records`` at the run's resolution: (uint8 image (C, S, S), uint8 mask (1, S, S)) pairs, S = image_size,
    C = in_channels x (2 context_slices + 1) (the run's 2.5D neighbours stacked); ``kwargs`` go to the dataset."""
    return MRISegmentationDataset(records, size=cfg["image_size"], skip_bad_files=cfg.get("skip_bad_files", False),
                                  context=int(cfg.get("context_slices", 0)), **kwargs)


def run_target_dataset(records, cfg: dict, target: TargetSpec):
    """``records`` as the run read them for its ``target`` (:func:`run_dataset`): label maps for classes/regions
    of the data's labels; binary masks whose tumour takes the slice's class for ``class_column`` classes
    (:class:`~toolkit.data.mri.classes.AttributeClasses`)."""
    column = cfg.get("class_column") or ""
    dataset = run_dataset(records, cfg, labels=target.kind != "binary" and not column)
    if column and target.kind == "classes":
        from .data.mri.classes import AttributeClasses

        dataset = AttributeClasses(dataset, column, target.names)
    return dataset


def _input_key(cfg: dict, key: str):
    """``cfg[key]`` as an ensemble compares it: runs from before ``context_slices`` existed had none (0)."""
    return int(cfg.get(key) or 0) if key == "context_slices" else cfg.get(key)


def load_ensemble(weights: Sequence[str | Path]) -> tuple[SegmentationEnsemble, dict, Path | None, list[Path]]:
    """Every model named by ``weights`` (files, run folders, cross-validation folders; see
    :func:`~toolkit.ensemble.resolve_weights`) as one ensemble.

    Returns (ensemble, the first member's config, the ``postprocess.json`` that applies or None, the
    weight files). Raises ValueError when members differ in input size or channels.
    """
    files, post = resolve_weights(weights)
    loaded = [load_segmentation_run(f) for f in files]
    first = loaded[0][1]
    for f, (_, cfg) in zip(files[1:], loaded[1:]):
        differ = [k for k in SAME_INPUT if _input_key(cfg, k) != _input_key(first, k)]
        if differ:
            theirs, ours = ([_input_key(c, k) for k in differ] for c in (cfg, first))
            raise ValueError(f"{f} takes other input than {files[0]} ({', '.join(differ)}: {theirs} against {ours}); "
                             f"an ensemble needs members of one input size and channels")
    ensemble = SegmentationEnsemble([m for m, _ in loaded], input_preprocess(first["intensity"]),
                                    TargetSpec.from_dict(first["target_spec"]))
    return ensemble, first, post, files


def pick_postprocess(post_file: Path | None, cfg: dict, mode: str = "auto", threshold: float | None = None,
                     flips: bool = False, one_region: bool = False,
                     scale_tta: bool = False) -> tuple[PostProcess, str]:
    """The post-processing to apply and where it came from.

    ``mode`` "auto": the stored ``postprocess.json`` when there is one, else the run's threshold alone;
    "none": the run's threshold alone. ``threshold``, ``flips``, ``one_region`` and ``scale_tta`` (the search's
    scales, :data:`~toolkit.postprocess.SCALE_TTA`) then override parts.
    """
    if mode not in ("auto", "none"):
        raise ValueError(f"--postprocess must be auto or none, got {mode!r}")
    if mode == "auto" and post_file is not None:
        post, _ = load_postprocess(post_file)
        source = str(post_file)
    else:
        post, source = PostProcess(threshold=float(cfg.get("threshold", 0.5))), "the run's threshold"
    changes = {}
    if threshold is not None:
        changes["threshold"] = threshold
    if flips:
        changes["flips"] = True
    if one_region:
        changes.update(largest_only=True, min_size=0)
    if scale_tta:
        changes["scales"] = SCALE_TTA
    if changes:
        post = PostProcess(**{**post.to_dict(), **changes})
        source += " with " + ", ".join(f"{k}={v}" for k, v in changes.items()) + " from the command line"
    return post, source


class ScanProbs(NamedTuple):
    """What :func:`predict_probs` returns for one scan of H x W pixels.

    tumour: float32 (H, W) probability of any tumour in [0, 1]; disagreement: float32 (H, W) in [0, 1] at the
    threshold, None for a single model; channels: float32 (K, H, W) the members' mean probability per output
    channel (K = the target's out_channels: sigmoid per channel, or softmax for classes) in [0, 1].
    """

    tumour: np.ndarray
    disagreement: np.ndarray | None
    channels: np.ndarray


@torch.no_grad()
def scan_member_probs(ensemble: SegmentationEnsemble, image: np.ndarray, size: int,
                      flips: bool = False, scales: Sequence[float] = ()) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) scan → float32 (M, 1, K, size, size) probabilities of each of the M members, the
    scan resized to ``size`` x ``size`` as the run's slices were and preprocessed as in training (``flips``,
    ``scales``: test-time augmentation, :meth:`~toolkit.ensemble.SegmentationEnsemble.member_probs`)."""
    resized = resize_square(image, size)  # as the run's slices were: area when either side shrinks
    if resized.ndim == 2:
        resized = resized[..., None]
    return ensemble.member_probs(ensemble.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None]), flips, scales)


@torch.no_grad()
def predict_probs(ensemble: SegmentationEnsemble, image: np.ndarray, size: int, flips: bool = False,
                  threshold: float = 0.5, flip_trained: bool = True, scales: Sequence[float] = ()) -> ScanProbs:
    """Tumour probabilities, member disagreement and per-channel probabilities for one scan, at its own size.

    image: uint8 (H, W, C). Tumour: any tumour class or region (:func:`~toolkit.seg_images.tumour_map`).
    The scan is resized to ``size`` x ``size`` as in training, standardised per image, and the maps are
    resized back (bilinear, :func:`~toolkit.data.mri.resize.resize_back`; ``flip_trained``: the run trained with
    left-right flips, :func:`trained_with_flips`). ``flips`` averages with the horizontally flipped prediction,
    ``scales`` with the scan predicted at these factors of its side (scale TTA);
    the disagreement is taken at ``threshold``. Returns a :class:`ScanProbs`.
    """
    h, w = image.shape[:2]
    all_probs = scan_member_probs(ensemble, image, size, flips, scales)  # (M, 1, K, S, S)
    members = torch.from_numpy(np.ascontiguousarray(tumour_map(all_probs.numpy(), ensemble.target.kind)))[:, :, None]
    back = {"width": w, "height": h, "flip_trained": flip_trained}  # where the masks it learnt from lie
    probs = resize_back(members.mean(0)[0].numpy(), **back)[0]
    # binary: the one channel is the tumour map, already resized
    channels = probs[None] if ensemble.target.kind == "binary" else resize_back(all_probs.mean(0)[0].numpy(), **back)
    if len(ensemble.members) < 2:
        return ScanProbs(probs, None, channels)
    dispute = disagreement(members, threshold)[0, 0].numpy()
    return ScanProbs(probs, resize_back(dispute[None], **back)[0], channels)
