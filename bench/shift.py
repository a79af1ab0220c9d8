"""How far a run's adaptation moves the backbone's intermediate features (``bench analyze shift``).

A finished run is rebuilt as it trained (:mod:`bench.export`: the backbone's weights checked by
hash, the method applied, the run's trainable tensors loaded) and compared with the frozen
backbone (the same weights, no adaptation), and optionally with a second run of the same task and
backbone. All models see the same images: an evenly spaced subset of the split the run was scored
on, decoded and normalised as the run did, in fp32 and eval mode.

At every transformer block (``blocks.N`` on a ViT, ``layers.S.blocks.N`` on a Swin) a forward
hook reads the block's output, the residual stream. Per model and block:

* per-channel mean and standard deviation (ddof 0) over every token of every image;
* a token sample for the Wasserstein-1 distance: ``tokens_per_image`` token positions per image,
  evenly spaced over the sequence (the class token first; all tokens when 0), the same positions
  in every model;
* one mean-pooled vector per image (the average over all its tokens) for linear CKA.

Tokens a method adds to the sequence (VPT's prompts, which sit after the class and register
tokens) are left out before any statistic, so every model is measured on the image's own tokens.
A method that shortens the sequence inside a block's forward would be measured on the tokens it
keeps (W1 compares distributions and needs no token correspondence; the pooled vector is the mean
of the kept tokens). A method whose forward bypasses the blocks' own forward (Sparse-Tuning runs
attention and MLP itself, to cut tokens between them) leaves nothing to hook and is refused.
Per model pair and block the command reports the mean over channels of the per-channel W1 and the
linear CKA of the pooled vectors (:mod:`reports.feature_shift`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reports.feature_shift import evenly_spaced, linear_cka, moments, shift_figure, wasserstein1

from . import __version__, export, schema
from .errors import BenchError

FROZEN = "frozen"
BLOCK_COLUMNS = [
    "block", "index", "stage", "width", "pair", "model_a", "model_b",
    "mean_a", "mean_b", "std_a", "std_b", "mean_shift", "std_ratio", "w1", "cka",
]  # fmt: skip
CHANNEL_COLUMNS = ["model", "block", "index", "stage", "channel", "mean", "std"]


@dataclass(frozen=True)
class ShiftSettings:
    """How the features are measured: which images and tokens, on what device, from which files.
    Checked when made, so a bad option stops the command before any run is rebuilt."""

    images: int = 512  # evenly spaced over the evaluation split; 0: all
    tokens_per_image: int = 8  # W1 token sample per image; 0: all tokens
    batch_size: int = 64
    device: str = "auto"
    checkpoint: Path | None = None
    data_root: Path | None = None

    def __post_init__(self) -> None:
        if self.images < 2 and self.images != 0:
            raise BenchError(
                f"--images {self.images} is too few: CKA compares at least 2 images; pass 2 or more (0: all)"
            )
        if self.batch_size < 1:
            raise BenchError(f"--batch-size {self.batch_size} must be at least 1")
        if self.tokens_per_image < 0:
            raise BenchError(f"--tokens-per-image {self.tokens_per_image} must be 0 (all tokens) or more")

    @property
    def sample(self) -> dict[str, Any]:
        """What ``shift.json`` records of the image and token sample; equal samples give equal analyses."""
        return {"images_requested": self.images, "tokens_per_image": self.tokens_per_image or "all"}


@dataclass
class Block:
    path: str  # "blocks.3" or "layers.2.blocks.5"
    index: int  # depth over the whole backbone
    stage: int
    width: int = 0  # known after the first batch


@dataclass
class Features:
    """What one model's hooks gathered at one block over all batches."""

    total: torch.Tensor | None = None  # per-channel sums of x and x², float64, over all tokens
    total_sq: torch.Tensor | None = None
    count: int = 0
    pooled: list[torch.Tensor] = field(default_factory=list)  # [B, C] per batch: mean over tokens
    sample: list[torch.Tensor] = field(default_factory=list)  # [B * k, C] per batch: the W1 tokens

    def add(self, x: torch.Tensor, positions: torch.Tensor) -> None:
        x64 = x.double()
        flat = x64.reshape(-1, x.shape[-1])
        s1, s2 = flat.sum(0), (flat * flat).sum(0)
        self.total = s1 if self.total is None else self.total + s1
        self.total_sq = s2 if self.total_sq is None else self.total_sq + s2
        self.count += flat.shape[0]
        self.pooled.append(x64.mean(1).cpu())
        self.sample.append(x[:, positions].reshape(-1, x.shape[-1]).float().cpu())

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return moments(self.total.cpu().numpy(), self.total_sq.cpu().numpy(), self.count)


