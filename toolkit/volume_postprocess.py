"""3D post-processing of per-patient predictions, chosen on validation patients (as nnU-Net does).

The 2D models predict slice by slice; stacked into one volume per patient, a prediction often holds small
false-positive islands far from the tumour, which cost little Dice but dominate HD95. Per scored channel
(class or region; binary runs: "tumour") a :class:`ComponentRule` keeps every voxel ("none"), only the
largest connected component ("largest"), or drops components smaller than ``min_voxels`` ("min_voxels").

Connectivity: full 3D (26-connected: voxels sharing a face, edge or corner are one component). Slice-wise
predictions of one lesion may touch the next slice only diagonally; face connectivity would split them.

Nesting (regions): channels are processed from the largest region (most label values; BraTS: whole tumour)
to the smallest; a region contained in another (its label values a strict subset: tumour core in whole
tumour) is first restricted to the kept voxels of each containing region whose rule is not "none", then its
own rule applies. So a whole-tumour island that is removed takes its core/enhancing voxels with it, and
"none" everywhere is the identity. Classes (exclusive) and binary: each channel on its own.

:func:`choose_volume_postprocess` picks per channel, in that order, the rule with the best mean per-patient
Dice (``min_voxels`` tried from :data:`MIN_VOXELS`; ties within ``MIN_GAIN``: the simpler one, in the order
none, largest, smallest ``min_voxels`` first), and reports Dice and HD95 before/after and per option. A region
that contains others is judged by the mean Dice of itself and the regions it contains (their rules still
"none"), since its rule removes their voxels too; each contained region's report names the regions whose kept
voxels restrict it (``within``), so a Dice lost there is not read as its own rule's.
``min_voxels`` counts voxels at the model's input resolution (``image_size`` S in-plane);
:meth:`VolumePostprocess.apply_labels` scales it to other in-plane sizes. Storage in ``postprocess.json``,
the fit-end callback and what ``toolkit evaluate`` / ``predict`` apply: :mod:`toolkit.volume_postprocess_run`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from .postprocess import MIN_GAIN
from .targets import TargetSpec
from .volume_metrics import case_scores, json_safe

__all__ = ["CONNECTIVITY", "MIN_VOXELS", "ComponentRule", "VolumePostprocess", "largest_component_3d",
           "remove_small_components_3d", "channel_parents", "stack_packed", "choose_volume_postprocess"]

CONNECTIVITY = "full 3D (26-connected: face, edge or corner)"
_STRUCTURE = np.ones((3, 3, 3), bool)
MIN_VOXELS = (20, 100, 500, 2500)  # smallest kept component tried, voxels at the model's input resolution
RULES = ("none", "largest", "min_voxels")


def _volume(mask, name: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a 3D (D, H, W) volume, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def largest_component_3d(mask) -> np.ndarray:
    """bool (D, H, W) → bool (D, H, W): only the largest 26-connected component (ties: the first labelled);
    an empty mask stays empty."""
    mask = _volume(mask)
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def remove_small_components_3d(mask, min_voxels: int) -> np.ndarray:
    """bool (D, H, W) → bool (D, H, W) without the 26-connected components of fewer than ``min_voxels`` (>= 0)."""
    mask = _volume(mask)
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count == 0 or min_voxels <= 1:
        return mask.copy()
    keep = np.bincount(labels.ravel()) >= min_voxels
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class ComponentRule:
    """One channel's rule: ``rule`` "none" | "largest" | "min_voxels"; ``min_voxels`` > 0 only for "min_voxels"."""

    rule: str = "none"
    min_voxels: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"component rule must be one of {RULES}, got {self.rule!r}")
        if (self.rule == "min_voxels") != (self.min_voxels > 0):
            raise ValueError(f"min_voxels must be > 0 exactly for rule 'min_voxels', got {self.rule!r} with "
                             f"min_voxels={self.min_voxels}")

    def apply(self, mask, area_factor: float = 1.0) -> np.ndarray:
        """bool (D, H, W) → bool (D, H, W); ``area_factor``: in-plane pixels per model-resolution pixel."""
        if self.rule == "largest":
            return largest_component_3d(mask)
        if self.rule == "min_voxels":
            return remove_small_components_3d(mask, max(1, int(round(self.min_voxels * area_factor))))
        return _volume(mask).copy()

    def describe(self) -> str:
        return {"none": "all components kept", "largest": "largest component only",
                "min_voxels": f"components under {self.min_voxels} voxels removed"}[self.rule]


def channel_parents(spec: TargetSpec) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """(processing order of the scored channels, per channel the channels containing it). Regions: largest
    first, parents = regions whose label values strictly contain its own; classes/binary: no parents."""
    n = len(spec.names)
    if spec.kind != "regions":
        return tuple(range(n)), tuple(() for _ in range(n))
    sets = [set(r) for r in spec.regions]
    order = tuple(sorted(range(n), key=lambda r: -len(sets[r])))
    return order, tuple(tuple(q for q in order if sets[r] < sets[q]) for r in range(n))


