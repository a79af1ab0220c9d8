"""One run: train a prepared model on one split, score another, return what tracking stores.

The protocol rules live here and nowhere else:

* the seed fixes the data order (a dedicated generator) and dropout / drop-path (the global RNG,
  reseeded before the first step); the model was built from the same seed beforehand;
* ``tune`` scores the eval split (val200) after every epoch; ``final`` scores it (test) exactly
  once, after the last epoch: no epoch is ever chosen on test;
* images stay uint8 on the device for the whole run and are normalised on the device; bf16
  autocast on CUDA; losses and accuracies accumulate on the device and are read once per epoch.

Speed on CUDA: the frozen backbone tensors are held in bf16 while training (they never
change; trainable tensors and the optimiser stay fp32), and their fp32 originals are put back
before evaluation and merging. The training step's forward up to the classifier (normalisation
and the model without its head) is one compiled function; ``compile_mode`` says how
(:data:`COMPILE_MODES`). The classifier, the loss and the count of correct predictions run
eagerly after it: they are the only parts whose shapes depend on the task's class count, so one
compiled graph serves every task of a method and backbone. The last, smaller batch of an epoch
runs the same function eagerly on the same parameters, so no epoch triggers a recompile for a new
shape. Dynamo's in-process state is reset at the start of every run (a sweep runs many models in
one process, and its per-code-object cache would otherwise fill with earlier runs' models and fall
back to eager after its limit); the compiled graphs themselves come back from Inductor's on-disk
caches (:mod:`bench.compile_cache`), so a run of a method and backbone that ran before pays
seconds, not a compilation.

Warm-up is measured, not assumed: ``RunResult.warmup_seconds`` is everything before the first
steady step (building the model, moving the data, compiling, capturing CUDA graphs), less what the
same steps cost at steady speed; ``steady_seconds`` is the rest of the training time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from torch import nn

from methods.base import Method, head_param_count, trainable_params_excluding_head, trainable_state_dict
from suites.base import Preset, Stage

from .augment import train_augment

if TYPE_CHECKING:
    from .compile_cache import StepCache

EVAL_BATCH = 256

# How the training step runs (``train_run(compile_mode=...)``):
#   eager            no compilation (the CPU default: compiling tiny test models costs more than it saves)
#   model            torch.compile on the model only; normalisation and loss stay eager
#   step             torch.compile on normalisation + model + loss + correct count, one graph
#   step-cudagraphs  the same, replayed as CUDA graphs (mode="reduce-overhead"): no per-kernel launches
#   step-autotune    the same with mode="max-autotune": Inductor benchmarks Triton GEMM templates
#                    (which can fuse neighbouring elementwise work) against cuBLAS for every shape;
#                    minutes of tuning per new model, kept to measure what it is worth
COMPILE_MODES = ("eager", "model", "step", "step-cudagraphs", "step-autotune")
_INDUCTOR_MODES = {"step": None, "step-cudagraphs": "reduce-overhead", "step-autotune": "max-autotune"}
CUDA_COMPILE_MODE = "step-cudagraphs"  # the fastest on an H100 (benchmarks/train_path_speed.py --modes)


@dataclass
class SplitData:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    lr: float
    eval_acc: float | None = None  # only in the tune stage (val200)
    seconds: float = 0.0  # training time of the epoch (after its one host sync), evaluation excluded
    system: dict[str, float] = field(default_factory=dict)  # the worker's system metrics over the epoch


@dataclass
class RunResult:
    epochs: list[EpochMetrics]
    eval_acc: float
    predictions: torch.Tensor  # int64 [N_eval], in list order
    trainable_params: int
    head_params: int
    train_images_per_s: float
    infer_images_per_s: float
    train_seconds: float
    peak_memory_mb: float | None
    trainable_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    merged: bool = False
    steady_train_images_per_s: float = float("nan")  # epochs after the first (which holds compilation)
    warmup_seconds: float = 0.0  # before the first steady step: setup, compiling, capturing (see the module doc)
    steady_seconds: float = 0.0  # training time at steady speed: train_seconds less its warm-up part
    train_step: str = "eager"  # how full batches ran: a compile mode, or eager then one from an epoch on


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``base_lr``, then cosine down to ``min_lr`` (per step).

    The NOAH-lineage schedule (10 of 100 epochs warm-up, 1e-6 -> lr -> 1e-5), evaluated per step
    rather than per epoch, and fitted inside the stated epochs (timm's ``warmup_prefix=False``
    plus "+10 epochs" quirk of some official scripts is not reproduced).
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class Normalize(nn.Module):
    """uint8 -> float, scaled and normalised on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, -1, 1, 1)), persistent=False)
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.scale - self.shift


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def predict(model: nn.Module, norm: Normalize, data: SplitData, device: torch.device) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(data), EVAL_BATCH):  # batches travel to the device: test may not fit there
        x = norm(data.images[start : start + EVAL_BATCH].to(device, non_blocking=True))
        with _autocast(device):
            out.append(model(x).argmax(dim=1))
    return torch.cat(out).cpu()