@dataclass
class ShiftResult:
    run: export.StoredRun
    against: export.StoredRun | None
    blocks: list[dict[str, Any]]  # blocks.csv rows
    channels: list[list[Any]]  # channels.csv rows
    folder: Path
    files: list[str]
    artifact_dir: str
    info: dict[str, Any]


def artifact_dir(against: export.StoredRun | None) -> str:
    """Where in RUN's artifacts the analysis goes: one folder per comparison, so a later one with
    another ``--against`` does not overwrite an earlier one."""
    if against is None:
        return schema.SHIFT_DIR
    return f"{schema.SHIFT_DIR}/vs-{against.tags.get(schema.RUN_KEY, against.run_id)[:8]}"


def check_comparable(run: export.StoredRun, other: export.StoredRun) -> None:
    """``--against`` needs the same task, backbone weights and input pipeline: the two runs then
    read the same images through the same frozen network, and only their adaptations differ."""
    a, b = run.spec, other.spec
    ha, hb = a["hparams"], b["hparams"]
    checks = [
        ("backbone", a["backbone"], b["backbone"]),
        ("backbone weights", a["checkpoint"], b["checkpoint"]),
        ("suite", a["suite"], b["suite"]),
        ("task", a["task"], b["task"]),
        ("image size", ha["img_size"], hb["img_size"]),
        ("resize", ha.get("resize"), hb.get("resize")),
        ("interpolation", ha["interpolation"], hb["interpolation"]),
        ("normalisation", run.resolved["normalization"], other.resolved["normalization"]),
    ]
    for what, x, y in checks:
        if x != y:
            raise BenchError(
                f"--against {other.label} has {what} {y!r} but {run.label} has {x!r}; compare two runs of the same "
                "suite, task, backbone and weights (e.g. karst and karst with --set karst.rescale=none)"
            )


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The block at ``path`` (a timm path) in ``model``, also when a wrapper prefixes the path."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        for name, module in model.named_modules():
            if name.endswith("." + path):
                return module
    raise BenchError(f"the rebuilt model has no block {path}; it is not the backbone the run describes")


def image_rows(total: int, images: int) -> np.ndarray:
    rows = evenly_spaced(total, images)
    if len(rows) < 2:
        raise BenchError(f"the evaluation split holds {total} image(s); the analysis needs at least 2")
    return rows


def load_images(stored: export.StoredRun, images: int, data_root: Path | None) -> tuple[torch.Tensor, np.ndarray]:
    """The evenly spaced subset of the run's evaluation split, as uint8 at the run's input size."""
    rows = image_rows(len(stored.predictions), images)
    recorded = Path(stored.resolved["data"]["task_dir"])
    task_dir = (data_root / recorded.name) if data_root is not None else recorded
    if not task_dir.is_dir():
        hint = "check --data-root" if data_root is not None else "pass --data-root DIR, the folder that holds it"
        raise BenchError(
            f"the evaluation images of run {stored.label} are not here: task folder {task_dir} does not exist; {hint}"
        )
    batch, _, _ = export.eval_split(stored, [int(i) for i in rows], task_dir)
    return batch, rows


def trim_added_tokens(x: torch.Tensor, tokens: int, prefix: int) -> torch.Tensor:
    """``x`` [B, T, C] cut to the backbone's ``tokens``: tokens a method inserted after the
    ``prefix`` (class and register) tokens, as VPT does, are dropped. A sequence a method has
    shortened is kept as it is: its statistics are over the tokens it kept, which W1 (a distance
    between distributions) and the pooled CKA allow."""
    extra = x.shape[1] - tokens
    if extra <= 0:
        return x
    return torch.cat([x[:, :prefix], x[:, prefix + extra :]], dim=1)


