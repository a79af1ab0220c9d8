"""How a worker gets a task's decoded splits: Ray's object store against the image cache on disk.

A worker needs the uint8 splits of its run's task. Two routes were candidates for the Ray
executor: the driver puts the arrays in Ray's object store (what bench does), or every worker
reads the driver's image cache (a safetensors file per split) from a filesystem they share. This
script times, inside a Ray worker on the driver's node, what each route costs a run: ``ray.get``
of the arrays, against ``bench.cache.load_split`` of the same split (a cache hit: the file is
in the page cache after the first read, as it would be on a warm shared filesystem at best).

    PYTHONPATH=$PWD python benchmarks/data_route.py --out benchmarks/results_data_route_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch

from bench.cache import load_split
from bench.speed import synthetic_images, write_jpegs
from suites.lists import ListEntry


def _entries(folder: Path, n: int, size: int) -> list[ListEntry]:
    paths = write_jpegs(synthetic_images(n, size, seed=0), folder, "i")
    return [ListEntry(path=p, label=i % 10, source=f"generated:{i + 1}") for i, p in enumerate(paths)]


@ray.remote(num_cpus=1)
def from_object_store(arrays: tuple, repeats: int) -> float:
    import numpy as np

    t0 = time.perf_counter()
    for _ in range(repeats):
        images, labels = arrays
        _ = int(np.asarray(images).sum(dtype=np.int64))  # read every byte: a view alone costs nothing
    return (time.perf_counter() - t0) / repeats


@ray.remote(num_cpus=1)
def from_cache_file(entries: list, size: int, cache_dir: str, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        images, labels = load_split(entries, size, "bicubic", Path(cache_dir))
        _ = int(images.sum(dtype=torch.int64))  # read every byte, as training does
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the split (realmini test: 2,000)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-route-") as tmp:
        entries = _entries(Path(tmp) / "images", args.images, args.size)
        cache = Path(tmp) / "cache"
        t0 = time.perf_counter()
        images, labels = load_split(entries, args.size, "bicubic", cache)  # decode once, fill the cache
        decode_s = time.perf_counter() - t0
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=2 * images.nbytes)
        try:
            t0 = time.perf_counter()
            ref = ray.put((images.numpy(), labels.numpy()))
            put_s = time.perf_counter() - t0
            store = ray.get(from_object_store.remote(ref, args.repeats))
            disk = ray.get(from_cache_file.remote(entries, args.size, str(cache), args.repeats))
        finally:
            ray.shutdown()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": f"python benchmarks/data_route.py --images {args.images} --size {args.size}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "split_mb": round(images.nbytes / 2**20, 1),
        "decode_s_once": round(decode_s, 2),
        "object_store_put_s_once_per_task": round(put_s, 3),
        "per_run_s": {"object_store_get": round(store, 4), "cache_file_load": round(disk, 4)},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