@dataclass(frozen=True)
class VolumePostprocess:
    """Per-channel rules for one target: ``spec`` (TargetSpec), ``rules`` one :class:`ComponentRule` per name."""

    spec: TargetSpec
    rules: tuple[ComponentRule, ...]

    def __post_init__(self) -> None:
        if len(self.rules) != len(self.spec.names):
            raise ValueError(f"{len(self.rules)} rules for channels {self.spec.names}; expected one per channel")

    def apply(self, masks, area_factor: float = 1.0) -> np.ndarray:
        """bool (C, D, H, W) per scored channel (``spec.names`` order) → post-processed bool (C, D, H, W)."""
        masks = np.asarray(masks, bool)
        if masks.ndim != 4 or masks.shape[0] != len(self.rules):
            raise ValueError(f"masks must be bool (C, D, H, W) with C = {len(self.rules)}, got {masks.shape}")
        order, parents = channel_parents(self.spec)
        out = masks.copy()
        for c in order:
            m = masks[c]
            for p in parents[c]:
                if self.rules[p].rule != "none":
                    m = m & out[p]
            out[c] = self.rules[c].apply(m, area_factor)
        return out

    def apply_labels(self, labels, area_factor: float = 1.0) -> np.ndarray:
        """uint8 label volume (any 3 axes) in the target's label values → the same after :meth:`apply`
        (``area_factor``: in-plane voxels per model-resolution voxel; regions repainted by
        :meth:`~toolkit.targets.TargetSpec.paint`, as ``toolkit predict`` writes them)."""
        labels, spec = np.asarray(labels), self.spec
        if spec.kind == "regions":  # repainted as TargetSpec.to_labels paints them
            import torch

            kept = self.apply(np.stack([np.isin(labels, r) for r in spec.regions]), area_factor)
            return spec.paint(torch.from_numpy(kept).transpose(0, 1)).numpy()
        if spec.kind == "classes":
            masks = [labels == v for v in spec.values[1:]]
            paint = [(c, v) for c, v in enumerate(spec.values[1:])]
        else:
            masks, paint = [labels > 0], [(0, 1)]
        kept = self.apply(np.stack(masks), area_factor)
        out = np.zeros(labels.shape, np.uint8)
        for c, value in paint:
            out[kept[c]] = value
        return out

    def apply_packed(self, keys: Sequence[tuple[str, int]], packed: np.ndarray) -> np.ndarray:
        """Packed slices (N, H, W) as :func:`~toolkit.volume_eval.pack_masks` (bit c prediction of channel c),
        one (case, slice index) key each → the same with the predictions post-processed per case volume
        (slices missing from a case are empty gaps; a key given twice gets the same result)."""
        out = np.array(packed, copy=True)
        n = len(self.rules)
        for case, (full, rows) in stack_packed(keys, packed).items():
            kept = self.apply(np.stack([(full >> c) & 1 for c in range(n)]).astype(bool))
            new = full & ~full.dtype.type((1 << n) - 1)
            for c in range(n):
                new |= kept[c].astype(full.dtype) << full.dtype.type(c)
            for z, row in rows:
                out[row] = new[z]
        return out

    def describe(self) -> str:
        return "; ".join(f"{n}: {r.describe()}" for n, r in zip(self.spec.names, self.rules))

    def to_dict(self) -> dict:
        return {"rules": {n: {"rule": r.rule, "min_voxels": r.min_voxels} for n, r in zip(self.spec.names, self.rules)},
                "target": self.spec.to_dict(), "connectivity": CONNECTIVITY,
                "restrict_to": {self.spec.names[c]: [self.spec.names[p] for p in ps]
                                for c, ps in enumerate(channel_parents(self.spec)[1]) if ps}}

    @classmethod
    def from_dict(cls, data: Mapping, spec: TargetSpec, where: str = "postprocess.json 'volume'"
                  ) -> "VolumePostprocess":
        """Rules stored by :meth:`to_dict` for the run's ``spec``; ValueError naming ``where`` when the stored
        target or channels differ, or a rule is malformed."""
        rules = data.get("rules") if isinstance(data, Mapping) else None
        if not isinstance(rules, Mapping) or set(rules) != set(spec.names):
            raise ValueError(f"{where}: 'rules' must name the run's channels {list(spec.names)}, got "
                             f"{list(rules) if isinstance(rules, Mapping) else rules!r}")
        if data.get("target", spec.to_dict()) != spec.to_dict():
            raise ValueError(f"{where}: chosen for target {data.get('target')}, but the run predicts {spec.to_dict()}")
        try:
            return cls(spec, tuple(ComponentRule(str(rules[n]["rule"]), int(rules[n].get("min_voxels", 0)))
                                   for n in spec.names))
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{where}: bad rule: {err}") from None


