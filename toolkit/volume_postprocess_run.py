"""The 3D post-processing of :mod:`toolkit.volume_postprocess` in runs: chosen at fit end on the validation
patients (:class:`ChooseVolumePostprocess`, stored as ``"volume"`` in ``<run>/postprocess.json``) and found
again for ``toolkit evaluate`` / ``predict`` (:func:`stored_volume_postprocess`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .callbacks import ChooseOnRun
from .ensemble import SegmentationEnsemble
from .models.utils import init_from
from .postprocess import POSTPROCESS_FILE, PostProcess, load_postprocess, load_volume_key, save_volume_key
from .targets import TargetSpec
from .volume_metrics import are_volumes
from .volume_postprocess import CONNECTIVITY, MIN_VOXELS, VolumePostprocess, choose_volume_postprocess

__all__ = ["stored_volume_postprocess", "report_lines", "ChooseVolumePostprocess", "choose_and_store"]


def stored_volume_postprocess(post_source: str | None, spec: TargetSpec) -> tuple[VolumePostprocess | None, str]:
    """The 3D post-processing stored in the ``postprocess.json`` that is applied, and a line saying what applies.

    post_source: where the 2D post-processing came from (:func:`~toolkit.inference.pick_postprocess`'s
    source: the file's path, perhaps followed by " with ... from the command line"; "the run's threshold"
    with ``--postprocess none`` or without a file). None when that names no file with a ``"volume"`` object.
    """
    source = str(post_source or "")
    path = Path(source.rsplit(" with ", 1)[0] if source.endswith(" from the command line") else source)
    if path.name != POSTPROCESS_FILE or not path.is_file():
        return None, "none (no postprocess.json applied)"
    stored = load_volume_key(path)
    if stored is None:
        return None, f"none ({path} holds no '{'volume'}' choice)"
    choice = VolumePostprocess.from_dict(stored, spec, where=f"{path} 'volume'")
    return choice, f"{choice.describe()} ({CONNECTIVITY}; from {path})"


def report_lines(report: Mapping) -> list[str]:
    """One line per channel of a :func:`choose_volume_postprocess` report: choice, Dice and HD95 before → after."""
    def hd(v):
        return "n/a" if v is None else f"{v:.1f}"

    def within(r):
        return f" (inside the kept {', '.join(r['within'])})" if r.get("within") else ""
    return [f"{name}: {r['choice']}{within(r)}: Dice {r['before']['dice']:.4f} -> {r['after']['dice']:.4f}, HD95 "
            f"{hd(r['before']['hd95_mm'])} -> {hd(r['after']['hd95_mm'])} {report.get('hd95_unit', 'mm')}"
            for name, r in report["channels"].items()]


class ChooseVolumePostprocess(ChooseOnRun):
    """At the end of fit, on volume data (validation records with a slice ``index``, or LGG patient folders), the
    main process predicts the validation split with ``best.pth`` (after the run's 2D post-processing when
    ``postprocess.json`` holds one: binary runs), chooses the 3D rules per channel and adds them to
    ``<run>/postprocess.json`` as ``"volume"`` (a classes/regions run's file gets the identity 2D choice at
    ``threshold``).

    build_model: returns a fresh model of the run (out_channels = ``target.out_channels``); val_data: the
    validation MRISegmentationDataset (uint8 image (C, S, S), uint8 label map or mask (1, S, S)); preprocess:
    the run's uint8 → float input map; target: the run's TargetSpec; threshold: the run's probability threshold;
    reuse: the run's 2D :class:`~toolkit.seg_eval.ChoosePostprocess`, called before this one on the same data: a
    binary run then takes the validation probabilities it computed instead of predicting them again.
    """

    def __init__(self, build_model, val_data, preprocess, target: TargetSpec, threshold: float = 0.5,
                 min_voxels: Sequence[int] = MIN_VOXELS, reuse=None) -> None:
        self.build_model, self.val_data, self.preprocess = build_model, val_data, preprocess
        self.target, self.threshold, self.min_voxels = target, float(threshold), tuple(min_voxels)
        self.reuse = reuse

    def choose(self, run_dir: Path, print_fn=print) -> None:
        """Choose with ``<run_dir>/best.pth`` and add the 3D rules to ``<run_dir>/postprocess.json`` (nothing
        without ``best.pth`` or unless the validation records are volumes); ``toolkit postprocess`` calls it."""
        from .seg_eval import collect_probs  # here: seg_eval and volume_eval import the modules above
        from .volume_eval import pack_masks, predict_packed

        best, path = run_dir / "best.pth", run_dir / POSTPROCESS_FILE
        records = list(getattr(self.val_data, "records", []))
        if not best.is_file() or not are_volumes(records):
            return
        post = load_postprocess(path)[0] if path.is_file() else PostProcess(threshold=self.threshold)
        kept = self.reuse.take(best) if self.reuse is not None else None  # the 2D search's: post was chosen on them
        ensemble = None if kept is not None else SegmentationEnsemble(
            [init_from(self.build_model(), best).eval()], self.preprocess, self.target)
        if self.target.kind == "binary":
            preds = kept if kept is not None else collect_probs(ensemble, self.val_data, flips=post.flips,
                                                                threshold=post.threshold, scales=post.scales)
            packed = pack_masks(post.binarize(preds.chosen(post))[:, None], preds.targets[:, None])
        else:
            packed = predict_packed(ensemble, self.val_data, post.threshold, post.flips, scales=post.scales)[0]
        report = choose_and_store(path, self.target, records, packed, int(self.val_data.size), post,
                                  f"validation split of {run_dir.name}", self.min_voxels)
        print_fn(f"3D post-processing chosen on {len(report['patients'])} validation patient(s):\n  "
                 + "\n  ".join(report_lines(report)))


def choose_and_store(path: Path, target: TargetSpec, records: Sequence, packed, size: int, post: PostProcess,
                     chosen_on: str, min_voxels: Sequence[int] = MIN_VOXELS) -> dict:
    """Choose the 3D rules on held-out volume predictions and add them as ``"volume"`` to ``postprocess.json``
    at ``path``; returns the :func:`choose_volume_postprocess` report.

    records: the MRISlice records predicted, in order; packed: their predictions after the 2D ``post`` and
    truths, (N, S, S) as :func:`~toolkit.volume_eval.pack_masks`, S = ``size``; chosen_on: what the predictions
    are (validation patients of a run, out-of-fold predictions of a CV).
    """
    from .volume_eval import case_keys, case_spacings  # here: volume_eval imports this module

    keys, _ = case_keys(records)
    choice, report = choose_volume_postprocess(target, keys, packed, case_spacings(records, keys, size), min_voxels)
    save_volume_key(path, {**choice.to_dict(), "image_size": size, "after_2d": post.describe(),
                           "min_voxels_unit": f"voxels at the model's input resolution ({size} x {size} in-plane)",
                           "chosen_on": f"{chosen_on}: {len(report['patients'])} patient(s)", "report": report},
                    post.threshold)
    return report
