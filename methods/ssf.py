"""SSF: Scaling & Shifting your Features (Lian, Zhou, Feng, Wang, NeurIPS 2022, arXiv 2210.08823).

After each operation of the frozen backbone the features get a per-channel affine map,
y = γ ⊙ x + β, with γ, β trainable vectors of the operation's output width. Where they sit follows
the official code (``dongzelian/SSF``, ``models/vision_transformer.py`` and
``models/swin_transformer.py``): after the patch embedding's convolution (and its LayerNorm,
where the backbone has one); in every block after ``norm1``, ``attn.qkv`` (3d wide), ``attn.proj``,
``norm2``, ``mlp.fc1`` (h wide, before the GELU) and ``mlp.fc2``; on a Swin after each patch
merging's LayerNorm (4 w wide, before the reduction); and after the final LayerNorm.

Count on a ViT of width d, MLP width h and L blocks (no patch-embedding norm, as in supervised
ViTs): 2 · [L · (7d + h) + 2d]. ViT-B/16: 2 · (12 · 8448 + 1536) = **205,824** (0.21 M; the
paper's VTAB-1K table lists 0.24 M for SSF, and bench's counts leave the classifier out, so the
two need not agree). On a Swin with stage widths w_s:
2 · [Σ_blocks (7 w + h) + 2 w_0 (patch convolution and norm) + Σ_{s≥1} 2 w_s (patch-merging
norms, 4 w_{s-1} = 2 w_s wide) + w_last].

Merge (the paper's re-parameterisation, Sec. 3.2): every γ, β follows a linear operation (a
linear, a convolution or an affine LayerNorm), so it folds into that operation's weight and bias:
W' = diag(γ) W, b' = γ ⊙ b + β. The merged model is a plain timm backbone with the same state
dict keys. A linear without a bias (qkv on some backbones) gets β as a new bias.

In a composition SSF wraps whatever module sits at a site as a whole, another method's adapted
layer included (``lora+ssf``: y = γ ⊙ (W x + b + s · B A x) + β); its merge folds into the plain
layer the inner method's merge leaves, and refuses to fold into a wrapper not merged yet.

Deviation: γ = 1, β = 0 at init (``init="identity"``, the default), so the adapted model starts
exactly at the backbone and the conformance check of identity at init applies. The official
``init_ssf_scale_shift`` draws γ ~ N(1, 0.02²) and β ~ N(0, 0.02²): ``--set init=normal``.
The training recipe is the harness preset, not SSF's (AdamW, weight decay 0.05, 100 epochs,
per-dataset lr): SSF's VTAB scripts use lr 1e-3 to 5e-2, the shared search range covers 1e-4..1e-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .backbones import BackboneSpec, block_paths, describe_backbone
from .base import Method, MethodError, freeze_all_but, register_method, shared_search_space, wrapped_layer

INIT_STD = 0.02  # the official init_ssf_scale_shift
_BLOCK_OPS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
FOLDABLE = (nn.Linear, nn.Conv2d, nn.LayerNorm)  # the plain layers a scale and shift fold into


@dataclass
class SSFConfig:
    init: Literal["identity", "normal"] = "identity"  # "normal": the official N(1, 0.02), N(0, 0.02)


class ScaleShift(nn.Module):
    """``base`` followed by y = scale ⊙ x + shift over its output channels (last dim; dim 1 for a conv)."""

    def __init__(self, base: nn.Module, width: int, init: str):
        super().__init__()
        self.base = base
        self.channels_first = isinstance(wrapped_layer(base), nn.Conv2d)  # a convolution's channels are dim 1
        self.ssf_scale = nn.Parameter(torch.ones(width))
        self.ssf_shift = nn.Parameter(torch.zeros(width))
        if init == "normal":
            nn.init.normal_(self.ssf_scale, mean=1.0, std=INIT_STD)
            nn.init.normal_(self.ssf_shift, std=INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.channels_first:
            return y * self.ssf_scale.view(-1, 1, 1) + self.ssf_shift.view(-1, 1, 1)
        return y * self.ssf_scale + self.ssf_shift

    @torch.no_grad()
    def folded(self, where: str = "") -> nn.Module:
        """``base`` with the scale and shift folded into its weight and bias. ``base`` must be a plain
        layer by now: a wrapping layer another method placed is merged first (its weight is not
        the function it computes, so folding into it would change the model)."""
        base, scale, shift = self.base, self.ssf_scale, self.ssf_shift
        if not isinstance(base, FOLDABLE):
            raise MethodError(
                f"ssf cannot fold its scale and shift into {where or 'the layer it wraps'}: it wraps a "
                f"{type(base).__module__}.{type(base).__name__}, not a plain layer; merge the method that placed it first "
                "(in a composition, write ssf after it)"
            )
        shape = (-1,) + (1,) * (base.weight.dim() - 1)
        base.weight.mul_(scale.view(shape).to(base.weight.dtype))
        if base.bias is None:
            base.bias = nn.Parameter(torch.zeros_like(shift, dtype=base.weight.dtype), requires_grad=False)
        base.bias.mul_(scale.to(base.bias.dtype)).add_(shift.to(base.bias.dtype))
        return base


def _out_width(module: nn.Module) -> int:
    """The output width of the operation at an SSF site; a layer another method wrapped (a peft
    tuner layer, KARST's, FacT's, ...) computes as wide as the plain layer inside it."""
    module = wrapped_layer(module)
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return int(module.normalized_shape[0])


def ssf_sites(model: nn.Module) -> list[str]:
    """Paths of the operations SSF follows, in forward order (official placement)."""
    sites = ["patch_embed.proj"]
    if isinstance(getattr(model.patch_embed, "norm", None), nn.LayerNorm):
        sites.append("patch_embed.norm")
    for path, stage, _ in block_paths(model):
        if path.endswith(".blocks.0") and path.startswith("layers."):
            downsample = model.get_submodule(f"layers.{stage}.downsample")
            if isinstance(getattr(downsample, "norm", None), nn.LayerNorm):
                sites.append(f"layers.{stage}.downsample.norm")
        sites.extend(f"{path}.{op}" for op in _BLOCK_OPS)
    if isinstance(getattr(model, "norm", None), nn.LayerNorm):
        sites.append("norm")
    return sites


def ssf_count(spec: BackboneSpec) -> int:
    blocks = sum(7 * b.width + b.mlp_hidden for b in spec.blocks)
    if spec.family == "vit":
        return 2 * (blocks + 2 * spec.embed_dim)
    widths = spec.stage_widths
    return 2 * (blocks + 2 * widths[0] + sum(2 * w for w in widths[1:]) + widths[-1])


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@register_method
class SSF(Method):
    name = "ssf"
    category = "reparameterisable"
    paper = "Lian et al., NeurIPS 2022 (arXiv 2210.08823)"
    published_params = "0.24M"  # the SSF paper's VTAB-1K table
    Config = SSFConfig
    description = "SSF: a trainable per-channel scale and shift after every operation (mergeable)"
    identity_at_init = True  # with the default init="identity" (the official init is N(1, 0.02))
    mergeable = True
    budget_adjustable = False  # one vector pair per operation: a fixed size per backbone
    families = ("vit", "swin")
    wraps_whole_layers = True  # a site another method adapted keeps its adapter: SSF scales and shifts its output

    def apply(self, model: nn.Module, config: SSFConfig) -> nn.Module:
        self.check_backbone(describe_backbone(model))
        wrapped = []
        for path in ssf_sites(model):
            base = model.get_submodule(path)
            wrapper = ScaleShift(base, _out_width(base), config.init)
            _set(model, path, wrapper)
            wrapped.append(wrapper)
        freeze_all_but(model, [p for w in wrapped for p in (w.ssf_scale, w.ssf_shift)])
        return model

    def count(self, spec: BackboneSpec, config: SSFConfig) -> int:
        return ssf_count(spec)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return shared_search_space(trial)

    def published_hparams(self) -> dict[str, Any]:
        return {"weight_decay": 0.05}  # SSF's VTAB scripts (lr is per dataset there: the preset's)

    def merge(self, model: nn.Module) -> nn.Module:
        for path, module in list(model.named_modules()):
            if isinstance(module, ScaleShift):
                _set(model, path, module.folded(path))
        return model