@torch.inference_mode()
def gather(
    models: dict[str, nn.Module],
    blocks: list[Block],
    prefix: int,
    images: torch.Tensor,
    norm: nn.Module,
    device: torch.device,
    batch_size: int,
    tokens_per_image: int,
) -> dict[str, dict[str, Features]]:
    """Run every model over ``images`` and gather each block's output statistics."""
    feats = {name: {b.path: Features() for b in blocks} for name in models}
    captured: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def save(_module, _inputs, output):
            captured[path] = output.reshape(output.shape[0], -1, output.shape[-1])  # Swin blocks are NHWC

        return save

    handles = [
        find_module(model, b.path).register_forward_hook(hook(b.path)) for model in models.values() for b in blocks
    ]
    try:
        for start in range(0, len(images), batch_size):
            x = norm(images[start : start + batch_size].to(device))
            reference: dict[str, int] = {}
            for name, model in models.items():  # the frozen backbone first: its token counts are the reference
                captured.clear()
                model(x)
                silent = [b.path for b in blocks if b.path not in captured]
                if silent:
                    raise BenchError(
                        f"model {name} computed its output without calling block {silent[0]} (its method runs the "
                        "blocks' parts itself, as Sparse-Tuning does), so the block outputs cannot be read; "
                        "analyze a run of a method that keeps timm's block forward"
                    )
                for b in blocks:
                    out = captured[b.path]
                    tokens = reference.setdefault(b.path, out.shape[1])
                    out = trim_added_tokens(out, tokens, prefix)
                    b.width = out.shape[-1]
                    positions = torch.as_tensor(evenly_spaced(out.shape[1], tokens_per_image), device=out.device)
                    feats[name][b.path].add(out, positions)
    finally:
        for h in handles:
            h.remove()
    return feats


def compare(
    feats: dict[str, dict[str, Features]], blocks: list[Block], pairs: list[tuple[str, str]]
) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """blocks.csv rows (one per block and pair) and channels.csv rows (one per model, block, channel)."""
    stats = {name: {b.path: per[b.path].moments() for b in blocks} for name, per in feats.items()}
    channels = [
        [name, b.path, b.index, b.stage, c, float(mean[c]), float(std[c])]
        for name in feats
        for b in blocks
        for mean, std in [stats[name][b.path]]
        for c in range(len(mean))
    ]
    rows = []
    for b in blocks:
        for a, z in pairs:
            (ma, sa), (mb, sb) = stats[a][b.path], stats[z][b.path]
            fa, fb = feats[a][b.path], feats[z][b.path]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = float(np.mean(sa / sb))
            rows.append(
                {
                    "block": b.path,
                    "index": b.index,
                    "stage": b.stage,
                    "width": b.width,
                    "pair": f"{a} vs {z}",
                    "model_a": a,
                    "model_b": z,
                    "mean_a": float(ma.mean()),
                    "mean_b": float(mb.mean()),
                    "std_a": float(sa.mean()),
                    "std_b": float(sb.mean()),
                    "mean_shift": float(np.abs(ma - mb).mean()),
                    "std_ratio": ratio,
                    "w1": float(wasserstein1(torch.cat(fa.sample).numpy(), torch.cat(fb.sample).numpy()).mean()),
                    "cka": linear_cka(torch.cat(fa.pooled).numpy(), torch.cat(fb.pooled).numpy()),
                }
            )
    return rows, channels


def _names(run: export.StoredRun, against: export.StoredRun | None) -> tuple[str, str | None]:
    if against is None:
        return run.label, None
    if against.label != run.label:
        return run.label, against.label
    key = schema.RUN_KEY
    return (
        f"{run.label}@{run.tags.get(key, run.run_id)[:8]}",
        f"{against.label}@{against.tags.get(key, against.run_id)[:8]}",
    )


def default_out(workdir: Path, run: export.StoredRun, against: export.StoredRun | None) -> Path:
    name = "shift-" + run.label.replace("/", "-")
    if against is not None:
        name += "-vs-" + against.tags.get(schema.RUN_KEY, against.run_id)[:8]
    return workdir / "analysis" / name


