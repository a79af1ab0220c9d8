"""LoRA (Hu et al., ICLR 2022, arXiv 2106.09685) through Hugging Face ``peft``.

Default: rank 8 on the fused ``attn.qkv`` of every block, the convention of the visual-PETL
literature's "LoRA r=8, 0.29 M" row (NOAH, ``ZhangYuanhan-AI/NOAH:model/module/qkv_super_prompt.py``).
It adapts q, k and v together with one shared ``A``; on ViT-B/16 that is
12 · 8 · (768 + 2304) = 294,912 trainable parameters, head excluded.

Deviations from NOAH, all deliberate and recorded in the run config:

* scaling: ΔW = (alpha / rank) · B A with ``alpha`` defaulting to ``rank`` (scale 1), which is
  NOAH's unscaled update; setting ``alpha`` changes it explicitly.
* init: peft's (A Kaiming-uniform with a = √5, B = 0), applied *after* the backbone weights are
  loaded, so the adapted model equals the backbone at step 0 (V-PETL Bench and PETL_Vision
  lose this to timm's model-wide init).

``targets="qkv,proj,fc1,fc2"`` adapts all four linears of every block. peft gets the exact paths
of the targeted linears from the backbone description (``blocks.N.attn.qkv`` on a ViT,
``layers.S.blocks.N.attn.qkv`` on a Swin), so neither ``patch_embed.proj`` nor a Swin's
patch-merging ``downsample.reduction`` is ever matched.

Options that peft has as LoRA options, each recorded in the run config:

* ``use_dora`` — DoRA (Liu et al., ICML 2024, arXiv 2402.09353; official code
  ``NVlabs/DoRA``): W = m · (W₀ + ΔW) / ‖W₀ + ΔW‖, with a trainable magnitude m per output
  channel of each adapted linear, initialised to the column norms of W₀ (so the model still
  starts at the backbone). Count: + Σ out per adapted linear (12 · 2304 on ViT-B/16's qkv).
* ``use_rslora`` — rsLoRA (Kalajdzievski, arXiv 2312.03732): scale alpha / √rank instead of
  alpha / rank, so the update's size does not shrink as the rank grows. Count unchanged.
* ``init="pissa"`` — PiSSA (Meng et al., NeurIPS 2024, arXiv 2404.02948; official code
  ``GraphPKU/PiSSA``): A and B start at the top-``rank`` singular triplets of W₀ (divided by the
  scale), and the frozen weight becomes the residual W₀ − scale · B A, so the model equals the
  backbone at step 0 up to float error. peft computes the exact SVD of each adapted weight when
  the method is applied; re-applying it to the same backbone gives the same residual, so a run's
  trainable state restores as for plain LoRA. Count unchanged.
* ``init="noah"`` — the initialisation of NOAH's LoRA (``ZhangYuanhan-AI/NOAH``,
  ``model/module/qkv_super_prompt.py``), the one behind the literature's LoRA row: NOAH stores A
  as an in × r tensor and draws it Kaiming-uniform (a = √5) over that tensor's fan-in, r, so
  A ~ U(−1/√r, 1/√r); peft's A is r × in and its fan-in is in, so A ~ U(−1/√in, 1/√in). bench
  keeps peft's layer and redraws its A from NOAH's distribution (B stays 0, so the model still
  equals the backbone at step 0). A's entries start √(in / r) times larger (√96 ≈ 9.8 on
  ViT-B/16's qkv at rank 8), and at the same learning rate ΔW = B A grows that much faster.
  Count unchanged.

Swin: the same rule per block, at each stage's width; the count is rank · Σ_blocks Σ_targets
(in + out). Swin-B (widths 128, 256, 512, 1024; depths 2, 2, 18, 2) at rank 8 on qkv:
8 · 4 · (2·128 + 2·256 + 18·512 + 2·1024) = 385,024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    added_option,
    check_range,
    fit_affine_size,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)

# The largest scale alpha / rank accepted: published settings use 1 or 2, and far larger scales
# blow the update up until training stops moving (alpha 1e30 scores like a linear probe).
MAX_SCALE = 100.0

# The linears of a block users may target, by their short names (the backbone description's roles).
TARGET_PATHS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank, i.e. scale 1 (NOAH's unscaled update); at most MAX_SCALE · rank
    dropout: float = 0.0
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2
    use_dora: bool = added_option(False)  # DoRA: a trainable magnitude per output channel of each adapted linear
    use_rslora: bool = added_option(False)  # rsLoRA: scale alpha / sqrt(rank) instead of alpha / rank
    init: Literal["peft", "pissa", "noah"] = added_option(
        "peft"
    )  # peft: Kaiming-uniform A over fan-in `in`, B = 0; pissa: principal singular vectors; noah: A over fan-in r


def parse_targets(targets: str) -> list[str]:
    names = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in names if t not in TARGET_PATHS]
    if bad or not names:
        raise MethodError(
            f"lora targets {targets!r} are not valid; use a comma-separated subset of {', '.join(TARGET_PATHS)}"
        )
    return names


def target_paths(spec: BackboneSpec, targets: str) -> list[str]:
    """The exact module paths peft adapts: every block's linears named in ``targets``."""
    return [lin.path for lin in spec.linears(parse_targets(targets))]