def _steady_rate(history: list[EpochMetrics], images_per_epoch: int) -> float:
    """Training images/s over every epoch but the first (NaN for a one-epoch run)."""
    later = sum(m.seconds for m in history[1:])
    return images_per_epoch * (len(history) - 1) / later if later > 0 else float("nan")


def classifier_slot(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that holds the classifier, and its attribute: ``head`` on a ViT, ``head.fc`` on a
    Swin (timm's ``pretrained_cfg["classifier"]``)."""
    path = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


class Headless:
    """``model`` with its classifier taken out while the block is open: the model then returns the
    features the classifier reads. The classifier (``self.head``) is put back on exit."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.parent, self.name = classifier_slot(model)
        self.head: nn.Module = getattr(self.parent, self.name)

    def __enter__(self) -> Headless:
        setattr(self.parent, self.name, nn.Identity())
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.parent, self.name, self.head)


class _WithHead(nn.Module):
    """The headless model followed by its classifier: what evaluation runs while training."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _Features:
    """uint8 images -> the features the classifier reads: what a compiled graph holds."""

    def __init__(self, body: nn.Module, norm: Normalize, device: torch.device):
        self.body, self.norm, self.device = body, norm, device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device):
            return self.body(self.norm(images))


class _StepForward:
    """Loss and correct count of one batch: features (eager or compiled), then the classifier and
    the loss, eagerly, so the class count never enters a compiled graph."""

    def __init__(self, features: Callable, head: nn.Module, device: torch.device, label_smoothing: float):
        self.features, self.head, self.device, self.label_smoothing = features, head, device, label_smoothing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(images)
        with _autocast(self.device):
            logits = self.head(features)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        return loss, (logits.detach().argmax(1) == labels).sum()


def compiled_features(mode: str, eager: _Features) -> Callable:
    """The features function full batches run through, per ``compile_mode`` (not ``eager``)."""
    if mode == "model":
        return _Features(torch.compile(eager.body, dynamic=False), eager.norm, eager.device)
    compiled = torch.compile(eager.__call__, dynamic=False, mode=_INDUCTOR_MODES[mode])
    if mode == "step":
        return compiled
    # both other modes replay CUDA graphs

    def replay(images: torch.Tensor) -> torch.Tensor:
        # A new step begins: the previous replay's outputs (features, gradients) are consumed.
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(images)

    return replay


def run_compiled_step(
    model: nn.Module,
    norm: Normalize,
    device: torch.device,
    mode: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
) -> None:
    """One training step (forward and backward, no optimiser step) through the compiled features,
    built as :func:`train_run` builds it: what a background compilation runs to fill the cache."""
    model.train()
    with Headless(model) as headless:
        step = _StepForward(
            compiled_features(mode, _Features(model, norm, device)), headless.head, device, label_smoothing
        )
        loss, _ = step(images, labels)
        loss.backward()


def warm_steps(mode: str) -> int:
    """How many first steps of a step function carry its warm-up: the first call compiles (or, eager,
    selects kernels); CUDA graphs also run once to warm up and once to record."""
    return {"eager": 1, "model": 2, "step": 2}.get(mode, 3)


def default_compile_mode(device: torch.device, method: Method | None = None) -> str:
    """The compile mode ``train_run`` uses on ``device`` unless told otherwise: CUDA graphs, except for
    a method whose step cannot be captured in one (``Method.cuda_graphs`` false), which compiles
    without them."""
    if device.type != "cuda":
        return "eager"
    return CUDA_COMPILE_MODE if method is None or method.cuda_graphs else "step"


#: Momentum of ``optimizer: sgd``: the value the SGD recipes of the visual-PETL papers use (VPT's
#: ``SOLVER.MOMENTUM``, KAdaptation's ELEVATER runs).
SGD_MOMENTUM = 0.9


def make_optimizer(model: nn.Module, preset: Preset, device: torch.device) -> torch.optim.Optimizer:
    """The preset's optimiser over the trainable parameters: AdamW, or SGD with momentum 0.9.

    Biases and norms get no weight decay, whichever the optimiser.
    """
    groups = param_groups_weight_decay(model, preset.weight_decay)
    fused = device.type == "cuda"
    if preset.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=preset.lr, fused=fused)
    if preset.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=preset.lr, momentum=SGD_MOMENTUM, fused=fused)
    raise ValueError(f"optimizer {preset.optimizer!r} is not one of adamw, sgd")


