"""``bench speed``: bench's own run path against a reference-style loop, measured in one process.

For each method two loops train the same method on the same randomly initialised backbone, with
the same batch size, number of steps and images:

* **ours** is exactly the code path of a real run: :func:`bench.train.train_run` on uint8 images
  already at the target size (what the split cache holds), with the same preset fields a VTAB-1K
  run uses. Training images/s counts only the epochs after the first, which is the warm-up (CUDA
  kernel selection, and compilation where train_run compiles). Evaluation images/s and peak memory
  are the figures train_run reports to tracking: the merged model where the method can merge,
  timed once, cold, as in a run.
* **reference** is written the way the published VTAB-1K code is (NOAH, PETL-ViT, FacT): fp32 (no
  autocast, full-precision matmuls), the images stored once as JPEG files, a torch ``DataLoader``
  over a ``Dataset`` that opens and decodes every file with PIL on every read, then
  torchvision's Resize, ToTensor and Normalize; ``shuffle``, ``drop_last``, ``pin_memory`` on CUDA,
  ``num_workers`` workers started anew each epoch; plain (non-fused) AdamW, eager; the loss read
  every step, as timm's ``train_one_epoch`` does; evaluation of the **unmerged** model at batch 256
  through the same kind of loader. Its training images/s also counts the epochs after the first.

Throughput depends on the machine far more than on anything here, so the figure that means
something is the ratio of the two, measured in one process. Nothing in this module
imports MLflow or Optuna: it runs on a bare GPU machine with torch, timm and peft.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from methods.base import available_methods, get_method, make_config
from suites.base import STAGES
from suites.vtab1k import VTAB1K_PRESET

from .backbone import RANDOM_BACKBONE_SEED, Weights, backbone_spec, build_backbone, create_backbone, normalization
from .errors import BenchError
from .train import SplitData, train_run

NUM_CLASSES = 100  # VTAB-1K's largest common head size is 100 (cifar); speed hardly depends on it
WARMUP_EPOCHS = 1  # excluded from training images/s, in both loops
TIMED_EPOCHS = 1
REFERENCE_EVAL_BATCH = 256  # the published test loaders' batch size
RANDOM_WEIGHTS = Weights(None, f"random-init:seed{RANDOM_BACKBONE_SEED}")  # speed does not depend on weights


@dataclass(frozen=True)
class SpeedDefaults:
    backbone: str
    batch_size: int
    steps: int
    eval_images: int
    workers: int


# On a GPU: the field's VTAB-1K setting (ViT-B/16 at 224, batch 64, 4 loader workers like the
# published code). On a CPU: the demo's tiny ViT, so that CI measures both loops in seconds.
DEFAULTS = {
    "cuda": SpeedDefaults("vit_base_patch16_224", batch_size=64, steps=50, eval_images=4096, workers=4),
    "cpu": SpeedDefaults("vit_demo_tiny", batch_size=8, steps=5, eval_images=64, workers=0),
}


@dataclass
class SpeedConfig:
    methods: list[str] = field(default_factory=list)  # empty: every registered method
    backbone: str | None = None
    batch_size: int | None = None
    steps: int | None = None  # timed training steps per loop, after as many warm-up steps
    img_size: int | None = None  # default: the backbone's own input size
    eval_images: int | None = None
    device: str = "auto"
    workers: int | None = None  # DataLoader workers of the reference loop
    reference: bool = True

    def resolved(self) -> SpeedConfig:
        """Every default filled in for the device, and every value checked before anything runs."""
        device = _resolve_device(self.device)
        d = DEFAULTS[device.type]
        names = self.methods or list(available_methods())
        for name in names:
            get_method(name)  # an unknown name fails here, in one line, before any measurement
        backbone = self.backbone or d.backbone
        img_size = _native_img_size(backbone) if self.img_size is None else self.img_size
        try:
            backbone_spec(backbone, img_size)
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"backbone {backbone!r} cannot be built at --img-size {img_size} ({exc})") from None
        cfg = SpeedConfig(
            methods=names,
            backbone=backbone,
            batch_size=d.batch_size if self.batch_size is None else self.batch_size,
            steps=d.steps if self.steps is None else self.steps,
            img_size=img_size,
            eval_images=d.eval_images if self.eval_images is None else self.eval_images,
            device=str(device),
            workers=d.workers if self.workers is None else self.workers,
            reference=self.reference,
        )
        for label, value, low in (
            ("--batch-size", cfg.batch_size, 1),
            ("--steps", cfg.steps, 1),
            ("--eval-images", cfg.eval_images, 1),
            ("--workers", cfg.workers, 0),
        ):
            if value < low:
                raise BenchError(f"{label} {value} must be at least {low}")
        return cfg

    def command(self) -> str:
        """The ``bench speed`` command line that reproduces these settings."""
        args = ["bench", "speed", "--methods", ",".join(self.methods), "--backbone", str(self.backbone)]
        args += ["--batch-size", str(self.batch_size), "--steps", str(self.steps), "--img-size", str(self.img_size)]
        args += ["--eval-images", str(self.eval_images), "--device", str(self.device), "--workers", str(self.workers)]
        if not self.reference:
            args.append("--no-reference")
        return shlex.join(args)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name} was asked for but no CUDA device is visible; use --device cpu")
    return device


def _native_img_size(backbone: str) -> int:
    with torch.device("meta"):
        model = create_backbone(backbone, num_classes=0)
    return int(model.patch_embed.img_size[0])


def speed_preset(batch_size: int, img_size: int):
    """The VTAB-1K preset (optimiser, schedule shape, drop-path) cut to one warm-up and one timed epoch."""
    return VTAB1K_PRESET.with_overrides(
        name="speed",
        img_size=img_size,
        batch_size=batch_size,
        epochs=WARMUP_EPOCHS + TIMED_EPOCHS,
        warmup_epochs=WARMUP_EPOCHS,
    )


# ---------------------------------------------------------------------------------------
# Synthetic images


def synthetic_images(n: int, size: int, seed: int) -> torch.Tensor:
    """uint8 [n, 3, size, size] images with photo-like statistics: smooth colour fields plus grain.

    Pure noise would make JPEGs several times larger and slower to decode than photos, which would
    slow the reference loop unfairly; these compress to about what photos of that size do (13 KB at
    224 px; the mean file size is reported).
    """
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, 256):
        m = min(256, n - start)
        low = torch.rand(m, 3, 16, 16, generator=g) * 255
        smooth = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
        grain = torch.randn(m, 3, size, size, generator=g) * 14
        out[start : start + m] = (smooth + grain).clamp_(0, 255).to(torch.uint8)
    return out


def write_jpegs(images: torch.Tensor, folder: Path, prefix: str) -> list[Path]:
    """Each image as a JPEG file (PIL's default quality 75), written once, in parallel threads."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
    paths = [folder / f"{prefix}{i:06d}.jpg" for i in range(len(arrays))]

    def save(i: int) -> None:
        Image.fromarray(arrays[i]).save(paths[i], format="JPEG")

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(save, range(len(paths))))
    return paths


