"""Timing helpers shared by the benchmarks: warm-up, interleaved repeats, medians, result rows.

This machine is noisy (other processes, a shared 2-core VM), so a figure is never an
absolute time alone: each benchmark times a baseline and its candidates in the same run,
with the repeats interleaved (repeat r runs the variants in an order rotated by r, so a
slow spell hits every variant alike) and reports the median of each and the ratio
candidate / baseline.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

__all__ = ["Row", "interleaved", "median", "machine_info", "Timer"]


@dataclass
class Row:
    """One table line: ``value`` of ``candidate`` in ``unit``, and ``ratio`` to the ``baseline`` measured beside it.

    ``ratio`` > 1 means more of ``unit`` than the baseline (for images/s: faster; for s: slower).
    """

    section: str
    name: str
    candidate: str
    baseline: str
    value: float
    baseline_value: float
    unit: str
    ratio: float
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def median(xs) -> float:
    return float(statistics.median(xs))


def interleaved(variants: dict[str, Callable[[], float | None]], warmup: int = 1,
                repeats: int = 5) -> dict[str, list[float]]:
    """Run every variant ``warmup`` times (untimed), then ``repeats`` times each, interleaved.

    A variant is a zero-argument callable doing one repeat's work; it may return the seconds
    it measured itself (e.g. a training loop's own clock, leaving out set-up), else the wall
    time of the call counts. Returns ``{name: [seconds of each repeat]}``.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            own = variants[name]()
            times[name].append(float(own) if own is not None else time.perf_counter() - start)
    return times


class Timer:
    """``with Timer() as t: ...`` then ``t.s`` holds the seconds elapsed."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.s = time.perf_counter() - self.start


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"})
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU model, core count, bf16-relevant CPU flags, GPU, library versions and the load average now."""
    return {
        "cpu_model": _cpu_model(), "cpus": os.cpu_count(), "cpu_flags": _cpu_flags(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "loadavg": list(os.getloadavg()),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def finite_positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
