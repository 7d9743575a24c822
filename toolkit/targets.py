"""What a segmentation model predicts: one binary mask, several exclusive classes, or overlapping regions.

A :class:`TargetSpec` turns the dataset's label maps into training targets, logits into
probabilities, probabilities into hard per-channel masks for the metrics, and back into label maps
with the data set's own label values (for NIfTI output). Datasets hand over label maps as they are
stored (uint8 (N, 1, H, W), e.g. BraTS 0 background, 1 necrosis, 2 edema, 3 non-enhancing,
4 enhancing); the spec does the rest on the device, so loaders stay uint8.

- ``binary``: one sigmoid output; a pixel is tumour when its label is > 0 (today's task).
- ``classes``: softmax over K = background + foreground classes, mutually exclusive; label values
  need not be contiguous (``values[k]`` is class k's label value). Metrics are per foreground class.
- ``regions``: one sigmoid per region, regions may overlap (BraTS whole tumour = 1+2+3+4, tumour
  core = 1+3+4, enhancing = 4), as nnU-Net's region-based training. Metrics are per region.

Regions back to labels (:meth:`TargetSpec.to_labels`), as BraTS / nnU-Net do: regions are painted
from the largest (most label values) to the smallest, each with the smallest label value that it
holds and no later region holds (whole tumour → 2 edema, tumour core → 1 necrosis, enhancing →
4); then a pixel whose regions are exactly those of a label value gets that value (the same as the
painting for nested regions such as BraTS'; for overlapping regions that are not nested, x = 1+2 and
y = 2+3, the painting alone would turn a pixel of y only into 2). Labels that share every region
(here 1 and 3) cannot be told apart from the regions (the smallest is written); the round trip
labels → regions → labels is exact when no two labels share every region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    import torch  # imported where tensors are used: the ONNX predict reads a TargetSpec without torch

__all__ = ["TARGET_FILE", "TARGET_KINDS", "TargetSpec", "BRATS_REGIONS", "parse_regions", "resolve_target"]

TARGET_KINDS = ("binary", "classes", "regions")
#: A run's target, beside its best.pth (``TargetSpec.to_dict``); runs without one are binary.
TARGET_FILE = "target.json"
#: BraTS regions on the BRATS 2013-2015 labels (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing).
BRATS_REGIONS = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing_tumour": (4,)}


def parse_regions(text: str) -> dict[str, tuple[int, ...]]:
    """``"wt=1+2+3+4,tc=1+3+4,et=4"`` → {"wt": (1, 2, 3, 4), ...}; ValueError naming the bad part."""
    out: dict[str, tuple[int, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, labels = part.partition("=")
        try:
            values = tuple(int(v) for v in labels.split("+"))
        except ValueError:
            values = ()
        if not eq or not name.strip() or not values or any(not 0 < v < 256 for v in values):
            raise ValueError(f"region {part!r}: expected name=label+label+... with labels 1..255, "
                             f"e.g. 'whole_tumour=1+2+3+4,tumour_core=1+3+4,enhancing_tumour=4'")
        out[name.strip()] = values
    if not out:
        raise ValueError(f"no region in {text!r}; expected e.g. 'whole_tumour=1+2+3+4,enhancing_tumour=4'")
    return out


@dataclass(frozen=True)
class TargetSpec:
    """The prediction target of a segmentation run.

    Args:
        kind: "binary", "classes" or "regions".
        names: names of the scored channels: binary ("tumour",); classes the foreground class
            names in class order (background excluded); regions the region names.
        values: classes only: the label value of each class index, background first
            (``values[0]``), e.g. (0, 1, 2, 3, 4); () otherwise.
        regions: regions only: the label values each region holds, in ``names`` order.

    Build with :meth:`binary`, :meth:`classes` or :meth:`regions`; :meth:`to_dict` /
    :meth:`from_dict` store it in a run's config.
    """

    kind: str = "binary"
    names: tuple[str, ...] = ("tumour",)
    values: tuple[int, ...] = ()
    regions: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"target kind must be one of {', '.join(TARGET_KINDS)}, got {self.kind!r}")
        if self.kind == "classes" and (len(self.values) < 2 or len(self.names) != len(self.values) - 1
                                       or len(set(self.values)) != len(self.values)):
            raise ValueError(f"classes need distinct label values, background first, and one name per "
                             f"foreground class; got values {self.values}, names {self.names}")
        if self.kind == "regions" and (not self.regions or len(self.regions) != len(self.names)):
            raise ValueError(f"regions need one name per region; got names {self.names}, regions {self.regions}")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def binary(cls) -> "TargetSpec":
        """One sigmoid output: tumour = label > 0."""
        return cls()

    @classmethod
    def classes(cls, labels: Mapping[str, int]) -> "TargetSpec":
        """Exclusive classes from ``{name: label value}`` (the value 0 is background, and must be there)."""
        items = sorted(labels.items(), key=lambda kv: kv[1])
        if not items or items[0][1] != 0:
            raise ValueError(f"labels must include background with value 0, got {dict(labels)}")
        return cls("classes", tuple(n for n, _ in items[1:]), tuple(int(v) for _, v in items))

    @classmethod
    def regions_of(cls, regions: Mapping[str, Sequence[int]]) -> "TargetSpec":
        """Overlapping regions from ``{name: label values}``."""
        return cls("regions", tuple(regions), regions=tuple(tuple(int(v) for v in r) for r in regions.values()))

    def to_dict(self) -> dict:
        """JSON-ready form (stored in a run's ``config.json`` as ``target_spec``)."""
        return {"kind": self.kind, "names": list(self.names), "values": list(self.values),
                "regions": [list(r) for r in self.regions]}

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "TargetSpec":
        """Inverse of :meth:`to_dict`; None or {} → binary (runs written before multi-class)."""
        if not d:
            return cls()
        return cls(d["kind"], tuple(d["names"]), tuple(d.get("values", ())),
                   tuple(tuple(r) for r in d.get("regions", ())))

    # -- shapes -------------------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        """Model output channels: 1 (binary), K = len(values) (classes), R (regions)."""
        return {"binary": 1, "classes": len(self.values), "regions": len(self.regions)}[self.kind]

    def _lut(self, device) -> torch.Tensor:
        import torch
        lut = torch.zeros(256, dtype=torch.long, device=device)
        for k, value in enumerate(self.values):  # Python numbers: fills on the device, no copy that waits for it
            lut[value] = k
        return lut

    # -- tensors ------------------------------------------------------------------------------------
    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Label maps (N, 1, H, W) integer label values → loss targets.

        binary: (N, 1, H, W) float {0, 1}; classes: (N, H, W) int64 class indices in [0, K)
        (label values not among ``values`` count as background); regions: (N, R, H, W) float {0, 1}.
        """
        if self.kind == "binary":
            return (labels > 0).float()
        if self.kind == "classes":
            return self._lut(labels.device)[labels[:, 0].long()]
        return self.truth(labels).float()

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, out_channels, H, W) → float32 probabilities of the same shape in [0, 1]
        (softmax over channels for classes, sigmoid per channel otherwise)."""
        import torch
        logits = logits.float()
        return torch.softmax(logits, 1) if self.kind == "classes" else torch.sigmoid(logits)

    def hard(self, probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Probabilities (N, out_channels, H, W) → bool masks (N, len(names), H, W) of the scored channels:
        binary/regions ``p >= threshold``; classes the argmax's one-hot, foreground classes only."""
        import torch
        if self.kind == "classes":
            arg = probs.argmax(1, keepdim=True)
            return arg == torch.arange(1, len(self.values), device=probs.device).view(1, -1, 1, 1)
        return probs >= threshold

    def written(self, probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Probabilities (N, out_channels, H, W) → bool masks (N, len(names), H, W) as the label map of
        :meth:`to_labels` holds them: :meth:`hard`, but regions read back from the painted labels (a pixel
        painted with a smaller region's label counts in every region holding that label, so a child region
        predicted where its parent is not lies in the parent too). What ``toolkit evaluate`` scores, so that
        its figures are those of the label volumes ``toolkit predict`` writes."""
        if self.kind != "regions":
            return self.hard(probs, threshold)
        return self.truth(self.to_labels(probs, threshold)[:, None])

    def truth(self, labels: torch.Tensor) -> torch.Tensor:
        """Label maps (N, 1, H, W) → bool masks (N, len(names), H, W), channel for channel as :meth:`hard`."""
        import torch
        lab = labels.long()
        if self.kind == "binary":
            return lab > 0
        if self.kind == "classes":
            idx = self._lut(labels.device)[lab[:, 0]].unsqueeze(1)
            return idx == torch.arange(1, len(self.values), device=labels.device).view(1, -1, 1, 1)
        # each region's label values compared one by one (no host-to-device copy, which would wait for a GPU)
        return torch.cat([torch.stack([lab == v for v in r]).any(0) for r in self.regions], 1)

    def to_labels(self, probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """Probabilities (N, out_channels, H, W) → uint8 label maps (N, H, W) in the data's label values.

        binary: {0, 1}; classes: ``values[argmax]``; regions: painted largest region first (see the
        module docstring).
        """
        import torch
        if self.kind == "binary":
            return (probs[:, 0] >= threshold).to(torch.uint8)
        if self.kind == "classes":
            return torch.tensor(self.values, dtype=torch.uint8, device=probs.device)[probs.argmax(1)]
        return self.paint(probs >= threshold)

    def paint(self, masks: torch.Tensor) -> torch.Tensor:
        """Regions only: bool region masks (N, R, H, W) → uint8 label maps (N, H, W). A pixel whose regions are
        exactly those of a label value gets that value (the smallest, where labels share every region); any other
        combination (a child region without its parent) the value :meth:`paint_order` paints last there."""
        import torch
        out = torch.zeros(masks.shape[:1] + masks.shape[2:], dtype=torch.uint8, device=masks.device)
        for r, value in self.paint_order():
            out[masks[:, r]] = value
        for value, member in reversed(self.memberships()):  # the smallest value of a combination last
            out[(masks == torch.tensor(member, device=masks.device).view(1, -1, 1, 1)).all(1)] = value
        return out

    def memberships(self) -> list[tuple[int, tuple[bool, ...]]]:
        """Regions only: (label value, whether each region holds it) for every label value of a region, ascending."""
        values = sorted({v for r in self.regions for v in r})
        return [(v, tuple(v in r for r in self.regions)) for v in values]

    def foreground(self, probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Any-tumour views for figures: (probs (N, out, H, W), labels (N, 1, H, W)) → (float (N, 1, H, W)
        {0, 1} predicted tumour of any class/region, uint8 (N, 1, H, W) {0, 1} true tumour)."""
        import torch
        if self.kind == "binary":
            return probs, (labels > 0).to(torch.uint8)
        return (self.hard(probs, threshold).any(1, keepdim=True).float(),
                self.truth(labels).any(1, keepdim=True).to(torch.uint8))

    def paint_order(self) -> list[tuple[int, int]]:
        """Regions only: (region index, label value painted) from the largest region to the smallest."""
        order = sorted(range(len(self.regions)), key=lambda r: -len(self.regions[r]))
        out = []
        for k, r in enumerate(order):
            later = {v for q in order[k + 1:] for v in self.regions[q]}
            own = sorted(set(self.regions[r]) - later) or sorted(self.regions[r])
            out.append((r, own[0]))
        return out


def resolve_target(kind: str = "", *, labels: Mapping[str, int] | None = None,
                   regions: Mapping[str, Sequence[int]] | None = None, regions_text: str = "",
                   class_names: Sequence[str] | None = None) -> TargetSpec:
    """The target a run trains on.

    Args:
        kind: "binary", "classes", "regions" or "" (what the data declares: regions when it declares
            some, classes when it declares more than background and one label, else binary).
        labels: the data's ``{name: label value}`` (e.g. dataset.json ``labels``), None for binary data.
        regions: the data's ``{name: label values}`` (dataset.json ``regions``/``regions_brats``).
        regions_text: user regions (:func:`parse_regions` syntax) overriding ``regions``.
        class_names: classes taken from slice metadata (e.g. tumour types), label values 1..K in order.

    Raises ValueError saying what is missing (no labels or regions for that kind) or wrong in ``regions_text``
    (given with another target than regions, on binary data, or naming a label value the data do not declare).
    """
    if kind and kind not in TARGET_KINDS:
        raise ValueError(f"target must be '', {', '.join(TARGET_KINDS)}; got {kind!r}")
    if regions_text:
        regions = _user_regions(regions_text, kind, labels, class_names)
    if not kind:
        kind = ("regions" if regions else "classes" if class_names or (labels and len(labels) > 2)
                else "binary")
    if kind == "binary":
        return TargetSpec.binary()
    if kind == "regions":
        if not regions:
            raise ValueError("target regions: the data declare no regions (dataset.json 'regions' or "
                             "'regions_brats'); give them, e.g. --regions 'whole_tumour=1+2+3+4,enhancing_tumour=4'")
        return TargetSpec.regions_of(regions)
    if class_names:
        return TargetSpec.classes({"background": 0, **{n: i + 1 for i, n in enumerate(class_names)}})
    if not labels or len(labels) < 2:
        raise ValueError("target classes needs label maps with declared labels (dataset.json 'labels') or a "
                         "metadata column naming each slice's class (--class-column, e.g. tumour_type)")
    return TargetSpec.classes(labels)


def _user_regions(text: str, kind: str, labels: Mapping[str, int] | None,
                  class_names: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """``--regions`` parsed (:func:`parse_regions`) and checked against the target ``kind`` ("" or "regions") and
    the data's foreground labels (``labels`` values > 0, else 1..K of ``class_names``; data that declare none,
    such as BraTS case folders whose ``_seg`` files are label maps, are not checked); ValueError otherwise."""
    if kind not in ("", "regions"):
        raise ValueError(f"regions {text!r} given with target {kind!r}: --regions sets the channels of target "
                         "regions only; drop it, or use --target regions")
    valid = ({n: int(v) for n, v in labels.items() if int(v) > 0} if labels else
             {n: i + 1 for i, n in enumerate(class_names or ())})
    regions = parse_regions(text)
    if not valid:
        return regions
    listed = ", ".join(f"{v} ({n})" for n, v in sorted(valid.items(), key=lambda nv: nv[1]))
    for name, values in regions.items():
        bad = [v for v in values if v not in valid.values()]
        if bad:
            raise ValueError(f"regions: region {name!r} holds label value(s) {', '.join(map(str, bad))} that the "
                             f"data do not declare; valid labels: {listed}")
    return regions
