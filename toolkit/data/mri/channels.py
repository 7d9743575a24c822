"""Which channels and slices of an MRI source to read: :func:`resolve_channels` and the slice rules.

Channel names per source are :data:`~toolkit.data.mri.io.CHANNEL_NAMES`; aliases (BraTS 2023
``t2f/t1n/t1c/t2w``, LGG ``pre-contrast``/``post-contrast``, ``r/g/b``) map onto them.
"""
from __future__ import annotations

import re

import numpy as np

from .io import CHANNEL_NAMES

__all__ = ["CHANNEL_ALIASES", "DEFAULT_CHANNEL", "SLICE_RULES", "channel_indices", "parse_slice_rule", "resolve_channels"]

#: The channel read when none is named, per source with more than one (folder: one grey channel).
DEFAULT_CHANNEL = {"lgg": "flair", "figshare_mat": "t1ce", "brats": "flair"}
#: Other names of channels → their name in ``CHANNEL_NAMES``.
CHANNEL_ALIASES = {"pre-contrast": "pre", "post-contrast": "post", "t2f": "flair", "t1n": "t1", "t1c": "t1ce",
                   "t2w": "t2", "r": "red", "g": "green", "b": "blue"}
#: ``slice_rule`` values for NIfTI volumes; "tumour+N" adds N tumour-free brain slices per case.
SLICE_RULES = ("all", "nonempty", "tumour", "tumour+N")


def resolve_channels(source: str, channels) -> tuple[int, ...]:
    """Resolve a ``channels`` choice (see :func:`~toolkit.data.mri.discover.discover_mri_slices`) to indices into
    ``CHANNEL_NAMES[source]``, e.g. ("lgg", "flair") → (1,), ("brats", "all") → (0, 1, 2, 3), ("lgg", 0) →
    (0, 1, 2) (0: what the data has; a folder: grey); () means one grey channel (folder only). Raises
    ValueError for an unknown or repeated channel."""
    names = CHANNEL_NAMES[source]
    default = () if source == "folder" else (names.index(DEFAULT_CHANNEL[source]),)
    if channels is None or (isinstance(channels, str) and channels.strip().lower() in ("", "default")):
        return default
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):  # a count, as in_channels
        if channels == 0:  # what the data has: every channel of a multi-channel source, grey for a folder
            return () if source == "folder" else tuple(range(len(names)))
        if channels in (1, len(names)):
            return default if channels == 1 else tuple(range(len(names)))
        raise ValueError(f"{source} images have {len(names)} channel(s) ({', '.join(names)}): a channel count "
                         f"must be 1 or {len(names)}, got {channels}; or name the channels")
    if isinstance(channels, str):
        text = channels.strip().lower()
        if text in ("all", "rgb"):
            return tuple(range(len(names)))
        if text in ("grey", "gray"):
            if source == "folder":
                return ()
            raise ValueError(f"channels='grey' is for image folders; name the {source} channels: {', '.join(names)}")
        channels = [t.strip() for t in text.split(",") if t.strip()]
    return channel_indices(channels, names, f"{source} data", CHANNEL_ALIASES)


def channel_indices(items, names, what: str, aliases=None) -> tuple[int, ...]:
    """Channel names (case-insensitive, ``aliases`` mapping other names onto ``names``) or indices → indices
    into ``names``; ``what`` names the data in errors. Raises ValueError for an unknown or repeated channel."""
    lower = [n.lower() for n in names]
    out = []
    for item in items:
        if isinstance(item, (int, np.integer)) or str(item).isdigit():
            k = int(item)
        else:
            name = (aliases or {}).get(str(item).lower(), str(item).lower())
            k = lower.index(name) if name in lower else -1
        if not 0 <= k < len(names):
            raise ValueError(f"unknown channel {item!r} for {what}; its channels are "
                             f"{', '.join(f'{i}={n}' for i, n in enumerate(names))}, or 'all'")
        out.append(k)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"channels must name distinct channels, got {items!r}")
    return tuple(out)


def parse_slice_rule(rule: str | None) -> tuple[str, int]:
    """A ``slice_rule`` (see :data:`SLICE_RULES`; None = "nonempty", "tumor" = "tumour") as (rule, N):
    "tumour+3" → ("tumour", 3), "all" → ("all", 0). Raises ValueError for another value."""
    rule = (rule or "nonempty").strip().lower().replace("tumor", "tumour")
    m = re.fullmatch(r"(all|nonempty|tumour)(?:\+(\d+))?", rule)
    if not m or (m.group(2) and m.group(1) != "tumour"):
        raise ValueError(f"slice_rule must be one of {', '.join(SLICE_RULES)} (N an integer), got {rule!r}")
    return m.group(1), int(m.group(2) or 0)