def analyze_shift(
    tracker: Any,
    ref: str,
    *,
    against: str | None = None,
    out: Path | None = None,
    workdir: Path = Path("runs"),
    settings: ShiftSettings = ShiftSettings(),
) -> ShiftResult:
    """Measure the feature shift of run ``ref`` (and ``against``), write CSV, figure and JSON into
    ``out``, and log them to ``ref``'s MLflow run (its status and metrics are left as they are)."""
    from methods.backbones import block_paths

    from .sweep import resolve_device
    from .tracking import csv_text
    from .train import Normalize

    checkpoint = settings.checkpoint
    dev = resolve_device(settings.device)
    client = tracker.client
    run = export.load_stored_run(client, export.find_run(client, ref))
    other = export.load_stored_run(client, export.find_run(client, against)) if against else None
    if other is not None:
        check_comparable(run, other)
    pixels, rows = load_images(run, settings.images, settings.data_root)

    name_a, name_b = _names(run, other)
    frozen = export.frozen_backbone(run, checkpoint, seed=run.spec["seed"]).eval()
    models = {FROZEN: frozen, name_a: export.rebuild_model(run, checkpoint)[0]}
    pairs = [(name_a, FROZEN)]
    if other is not None:
        models[name_b] = export.rebuild_model(other, checkpoint)[0]
        pairs += [(name_b, FROZEN), (name_a, name_b)]
    for model in models.values():
        model.to(dev).float().eval()
    blocks = [Block(path, index, stage) for index, (path, stage, _) in enumerate(block_paths(frozen))]
    prefix = int(getattr(frozen, "num_prefix_tokens", 0))
    norm = run.resolved["normalization"]
    normalize = Normalize(tuple(norm["mean"]), tuple(norm["std"])).to(dev)

    started = time.time()
    feats = gather(models, blocks, prefix, pixels, normalize, dev, settings.batch_size, settings.tokens_per_image)
    block_rows, channel_rows = compare(feats, blocks, pairs)
    seconds = time.time() - started

    folder = out or default_out(workdir, run, other)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "run": _describe(run, name_a),
        "against": _describe(other, name_b) if other is not None else None,
        "images": len(rows),
        **settings.sample,  # what a later summary over many runs compares to reuse this analysis
        "split_examples": len(run.predictions),
        "image_rows": "evenly spaced over the split" if len(rows) < len(run.predictions) else "all",
        "pairs": [f"{a} vs {b}" for a, b in pairs],
        "device": str(dev),
        "precision": "fp32",
        "seconds": round(seconds, 2),
        "bench_version": __version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    texts = {
        schema.SHIFT_BLOCKS: csv_text(BLOCK_COLUMNS, [[r[c] for c in BLOCK_COLUMNS] for r in block_rows]),
        schema.SHIFT_CHANNELS: csv_text(CHANNEL_COLUMNS, channel_rows),
        schema.SHIFT_INFO: json.dumps(info, indent=2) + "\n",
    }
    for filename, text in texts.items():
        (folder / filename).write_text(text)
    title = f"{run.spec['backbone']} on {run.spec['suite']}/{run.spec['task']}, {len(rows)} images"
    figures = shift_figure(block_rows, [folder / schema.SHIFT_FIGURE, folder / schema.SHIFT_FIGURE_PDF], title)
    target = artifact_dir(other)
    for filename, text in texts.items():
        tracker.log_text(run.run_id, text, f"{target}/{filename}")
    for path in figures:
        tracker.log_bytes(run.run_id, path.read_bytes(), f"{target}/{path.name}")
    files = sorted([*texts, *(p.name for p in figures)])
    return ShiftResult(run, other, block_rows, channel_rows, folder, files, target, info)


def summary_table(result: ShiftResult) -> Any:
    """The W1 and CKA of every block and pair, as a rich table."""
    from rich.table import Table

    short = {result.info["run"]["name"]: "A"}
    if result.info["against"]:
        short[result.info["against"]["name"]] = "B"
    short[FROZEN] = "F"
    legend = ", ".join(f"{letter} = {name}" for name, letter in short.items())
    table = Table(title=f"feature shift, {result.info['images']} images", caption=legend)
    table.add_column("block")
    pairs = [(r["model_a"], r["model_b"]) for r in result.blocks if r["index"] == 0]
    for a, b in pairs:
        table.add_column(f"W1 {short[a]}:{short[b]}", justify="right")
        table.add_column(f"CKA {short[a]}:{short[b]}", justify="right")
    for block in dict.fromkeys(r["block"] for r in result.blocks):
        mine = {(r["model_a"], r["model_b"]): r for r in result.blocks if r["block"] == block}
        table.add_row(block, *(f"{mine[p][k]:.4f}" for p in pairs for k in ("w1", "cka")))
    return table


def _describe(stored: export.StoredRun, name: str) -> dict[str, Any]:
    spec = stored.spec
    return {
        "name": name,
        "label": stored.label,
        "run_id": stored.run_id,
        "run_key": stored.tags.get(schema.RUN_KEY),
        "method": spec["method"],
        "method_config": spec["method_config"],
        "backbone": spec["backbone"],
        "checkpoint": spec["checkpoint"],
        "stage": spec["stage"],
    }
