"""The comparison file: one table of results that any recipe or compare script can write and
`toolkit report` renders without knowing where it came from.

A comparison file is JSON named ``comparison.json`` or ``<name>.comparison.json`` (directly
in the runs folder, or ``comparison.json`` in a run folder)::

    {
      "format": "toolkit.comparison/1",
      "title": "Autoencoders",
      "columns": [                                       # in table order
        {"key": "model", "label": "model"},              # label defaults to key, better to "none"
        {"key": "run", "label": "run", "link": true},    # values are run folder names: linked in the report
        {"key": "mse", "label": "MSE", "unit": null, "better": "lower", "format": ".4f"},
        {"key": "psnr", "label": "PSNR", "unit": "dB", "better": "higher", "format": ".2f"}
      ],
      "rows": [{"model": "linear", "run": "ae-linear-1", "mse": 0.0189, "psnr": 17.2}, ...],
      "baseline": 2,                                     # index into rows, or null
      "notes": ["Test set (10,000 images)."]             # optional free text
    }

Cells are strings, numbers, booleans or null (missing); a row may leave a column out.
``better`` is ``"higher"``, ``"lower"`` or ``"none"``; ``format`` is a Python format spec
(``",", ".4f"``) used by :meth:`Comparison.to_markdown`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write

__all__ = ["FORMAT", "BETTER", "Column", "Comparison", "ComparisonError", "best_rows"]

FORMAT = "toolkit.comparison/1"
BETTER = ("higher", "lower", "none")
CELL_TYPES = (str, int, float, bool, type(None))


class ComparisonError(ValueError):
    """A comparison file or object that does not follow the format; the message names the field."""


@dataclass
class Column:
    key: str
    label: str | None = None
    unit: str | None = None
    better: str = "none"
    format: str | None = None
    link: bool = False

    @property
    def heading(self) -> str:
        label = self.label or self.key
        return f"{label} ({self.unit})" if self.unit else label


@dataclass
class Comparison:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]]
    baseline: int | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.columns = [c if isinstance(c, Column) else _column(c, i, "<object>") for i, c in enumerate(self.columns)]
        self.validate()

    def validate(self, where: str = "<object>") -> None:
        """Raise :class:`ComparisonError` naming ``where`` and the first bad field."""
        def bad(name: str, value: Any, expected: str) -> ComparisonError:
            return ComparisonError(f"{where}: field {name} is {value!r}, expected {expected}")

        if not isinstance(self.title, str) or not self.title:
            raise bad("title", self.title, "a non-empty string")
        if not self.columns:
            raise bad("columns", self.columns, "a non-empty list of columns")
        keys = [c.key for c in self.columns]
        for i, col in enumerate(self.columns):
            if not isinstance(col.key, str) or not col.key:
                raise bad(f"columns[{i}].key", col.key, "a non-empty string")
            if keys.index(col.key) != i:
                raise bad(f"columns[{i}].key", col.key, "a key no other column has")
            if col.better not in BETTER:
                raise bad(f"columns[{i}].better", col.better, "one of " + ", ".join(map(repr, BETTER)))
            for name in ("label", "unit", "format"):
                if not isinstance(getattr(col, name), (str, type(None))):
                    raise bad(f"columns[{i}].{name}", getattr(col, name), "a string or null")
            if not isinstance(col.link, bool):
                raise bad(f"columns[{i}].link", col.link, "true or false")
        if not isinstance(self.rows, list):
            raise bad("rows", self.rows, "a list of objects")
        for r, row in enumerate(self.rows):
            if not isinstance(row, dict):
                raise bad(f"rows[{r}]", row, "an object mapping column keys to cells")
            for key, cell in row.items():
                if key not in keys:
                    raise bad(f"rows[{r}].{key}", cell, "only the column keys " + ", ".join(keys))
                if not isinstance(cell, CELL_TYPES):
                    raise bad(f"rows[{r}].{key}", cell, "a string, number, boolean or null")
        if self.baseline is not None and (isinstance(self.baseline, bool) or not isinstance(self.baseline, int)
                                          or not 0 <= self.baseline < len(self.rows)):
            raise bad("baseline", self.baseline, f"null or a row index from 0 to {len(self.rows) - 1}")
        if not isinstance(self.notes, list) or not all(isinstance(n, str) for n in self.notes):
            raise bad("notes", self.notes, "a list of strings")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "title": self.title, "columns": [asdict(c) for c in self.columns],
                "rows": self.rows, "baseline": self.baseline, "notes": self.notes}

    def save(self, path: str | Path) -> Path:
        """Write the comparison as indented JSON, atomically; return the path."""
        self.validate()
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        return atomic_write(path, lambda f: f.write(text + "\n"), mode="w")

    @classmethod
    def load(cls, path: str | Path) -> "Comparison":
        """Read and check a comparison file. Raises :class:`ComparisonError` naming the file and the bad field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ComparisonError(f"{path}: not readable as JSON ({err})") from err
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "<object>") -> "Comparison":
        if not isinstance(data, dict):
            raise ComparisonError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise ComparisonError(f"{where}: field format is {data['format']!r}, expected {FORMAT!r}")
        unknown = set(data) - {"format", "title", "columns", "rows", "baseline", "notes"}
        if unknown:
            raise ComparisonError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; expected format, title, "
                                  "columns, rows, baseline, notes")
        for name in ("title", "columns", "rows"):
            if name not in data:
                raise ComparisonError(f"{where}: field {name} is missing")
        if not isinstance(data["columns"], list):
            raise ComparisonError(f"{where}: field columns is {data['columns']!r}, expected a list of columns")
        columns = [_column(c, i, where) for i, c in enumerate(data["columns"])]
        comparison = cls.__new__(cls)  # skip __post_init__ so that validate() names the file
        comparison.title, comparison.columns, comparison.rows = data["title"], columns, data["rows"]
        comparison.baseline, comparison.notes = data.get("baseline"), data.get("notes", [])
        comparison.validate(where)
        return comparison

    def cell_text(self, column: Column, value: Any) -> str:
        """A cell as text: '–' when missing, numbers with the column's format spec."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if column.format and isinstance(value, (int, float)) and not isinstance(value, bool):
            return format(value, column.format)
        return str(value)

    def to_markdown(self) -> str:
        """The table in Markdown (numeric columns right-aligned); the notes are not included."""
        numeric = [any(_is_number(row.get(c.key)) for row in self.rows) for c in self.columns]
        lines = ["| " + " | ".join(c.heading for c in self.columns) + " |",
                 "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(self.cell_text(c, row.get(c.key)) for c in self.columns) + " |")
        return "\n".join(lines)


def _column(data: Any, i: int, where: str) -> Column:
    if not isinstance(data, dict):
        raise ComparisonError(f"{where}: field columns[{i}] is {data!r}, expected an object with a key")
    allowed = {"key", "label", "unit", "better", "format", "link"}
    unknown = set(data) - allowed
    if unknown:
        raise ComparisonError(f"{where}: field columns[{i}] has unknown field(s) {', '.join(sorted(unknown))}; "
                              f"expected {', '.join(sorted(allowed))}")
    if "key" not in data:
        raise ComparisonError(f"{where}: field columns[{i}].key is missing")
    return Column(**{k: v for k, v in data.items() if not (k in ("better", "link") and v is None)})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_rows(comparison: Comparison, column: Column) -> set[int]:
    """Indices of the rows holding the best value of ``column`` (empty when better is "none" or no numbers)."""
    if column.better == "none":
        return set()
    values = {i: row.get(column.key) for i, row in enumerate(comparison.rows) if _is_number(row.get(column.key))}
    if not values:
        return set()
    best = (max if column.better == "higher" else min)(values.values())
    return {i for i, v in values.items() if v == best}
