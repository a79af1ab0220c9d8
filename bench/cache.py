"""On-disk cache of decoded splits: each (list, size, filter, image files) is decoded once.

The key covers the list file's bytes, the target size and filter, and every image file's size
and modification time, so editing an image or a list invalidates the entry. Entries are
safetensors files written atomically (a crash leaves no partial entry).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from suites.images import decode_images
from suites.lists import ListEntry

CACHE_FORMAT = 1


def cache_key(entries: list[ListEntry], size: int, interpolation: str, crop: int | None = None) -> str:
    h = hashlib.sha256(f"v{CACHE_FORMAT}|{size}|{interpolation}|".encode())
    if crop is not None:
        h.update(f"crop{crop}|".encode())
    for e in entries:
        try:
            st = os.stat(e.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"  # decode_images will name the file; an entry is never written for it
        h.update(f"{e.path}|{e.label}|{stamp}\n".encode())
    return h.hexdigest()[:32]


def load_split(
    entries: list[ListEntry], size: int, interpolation: str, cache_dir: Path | None, crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images [N,3,H,W], int64 labels [N])``, from the cache when possible."""
    if cache_dir is None:
        return decode_images(entries, size, interpolation, crop)
    path = cache_dir / f"{cache_key(entries, size, interpolation, crop)}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            return tensors["images"], tensors["labels"]
        except Exception:
            path.unlink(missing_ok=True)  # a damaged entry is rebuilt, never trusted
    images, labels = decode_images(entries, size, interpolation, crop)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"images": images, "labels": labels}, str(tmp))
    os.replace(tmp, path)
    return images, labels
