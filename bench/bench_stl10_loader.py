"""STL-10 loading: the memory-mapped uint8 path against torchvision's ``STL10`` + ``ToTensor``.

    python bench/bench_stl10_loader.py                      # 20,000 fake unlabelled images in a temp dir
    python bench/bench_stl10_loader.py --images 5000 --workers 2 --out runs/bench/stl10_loader.json
    python bench/bench_stl10_loader.py --data-dir data/stl10   # the real binaries (2.7 GB unlabeled_X.bin)

Without ``--data-dir`` it writes ``--images`` random images in STL-10's real binary
layout (``stl10_binary/unlabeled_X.bin``, 27,648 bytes each) into a temporary folder
(removed afterwards). Both loaders then run in this process with the same DataLoader
settings (batch size, ``--workers`` worker processes, shuffling, persistent workers):

- throughput: images/s delivered by the DataLoader, after ``--warmup`` batches, as the
  median of ``--repeats`` timings of ``--batches`` batches each; the memory-mapped path
  is also timed with the uint8 → float normalisation done on this CPU (on a GPU machine
  that step runs on the device), and the DataLoader's own ceiling with the same settings
  is timed on a dataset that hands back a ready-made batch (no reading at all);
- memory: two processes at once (like two training processes on one machine), each
  reading every image once with ``num_workers=0``; resident memory per process from
  ``/proc/self/status`` and ``smaps_rollup``: RSS, its anonymous (private heap) and
  file-backed (page-cache pages of the memory map, shared between processes) parts,
  and PSS (shared pages divided among the processes that map them).

Prints a table and writes everything, with the machine's conditions, as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.checkpoint import save_json  # noqa: E402
from toolkit.data.batch_transforms import Normalize  # noqa: E402
from toolkit.data.stl10 import IMAGE_BYTES, STL10_CLASSES, STL10_MEAN, STL10_STD, STL10Memmap  # noqa: E402


def write_fake_unlabeled(root: Path, images: int, seed: int = 0) -> Path:
    """root/stl10_binary/unlabeled_X.bin with ``images`` random images (written in chunks), and class_names.txt."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(folder / "unlabeled_X.bin", "wb") as f:
        for start in range(0, images, 1000):
            f.write(rng.bytes(IMAGE_BYTES * min(1000, images - start)))
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return folder


def torchvision_dataset(root: Path):
    """torchvision's STL10 unlabelled split with ToTensor; its md5 check is skipped for fake files."""
    from torchvision.datasets import STL10
    from torchvision.transforms import ToTensor

    class Unchecked(STL10):
        def _check_integrity(self) -> bool:  # the fake files have no published md5; the real ones pass anyway
            return True

    return Unchecked(str(root), split="unlabeled", transform=ToTensor())


class ReadyBatches(torch.utils.data.Dataset):
    """The DataLoader's own ceiling: ``__getitems__`` hands back one ready-made uint8 batch (no reading, no copy)."""

    def __init__(self, length: int, batch_size: int) -> None:
        self.length = length
        self.batch = torch.zeros(batch_size, 3, 96, 96, dtype=torch.uint8)
        self.labels = torch.zeros(batch_size, dtype=torch.long)

    def __len__(self) -> int:
        return self.length

    def __getitems__(self, indices):
        return list(zip(self.batch[: len(indices)].unbind(0), self.labels[: len(indices)].unbind(0)))


def make_dataset(kind: str, root: Path, length: int = 0, batch_size: int = 256):
    if kind == "ceiling":
        return ReadyBatches(length, batch_size)
    return STL10Memmap(root, "unlabeled") if kind == "memmap" else torchvision_dataset(root)


def throughput(kind: str, root: Path, args, workers: int, normalise: bool = False) -> dict:
    """Images/s the DataLoader delivers: warm-up, then the median of ``repeats`` timings of ``batches`` batches."""
    start = time.perf_counter()
    dataset = make_dataset(kind, root, args.images_found, args.batch_size)
    init_s = time.perf_counter() - start
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    norm = Normalize(STL10_MEAN, STL10_STD)
    stream = _endless(loader)
    for _ in range(args.warmup):
        next(stream)
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.batches):
            images = next(stream)[0]
            if normalise:
                images = norm(images)
        rates.append(args.batches * args.batch_size / (time.perf_counter() - t0))
    del stream, loader
    return {"images_per_s": statistics.median(rates), "repeats": rates, "init_s": init_s,
            "batch_dtype": str(images.dtype), "batch_shape": list(images.shape)}


def _endless(loader):
    while True:
        yield from loader