def stack_packed(keys: Sequence[tuple[str, int]], packed: np.ndarray) -> dict[str, tuple[np.ndarray, list]]:
    """{case: (volume (D, H, W) of packed slices from the lowest to the highest index, gaps 0; [(z, row)] for
    every slice row of the case)}; the first row of a repeated key fills the volume."""
    if len(keys) != len(packed):
        raise ValueError(f"{len(keys)} (case, index) keys for {len(packed)} slices; expected one per slice")
    by_case: dict[str, list[tuple[int, int]]] = {}
    for row, (case, index) in enumerate(keys):
        by_case.setdefault(str(case), []).append((int(index), row))
    out = {}
    for case in sorted(by_case):
        items = by_case[case]
        low = min(i for i, _ in items)
        full = np.zeros((max(i for i, _ in items) - low + 1,) + packed.shape[1:], packed.dtype)
        for i, row in reversed(items):  # reversed: the first row of a repeated key is written last
            full[i - low] = packed[row]
        out[case] = (full, [(i - low, row) for i, row in items])
    return out


def _scores(preds, truths, spacings) -> dict:
    rows = [case_scores(p, t, s) for p, t, s in zip(preds, truths, spacings)]
    hd = [r["hd95_mm"] for r in rows if not np.isnan(r["hd95_mm"])]
    return {"dice": float(np.mean([r["dice"] for r in rows])), "hd95_mm": float(np.mean(hd)) if hd else None,
            "hd95_undefined": len(rows) - len(hd), "per_patient_dice": [r["dice"] for r in rows]}


def choose_volume_postprocess(spec: TargetSpec, keys: Sequence[tuple[str, int]], packed: np.ndarray,
                              spacings: Mapping[str, Sequence[float] | None] | None = None,
                              min_voxels: Sequence[int] = MIN_VOXELS) -> tuple[VolumePostprocess, dict]:
    """Choose the rule per channel on held-out patients (see the module docstring).

    keys: (case, slice index) per slice; packed: (N, H, W) :func:`~toolkit.volume_eval.pack_masks` of the
    predicted and true bool masks of ``spec.names``; spacings: {case: (D, H, W) mm or None (voxels)}.
    Returns (the choice, report ``{"patients": [case], "channels": {name: {"choice", "before", "after",
    "options": [{"rule", "dice", "hd95_mm", ...}], ["judged_with", "within"]}}, "hd95_unit": "mm" or "voxels" (a
    case without spacing)}``; before = the raw prediction, scores = mean over patients, HD95 over those where it
    is defined; regions: see the module docstring).
    """
    n = len(spec.names)
    cases = stack_packed(keys, np.asarray(packed))
    if not cases:
        raise ValueError("no slice to choose the 3D post-processing on")
    pred = {c: np.stack([(v >> k) & 1 for k in range(n)]).astype(bool) for c, (v, _) in cases.items()}
    truth = {c: np.stack([(v >> (n + k)) & 1 for k in range(n)]).astype(bool) for c, (v, _) in cases.items()}
    sp = [tuple((spacings or {}).get(c) or (1.0, 1.0, 1.0)) for c in cases]
    options = [ComponentRule(), ComponentRule("largest")] + [ComponentRule("min_voxels", int(k)) for k in min_voxels]
    choice = VolumePostprocess(spec, tuple(ComponentRule() for _ in range(n)))
    order, parents = channel_parents(spec)
    report = {}
    for c in order:
        judged = [c] + [d for d in range(n) if c in parents[d]]  # itself and the regions it contains
        before = _scores([pred[k][c] for k in cases], [truth[k][c] for k in cases], sp)
        scored = []
        for option in options:
            trial = replace(choice, rules=choice.rules[:c] + (option,) + choice.rules[c + 1:])
            kept = [trial.apply(pred[k]) for k in cases]
            each = [_scores([m[d] for m in kept], [truth[k][d] for k in cases], sp) for d in judged]
            scored.append((option, each[0], float(np.mean([e["dice"] for e in each]))))
        best, best_s, best_j = scored[0]
        for option, s, j in scored[1:]:  # simpler options come first: a later one must gain more than MIN_GAIN
            if j > best_j + MIN_GAIN:
                best, best_s, best_j = option, s, j
        choice = replace(choice, rules=choice.rules[:c] + (best,) + choice.rules[c + 1:])
        entry = {"choice": best.describe(), "before": before, "after": best_s,
                 "options": [{"rule": o.describe(), **s} for o, s, _ in scored]}
        if len(judged) > 1:
            entry["judged_with"] = [spec.names[d] for d in judged[1:]]
            for (o, _, j), row in zip(scored, entry["options"]):
                row["dice_with_contained"] = j
        within = [spec.names[p] for p in parents[c] if choice.rules[p].rule != "none"]
        if within:
            entry["within"] = within
        report[spec.names[c]] = entry
    unit = "mm" if all((spacings or {}).get(c) for c in cases) else "voxels"  # no spacing (LGG TIFFs): voxels
    return choice, json_safe({"patients": list(cases), "channels": report, "hd95_unit": unit})