def noah_init(model: nn.Module) -> None:
    """Redraw every peft ``lora_A`` (r x in) as NOAH draws its in x r A: Kaiming-uniform with
    a = sqrt(5) over a fan-in of r, i.e. U(-1/sqrt(r), 1/sqrt(r))."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A"):
            for linear in module.lora_A.values():
                # the transposed view is NOAH's in x r layout, whose fan-in (its size(1)) is r
                nn.init.kaiming_uniform_(linear.weight.T, a=math.sqrt(5))


@register_method
class Lora(Method):
    name = "lora"
    category = "reparameterisable"
    paper = "Hu et al., ICLR 2022 (arXiv 2106.09685)"
    published_params = "0.29M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    Config = LoraSettings
    description = "LoRA through peft; default rank 8 on the fused qkv of every block (NOAH convention)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: LoraSettings) -> None:
        if config.rank < 1:
            raise MethodError(f"lora rank={config.rank} must be a positive integer")
        if not 0.0 <= config.dropout < 1.0:
            raise MethodError(f"lora dropout={config.dropout} must be in [0, 1)")
        if config.alpha is not None:
            check_range("lora", "alpha", config.alpha, 0.0, MAX_SCALE * config.rank, low_open=True)
        parse_targets(config.targets)

    def apply(self, model: nn.Module, config: LoraSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = LoraConfig(
            r=config.rank,
            lora_alpha=config.alpha if config.alpha is not None else config.rank,
            lora_dropout=config.dropout,
            target_modules=target_paths(spec, config.targets),
            bias="none",
            use_dora=config.use_dora,
            use_rslora=config.use_rslora,
            init_lora_weights="pissa" if config.init == "pissa" else True,
        )
        model = inject_adapter_in_model(peft_config, model)
        if config.init == "noah":
            noah_init(model)
        adapters = [p for n, p in model.named_parameters() if ".lora_" in n]
        freeze_all_but(model, adapters)
        return model

    def count(self, spec: BackboneSpec, config: LoraSettings) -> int:
        magnitudes = sum(lin.out_features for lin in spec.linears(parse_targets(config.targets)))
        return config.rank * self._per_rank(spec, config.targets) + (magnitudes if config.use_dora else 0)

    def _per_rank(self, spec: BackboneSpec, targets: str) -> int:
        return sum(lin.in_features + lin.out_features for lin in spec.linears(parse_targets(targets)))

    def size_limits(self, spec: BackboneSpec, config: LoraSettings) -> dict[str, tuple[int, str]]:
        cap = min(min(lin.in_features, lin.out_features) for lin in spec.linears(parse_targets(config.targets)))
        return {"rank": (cap, f"min(in, out) of the adapted layers {config.targets}")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> LoraSettings:
        per_rank = self._per_rank(spec, make_config(self).targets)
        return make_config(self, {"rank": fit_affine_size(self.name, lambda r: r * per_rank, budget)})

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {**shared_search_space(trial), "dropout": trial.suggest_float("dropout", 0.0, 0.3)}

    def published_hparams(self) -> dict[str, Any]:
        return {"dropout": 0.0}

    def merge(self, model: nn.Module) -> nn.Module:
        """Fold every LoRA layer into its base linear (peft's merge) and drop the wrapper."""
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge(safe_merge=module.get_base_layer().weight.device.type != "meta")  # meta: no values
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
        return model