def _memory() -> dict:
    """This process's resident memory in MiB: RSS, RssAnon, RssFile, RssShmem (status) and PSS, Shared (smaps_rollup)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty"):
                out[key] = int(value.split()[0]) / 1024
    return out


def _memory_worker(kind: str, root: str, batch_size: int, barrier, queue) -> None:
    torch.set_num_threads(1)
    dataset = make_dataset(kind, Path(root))
    seen = 0
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0):
        seen += images.shape[0]
    barrier.wait()  # both processes hold their data now
    queue.put({"pid": os.getpid(), "images_read": seen, **_memory()})
    barrier.wait()


def memory(kind: str, root: Path, batch_size: int, processes: int = 2) -> list[dict]:
    """Resident memory of ``processes`` processes that each read every image once, measured while all are alive."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_memory_worker, args=(kind, str(root), batch_size, barrier, queue), daemon=True)
             for _ in range(processes)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    return sorted(results, key=lambda r: r["pid"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="", help="folder holding stl10_binary/ (default: fake data in a temp dir)")
    parser.add_argument("--images", type=int, default=20_000, help="fake unlabelled images to write")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument("--workers", default="0,2", help="DataLoader worker processes, the same for both; a list "
                        "runs the comparison once per count")
    parser.add_argument("--warmup", type=int, default=10, help="batches before timing")
    parser.add_argument("--batches", type=int, default=30, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    parser.add_argument("--processes", type=int, default=2, help="processes in the memory measurement")
    parser.add_argument("--out", default="runs/bench/stl10_loader.json", help="JSON results file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still removes its temp folder
    workers = [int(w) for w in args.workers.split(",")]

    tmp = None
    if args.data_dir:
        root = Path(args.data_dir)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="stl10-bench-"))
        root = tmp
        write_fake_unlabeled(root, args.images)
    try:
        n = args.images_found = len(STL10Memmap(root, "unlabeled"))
        load_before = os.getloadavg()
        speed = {w: {"torchvision_totensor": throughput("torchvision", root, args, w),
                     "memmap_uint8": throughput("memmap", root, args, w),
                     "memmap_uint8_then_cpu_normalise": throughput("memmap", root, args, w, normalise=True),
                     "dataloader_ceiling_ready_batch": throughput("ceiling", root, args, w)}
                 for w in workers}
        mem = {kind: memory(kind, root, args.batch_size, args.processes) for kind in ("memmap", "torchvision")}
        load_after = os.getloadavg()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"STL-10 unlabelled, {n:,} images ({'fake' if tmp else root}), batch {args.batch_size}, "
          f"median of {args.repeats} x {args.batches} batches after {args.warmup} warm-up batches")
    print(f"{'loader':<40} {'workers':>7} {'images/s':>10} {'x torchvision':>14} {'init s':>8}")
    names = {"torchvision_totensor": "torchvision STL10 + ToTensor", "memmap_uint8": "memmap uint8 (normalise on device)",
             "memmap_uint8_then_cpu_normalise": "memmap uint8 + normalise on this CPU",
             "dataloader_ceiling_ready_batch": "DataLoader ceiling (ready batch)"}
    for w, rows in speed.items():
        base = rows["torchvision_totensor"]["images_per_s"]
        for key, r in rows.items():
            print(f"{names[key]:<40} {w:>7} {r['images_per_s']:>10,.0f} {r['images_per_s'] / base:>14.1f} "
                  f"{r['init_s']:>8.2f}")
    print(f"\nresident memory per process, {args.processes} processes at once, each after reading all {n:,} images "
          f"(MiB; file = page-cache pages of the map, shared)")
    print(f"{'loader':<14} {'pid':>8} {'RSS':>8} {'anon':>8} {'file':>8} {'PSS':>8} {'shared':>8}")
    for kind, procs in mem.items():
        for r in procs:
            shared = r.get("Shared_Clean", 0) + r.get("Shared_Dirty", 0)
            print(f"{kind:<14} {r['pid']:>8} {r['VmRSS']:>8.0f} {r['RssAnon']:>8.0f} {r['RssFile']:>8.0f} "
                  f"{r['Pss']:>8.0f} {shared:>8.0f}")
    result = {
        "images": n, "fake_data": tmp is not None, "batch_size": args.batch_size, "workers": workers,
        "warmup_batches": args.warmup, "batches_per_repeat": args.batches, "repeats": args.repeats,
        "throughput": {str(w): rows for w, rows in speed.items()},
        "speedup_memmap_vs_torchvision": {str(w): rows["memmap_uint8"]["images_per_s"]
                                          / rows["torchvision_totensor"]["images_per_s"] for w, rows in speed.items()},
        "memory_mib": mem, "memory_processes": args.processes,
        "conditions": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                       "nice": os.nice(0), "torch": torch.__version__, "python": platform.python_version(),
                       "machine": platform.machine()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    save_json(args.out, result)
    ratios = ", ".join(f"{r:.1f}x with {w} workers" for w, r in result["speedup_memmap_vs_torchvision"].items())
    print(f"\nmemmap vs torchvision: {ratios}; results in {args.out}")
    return result


if __name__ == "__main__":
    main()
