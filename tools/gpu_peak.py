"""Run a recipe and record its peak GPU memory (summary.json and history.json hold none).

    accelerate launch ... tools/gpu_peak.py recipes/brain_mri.py --epochs 3 ...

Runs the recipe script as ``__main__`` in this process (same arguments, same exit status) and, when it
ends, writes ``$GPU_PEAK_DIR/rank<RANK>.json`` = ``{"rank": int, "device": str, "max_memory_allocated_bytes":
int, "max_memory_reserved_bytes": int}`` from ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``
of this process's device (0 bytes without CUDA). Used by tools/gpu_check.sh.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def record_peak(folder: Path) -> Path:
    """Write this process's peak CUDA memory (bytes, int) to ``folder/rank<RANK>.json`` atomically."""
    import torch

    from toolkit.checkpoint import save_json

    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    return save_json(folder / f"rank{rank}.json", {
        "rank": rank, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated()) if cuda else 0,
        "max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved()) if cuda else 0})


def main() -> None:
    if len(sys.argv) < 2 or not Path(sys.argv[1]).is_file():
        sys.exit(f"gpu_peak.py: expected a recipe script as the first argument, got {sys.argv[1:2]}")
    folder = os.environ.get("GPU_PEAK_DIR")
    if not folder:
        sys.exit("gpu_peak.py: GPU_PEAK_DIR is not set (the folder for rank<k>.json)")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = str(Path(script).resolve().parent)
    sys.path.insert(1, str(ROOT))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        record_peak(Path(folder))


if __name__ == "__main__":
    main()
