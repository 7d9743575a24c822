"""Per-slice metadata of a folder layout: ``metadata.csv`` beside ``images/`` (``id,patient_id[,…]``).

The figshare brain-tumour folders ship one: each slice's patient and tumour type. Patient
ids are grouped by :func:`patient_group` (the grouping rule below), so that every split,
fold and hold-out keeps one person's slices on one side. Columns other than ``id`` and
``patient_id`` are kept as slice attributes (e.g. ``tumour_type``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import DataError

__all__ = ["METADATA_FILE", "patient_group", "read_metadata"]

METADATA_FILE = "metadata.csv"
_TRAILING_LETTERS = re.compile(r"(?<=\d)[A-Za-z]+$")


def patient_group(patient_id: str) -> str:
    """The person a patient id belongs to: the id without letters that trail its last digit.

    Figshare stores some patients under several ids that differ only by such letters
    (``MR024780B``, ``MR024780D``: one person), as the data's own README says. ``"100360"`` and
    ``"MR024780"`` stay as they are; an id with no digit (``"anon"``) is kept whole.
    """
    patient_id = str(patient_id).strip()
    return _TRAILING_LETTERS.sub("", patient_id) or patient_id


def read_metadata(folder: str | Path) -> dict[str, dict[str, str]] | None:
    """``id → {column: value}`` of ``folder/metadata.csv`` (None when the folder has none).

    ``patient_id`` values are grouped with :func:`patient_group` (the raw value stays in
    ``patient_id_raw``). Raises :class:`~toolkit.data.errors.DataError` naming the file and
    the problem: not UTF-8 text, no ``id`` column, a column named twice or not named, a row with another
    number of fields, an empty or duplicate id.
    """
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); save it "
                        "as UTF-8 CSV") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err})") from None
    if not rows or "id" not in [c.strip() for c in rows[0]]:
        raise DataError(f"{path}: the first line must name the columns, with an 'id' column "
                        f"(e.g. 'id,patient_id,tumour_type'); got {rows[0] if rows else 'an empty file'}")
    header = [c.strip() for c in rows[0]]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice or "" in header:
        problem = f"column {twice[0]!r} is named twice" if twice else f"column {header.index('') + 1} has no name"
        raise DataError(f"{path}: {problem} in the first line {header}; every column needs its own name")
    out: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)} ({header})")
        entry = {k: v.strip() for k, v in zip(header, row)}
        key = entry.pop("id")
        if not key:
            raise DataError(f"{path}: line {line} has an empty id; every row names an image id")
        if key in out:
            raise DataError(f"{path}: id {key!r} appears twice (line {line})")
        if entry.get("patient_id"):
            entry["patient_id_raw"] = entry["patient_id"]
            entry["patient_id"] = patient_group(entry["patient_id"])
        out[key] = entry
    return out