def _frozen_float_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]


def hold_frozen_in_bf16(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Hold the frozen fp32 tensors in bf16; returns each with its fp32 original, to put back."""
    frozen = _frozen_float_params(model)
    originals = [(p, p.data) for p in frozen]
    for p in frozen:
        p.data = p.data.to(torch.bfloat16)
    return originals


class _WarmUpClock:
    """Times the first steps of each step function a run uses, with the device synchronised around
    them, so warm-up (compiling, capturing, selecting kernels) can be told from steady training."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.pending = 0  # steps of the current step function still to time
        self.seconds = 0.0  # time of the timed steps
        self.steps = 0  # how many they were
        self._t0 = 0.0

    def expect(self, steps: int) -> None:
        self.pending = steps

    def begin(self) -> bool:
        if not self.pending:
            return False
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._t0 = time.perf_counter()
        return True

    def end(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._t0
        self.steps += 1
        self.pending -= 1

    def split(self, train_seconds: float, total_steps: int) -> tuple[float, float]:
        """(warm-up inside training, steady training time): the timed steps, less what as many steps
        take at the speed of the others."""
        rest = total_steps - self.steps
        steady_step = max(train_seconds - self.seconds, 0.0) / rest if rest > 0 else 0.0
        warm = max(self.seconds - self.steps * steady_step, 0.0) if rest > 0 else train_seconds
        return warm, max(train_seconds - warm, 0.0)


def train_run(
    model: nn.Module,
    method: Method,
    preset: Preset,
    stage: Stage,
    train: SplitData,
    evaluate: SplitData,
    *,
    seed: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    compile_mode: str | None = None,
    frozen_bf16: bool | None = None,
    step_cache: StepCache | None = None,
    started_at: float | None = None,
) -> RunResult:
    """Train ``model`` (already adapted by ``method``) and score ``evaluate`` as ``stage`` prescribes.

    ``compile_mode``: one of :data:`COMPILE_MODES`; ``frozen_bf16``: hold frozen weights in bf16
    while training. They default to :data:`CUDA_COMPILE_MODE` and on for CUDA, ``eager`` and off
    elsewhere (they exist as switches for ``benchmarks/train_path_speed.py``, which measures what
    each is worth). ``step_cache``: where compiled steps of this run's kind are kept
    (:mod:`bench.compile_cache`); without one, a compiled mode compiles at the first step.
    ``started_at``: the ``time.perf_counter()`` at which the run's setup began (building the model),
    counted as warm-up; default: this call.
    """
    started_at = time.perf_counter() if started_at is None else started_at
    model.to(device)
    cuda = device.type == "cuda"
    mode = default_compile_mode(device, method) if compile_mode is None else compile_mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    trainable, head_count = trainable_params_excluding_head(model), head_param_count(model)
    fp32_frozen = hold_frozen_in_bf16(model) if (cuda if frozen_bf16 is None else frozen_bf16) else []
    norm = Normalize(mean, std).to(device)
    if mode != "eager":
        torch.compiler.reset()  # this run's graphs only (see the module docstring)
        if step_cache is not None:
            from .compile_cache import use_cache_folder

            use_cache_folder(step_cache.folder)
    train = SplitData(train.images.to(device), train.labels.to(device))  # once per run, kept there

    optimizer = make_optimizer(model, preset, device)
    steps_per_epoch = math.ceil(len(train) / preset.batch_size)
    total_steps = steps_per_epoch * preset.epochs
    schedule: dict[str, Any] = {
        "total_steps": total_steps,
        "warmup_steps": steps_per_epoch * preset.warmup_epochs,
        "base_lr": preset.lr,
        "warmup_lr": preset.warmup_lr,
        "min_lr": preset.min_lr,
    }
    order = torch.Generator().manual_seed(seed)
    augment = train_augment(preset, seed, device, mean)  # identity unless the preset augments (few-shot)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    history: list[EpochMetrics] = []
    train_seconds, step = 0.0, 0
    clock = _WarmUpClock(device)
    with Headless(model) as headless:
        features = _Features(model, norm, device)
        eager_step = _StepForward(features, headless.head, device, preset.label_smoothing)
        # A compiled step from the first batch, unless its kind is cold in the cache: then the run
        # starts eagerly while another process compiles it (bench.compile_cache)
        compile_now = mode != "eager" and (step_cache is None or step_cache.is_warm())
        if mode != "eager" and not compile_now:
            step_cache.warm_in_background()
        full_batch_step, used = eager_step, "eager"
        if compile_now:
            full_batch_step, used = (
                _StepForward(compiled_features(mode, features), headless.head, device, preset.label_smoothing),
                mode,
            )
        clock.expect(warm_steps(used))
        setup_seconds = time.perf_counter() - started_at
        evaluator = _WithHead(model, headless.head)
        for epoch in range(preset.epochs):
            if used == "eager" and mode != "eager" and step_cache.is_warm():
                full_batch_step, used = (
                    _StepForward(compiled_features(mode, features), headless.head, device, preset.label_smoothing),
                    f"eager, then {mode} from epoch {epoch}",
                )
                clock.expect(warm_steps(mode))
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            perm = torch.randperm(len(train), generator=order).to(device)
            for start in range(0, len(train), preset.batch_size):
                idx = perm[start : start + preset.batch_size]
                lr = lr_at(step, **schedule)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                full = len(idx) == preset.batch_size
                timed = full and clock.begin()
                x, y = augment(train.images[idx]), train.labels[idx]
                loss, batch_correct = (full_batch_step if full else eager_step)(x, y)
                loss.backward()
                optimizer.step()
                # Gradients are dropped before the next forward: under CUDA graphs they live in memory
                # the next replay reuses.
                optimizer.zero_grad(set_to_none=True)
                loss_sum += loss.detach() * y.numel()
                correct += batch_correct
                step += 1
                if timed:
                    clock.end()
            total_loss = loss_sum.item()  # one host sync per epoch
            if not math.isfinite(total_loss):
                raise FloatingPointError(
                    f"the training loss is not finite in epoch {epoch}; lower the learning rate, "
                    f"e.g. --set preset.lr={preset.lr / 10:g} (now {preset.lr:g})"
                )
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=total_loss / len(train),
                train_acc=correct.item() / len(train),
                lr=lr,
            )
            metrics.seconds = time.perf_counter() - t0
            train_seconds += metrics.seconds
            if stage.eval_every_epoch:
                metrics.eval_acc = (predict(evaluator, norm, evaluate, device) == evaluate.labels).float().mean().item()
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
    in_loop_warmup, steady_seconds = clock.split(train_seconds, total_steps)

    for p, original in fp32_frozen:
        p.data = original
    state = {k: v.detach().cpu().clone() for k, v in trainable_state_dict(model).items()}
    merged = False
    if method.mergeable:  # evaluate the deployable model: adapters folded into plain layers
        model = method.merge(model)
        merged = True
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    preds = predict(model, norm, evaluate, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    infer_seconds = time.perf_counter() - t0
    eval_acc = (preds == evaluate.labels).float().mean().item()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return RunResult(
        epochs=history,
        eval_acc=eval_acc,
        predictions=preds,
        trainable_params=trainable,
        head_params=head_count,
        train_images_per_s=len(train) * preset.epochs / max(train_seconds, 1e-9),
        infer_images_per_s=len(evaluate) / max(infer_seconds, 1e-9),
        train_seconds=train_seconds,
        steady_train_images_per_s=_steady_rate(history, len(train)),
        peak_memory_mb=peak,
        trainable_state=state,
        merged=merged,
        warmup_seconds=setup_seconds + in_loop_warmup,
        steady_seconds=steady_seconds,
        train_step=used,
    )
