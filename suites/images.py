"""Decoding a list of images into one uint8 tensor at the preset's size.

Each split is decoded once (the runner caches the result on disk), so the training loop never
touches JPEGs. Resizing is PIL's, straight to (size, size) with the preset's filter: the
"direct resize" of the NOAH lineage. With ``crop`` the resized image is then centre-cropped to
(crop, crop): the few-shot evaluation transform, ``Resize((256, 256))`` + ``CenterCrop(224)``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import DataError
from .lists import ListEntry, check_regular_file

_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def _load(entry: ListEntry, size: int, resample: Image.Resampling, crop: int | None = None) -> np.ndarray:
    check_regular_file(entry)
    try:
        with Image.open(entry.path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), resample)
            if crop is not None and crop < size:
                off = int(round((size - crop) / 2.0))  # torchvision CenterCrop's offset
                img = img.crop((off, off, off + crop, off + crop))
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(
            f"{entry.source}: image {entry.path} does not exist; restore the file or delete its line"
        ) from None
    except Image.DecompressionBombError as exc:  # PIL refuses it before decoding; so does bench
        raise DataError(
            f"{entry.source}: image {entry.path} is too large to decode safely ({exc}); "
            "downscale the file or delete its line"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{entry.source}: image {entry.path} cannot be read ({exc}); replace the file or delete its line"
        ) from None


def decode_images(
    entries: list[ListEntry], size: int, interpolation: str = "bicubic", crop: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, 3, S, S], labels int64 [N])`` in list order; S is ``crop`` or ``size``."""
    if interpolation not in _FILTERS:
        raise DataError(f"interpolation {interpolation!r} is not supported; use one of {', '.join(_FILTERS)}")
    resample = _FILTERS[interpolation]
    side = crop if crop is not None and crop < size else size
    images = _allocate(entries, side)
    slots = images.numpy()  # the same memory

    def fill(i: int) -> None:  # each image goes straight into its slot: no second copy of the split
        slots[i] = _load(entries[i], size, resample, crop).transpose(2, 0, 1)

    workers = min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        list(pool.map(fill, range(len(entries))))
    labels = torch.tensor([e.label for e in entries], dtype=torch.int64)
    return images, labels


def _allocate(entries: list[ListEntry], side: int) -> torch.Tensor:
    """The uint8 tensor a split decodes into, refused in one line when it cannot fit in memory."""
    need = len(entries) * 3 * side * side
    available = _available_memory()
    lists = sorted({e.source.rsplit(":", 1)[0] for e in entries[:1] + entries[-1:]})
    if need > available:
        raise DataError(
            f"{' and '.join(lists)}: {len(entries)} images at {side}x{side} px need {need / 2**30:.1f} GiB decoded, "
            f"more than the {available / 2**30:.1f} GiB of memory available; use a shorter list or a smaller image size"
        )
    try:
        return torch.empty((len(entries), 3, side, side), dtype=torch.uint8)
    except RuntimeError as exc:  # the allocator's own refusal, for memory psutil did not see as taken
        raise DataError(
            f"{' and '.join(lists)}: {len(entries)} images at {side}x{side} px ({need / 2**30:.1f} GiB decoded) "
            f"cannot be allocated ({' '.join(str(exc).split())[:120]}); use a shorter list or a smaller image size"
        ) from None


def _available_memory() -> int:
    """Bytes of memory a new allocation can take without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)