# ---------------------------------------------------------------------------------------
# The reference-style loop


class JpegFileList(Dataset):
    """The published loaders' dataset (NOAH's ``ImageFilelist``): (path, label) pairs, every read
    opening and decoding the file again. ``decoded`` counts reads across loader worker processes."""

    def __init__(self, items: list[tuple[Path, int]], transform: Any, decoded: Any = None):
        self.items = items
        self.transform = transform
        self.decoded = decoded

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        img = open_image(path)
        if self.decoded is not None:
            with self.decoded.get_lock():
                self.decoded.value += 1
        return self.transform(img), label


def open_image(path: Path) -> Image.Image:
    """``torchvision.datasets.folder.pil_loader``, which the published datasets use."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def reference_transform(img_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class _Fp32Matmuls:
    """Full fp32 matmuls (PyTorch's default) while the reference runs, whatever bench set globally."""

    def __enter__(self) -> None:
        self.previous = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc: object) -> None:
        torch.set_float32_matmul_precision(self.previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(name: str, cfg: SpeedConfig):
    method = get_method(name)
    model = build_backbone(
        cfg.backbone,
        num_classes=NUM_CLASSES,
        img_size=cfg.img_size,
        drop_path=VTAB1K_PRESET.drop_path,
        weights=RANDOM_WEIGHTS,
        seed=0,
    )
    mean, std = normalization(model)
    return method, method.apply(model, make_config(method)), mean, std


def measure_reference(
    name: str,
    cfg: SpeedConfig,
    train_items: list[tuple[Path, int]],
    eval_items: list[tuple[Path, int]],
) -> dict[str, Any]:
    device = torch.device(cfg.device)
    _, model, mean, std = _build(name, cfg)
    model.to(device)
    transform = reference_transform(cfg.img_size, mean, std)
    decoded = multiprocessing.Value("q", 0)
    loader_args = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(
        JpegFileList(train_items, transform, decoded),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
        **loader_args,
    )
    eval_loader = DataLoader(
        JpegFileList(eval_items, transform, decoded), batch_size=REFERENCE_EVAL_BATCH, shuffle=False, **loader_args
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=VTAB1K_PRESET.lr, weight_decay=VTAB1K_PRESET.weight_decay)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    epoch_seconds = []
    with _Fp32Matmuls():
        for _ in range(WARMUP_EPOCHS + TIMED_EPOCHS):
            model.train()
            t0 = time.perf_counter()
            for x, y in train_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()  # timm's train_one_epoch logs the loss of every step
            _sync(device)
            epoch_seconds.append(time.perf_counter() - t0)
        model.eval()
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            preds = [model(x.to(device, non_blocking=True)).argmax(dim=1) for x, _ in eval_loader]
            torch.cat(preds).cpu()
        _sync(device)
        eval_seconds = time.perf_counter() - t0
    timed = epoch_seconds[WARMUP_EPOCHS:]
    n_train = len(train_loader) * cfg.batch_size
    return {
        "train_images_per_s": n_train * len(timed) / sum(timed),
        "eval_images_per_s": len(eval_items) / eval_seconds,
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "warmup_s": sum(epoch_seconds[:WARMUP_EPOCHS]),
        "files_decoded": int(decoded.value),
        "merged_eval": False,
    }


# ---------------------------------------------------------------------------------------
# Our path: train_run itself


def measure_ours(name: str, cfg: SpeedConfig, train: SplitData, evaluate: SplitData) -> dict[str, Any]:
    from .sysmetrics import GPU_UTILIZATION, SystemSampler

    device = torch.device(cfg.device)
    method, model, mean, std = _build(name, cfg)
    with SystemSampler(device, interval=0.2) as sampler:  # the GPU's utilisation (nvidia-ml-py), if any

        def sample(metrics) -> None:
            metrics.system = sampler.take()

        result = train_run(
            model,
            method,
            speed_preset(cfg.batch_size, cfg.img_size),
            STAGES["final"],
            train,
            evaluate,
            seed=0,
            device=device,
            mean=mean,
            std=std,
            on_epoch=sample,
        )
    timed = result.epochs[WARMUP_EPOCHS:]
    utilization = [e.system[GPU_UTILIZATION] for e in timed if GPU_UTILIZATION in e.system]
    return {
        "train_images_per_s": len(train) * len(timed) / sum(e.seconds for e in timed),
        "eval_images_per_s": result.infer_images_per_s,
        "peak_memory_mb": result.peak_memory_mb,
        "warmup_s": sum(e.seconds for e in result.epochs[:WARMUP_EPOCHS]),
        "logged_train_images_per_s": result.train_images_per_s,  # what a run logs: warm-up included
        "merged_eval": result.merged,
        "trainable_params": result.trainable_params,
        # mean GPU utilisation over the timed epochs; None without a GPU or nvidia-ml-py
        "gpu_utilization": sum(utilization) / len(utilization) if utilization else None,
    }


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "torch._dynamo" in sys.modules:  # only if something compiled: importing dynamo costs seconds
        torch._dynamo.reset()  # compiled graphs of one method must not be reused by the next


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def run_speed(config: SpeedConfig, progress: Any = None) -> dict[str, Any]:
    """Measure every method on both paths; returns what ``--json`` prints."""
    cfg = config.resolved()
    device = torch.device(cfg.device)
    say = progress or (lambda text: None)
    n_train = cfg.steps * cfg.batch_size
    train_images = synthetic_images(n_train, cfg.img_size, seed=1)
    eval_images = synthetic_images(cfg.eval_images, cfg.img_size, seed=2)
    labels = torch.Generator().manual_seed(3)
    train = SplitData(train_images, torch.randint(0, NUM_CLASSES, (n_train,), generator=labels))
    evaluate = SplitData(eval_images, torch.randint(0, NUM_CLASSES, (cfg.eval_images,), generator=labels))

    report: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": cfg.backbone,
        "weights": "random init (speed does not depend on the weights)",
        "img_size": cfg.img_size,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "warmup_steps": cfg.steps * WARMUP_EPOCHS,
        "train_images": n_train,
        "eval_images": cfg.eval_images,
        "reference_workers": cfg.workers if cfg.reference else None,
        "command": cfg.command(),
        "methods": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp:
        train_items: list[tuple[Path, int]] = []
        eval_items: list[tuple[Path, int]] = []
        if cfg.reference:
            say(f"writing {n_train + cfg.eval_images} JPEG files for the reference loop")
            train_paths = write_jpegs(train_images, Path(tmp) / "train", "t")
            eval_paths = write_jpegs(eval_images, Path(tmp) / "eval", "e")
            train_items = list(zip(train_paths, train.labels.tolist(), strict=True))
            eval_items = list(zip(eval_paths, evaluate.labels.tolist(), strict=True))
            sizes = [p.stat().st_size for p in train_paths]
            report["reference_jpeg_kb"] = round(sum(sizes) / len(sizes) / 1024, 1)
        for name in cfg.methods:
            say(f"{name}: our path (train_run)")
            ours = measure_ours(name, cfg, train, evaluate)
            _free(device)
            ref = None
            if cfg.reference:
                say(f"{name}: reference-style loop")
                ref = measure_reference(name, cfg, train_items, eval_items)
                _free(device)
            row: dict[str, Any] = {"method": name, "ours": ours, "reference": ref}
            if ref is not None:
                row["ratio"] = {
                    "train": _ratio(ours["train_images_per_s"], ref["train_images_per_s"]),
                    "eval": _ratio(ours["eval_images_per_s"], ref["eval_images_per_s"]),
                    "peak_memory": _ratio(ours["peak_memory_mb"], ref["peak_memory_mb"]),
                }
            report["methods"].append(row)
            say(_one_line(row))
    return report


def _one_line(row: dict[str, Any]) -> str:
    ours, ref = row["ours"], row["reference"]
    text = (
        f"{row['method']}: train {ours['train_images_per_s']:,.0f} img/s, eval {ours['eval_images_per_s']:,.0f} img/s"
    )
    if ref is not None:
        text += (
            f"; reference train {ref['train_images_per_s']:,.0f}, eval {ref['eval_images_per_s']:,.0f}"
            f" ({row['ratio']['train']:.1f}× / {row['ratio']['eval']:.1f}×)"
        )
    return text


def format_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"
