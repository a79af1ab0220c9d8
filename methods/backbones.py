"""What methods know of a backbone: its blocks, their linears and widths, and its token layout.

A :class:`BackboneSpec` is read off a timm model (real or built on the ``meta`` device), never
from a table keyed by model name. Two families are described:

* ``vit``: timm's ``VisionTransformer`` (supervised, DINOv2 with or without registers and layer
  scale, CLIP): one stage, every block at one width, global attention, a class token (and
  register tokens where the model has them);
* ``swin``: timm's ``SwinTransformer``: stages whose width doubles after each patch merging
  (128, 256, 512, 1024 on Swin-B), attention inside shifted windows, no class token; the head
  reads the average of the last stage's tokens.

Every block records the paths and shapes of its four adaptable linears (fused ``qkv``, the
attention output ``proj``, the MLP's ``fc1`` and ``fc2``). Methods find the layers they adapt
through these paths, so the patch-merging reductions (``layers.S.downsample.reduction``) and the
patch embedding are never matched by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from bench.errors import BenchError

Family = Literal["vit", "swin"]
FAMILIES: tuple[str, ...] = ("vit", "swin")
#: The four adaptable linears of a block, by the short names methods and users use.
ROLES = ("qkv", "proj", "fc1", "fc2")
_ROLE_PATHS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


@dataclass(frozen=True)
class LinearSpec:
    """One adaptable ``nn.Linear``: where it is and its shape. ``splits`` = 3 for a fused qkv."""

    role: str  # qkv, proj, fc1 or fc2
    path: str  # from the model's root, e.g. "blocks.3.attn.qkv" or "layers.2.blocks.5.mlp.fc1"
    in_features: int
    out_features: int
    splits: int = 1
    bias: bool = True

    @property
    def split_out(self) -> int:
        """Output width of each part (q, k, v of a fused qkv)."""
        return self.out_features // self.splits


@dataclass(frozen=True)
class BlockSpec:
    """One transformer block: its stage, width, attention layout and adaptable linears."""

    index: int  # 0-based over the whole backbone
    path: str  # "blocks.3" or "layers.2.blocks.5"
    stage: int
    width: int
    num_heads: int
    mlp_hidden: int
    window: int | None  # tokens per window side; None: global attention
    qkv_fused: bool
    linears: tuple[LinearSpec, ...]

    def linear(self, role: str) -> LinearSpec:
        return next(lin for lin in self.linears if lin.role == role)


@dataclass(frozen=True)
class BackboneSpec:
    """The shapes of a backbone that methods read: closed-form counts, budgets and placement.

    Read off a model built on the ``meta`` device (:func:`describe_backbone`), so building one
    never allocates weights or downloads anything.
    """

    name: str
    family: str  # vit or swin
    blocks: tuple[BlockSpec, ...]
    class_token: bool
    num_prefix_tokens: int  # class token plus register tokens (0 on Swin)
    attention: str  # "global" or "windowed"
    num_patches: int  # tokens of the first stage (the patch grid)
    feature_dim: int  # width of the features the classification head reads
    backbone_params: int  # every parameter except the classification head

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        widths: dict[int, int] = {}
        for b in self.blocks:
            widths.setdefault(b.stage, b.width)
        return tuple(widths[s] for s in sorted(widths))

    @property
    def uniform(self) -> bool:
        """Every block has the same width (a ViT); False for hierarchical backbones (Swin)."""
        return len({b.width for b in self.blocks}) == 1

    # The single-width view of a ViT. On a hierarchical backbone these describe the first block;
    # methods that support several widths read ``blocks`` instead.
    @property
    def embed_dim(self) -> int:
        return self.blocks[0].width

    @property
    def num_heads(self) -> int:
        return self.blocks[0].num_heads

    @property
    def mlp_hidden(self) -> int:
        return self.blocks[0].mlp_hidden

    @property
    def has_qkv_bias(self) -> bool:
        return self.blocks[0].linear("qkv").bias

    @property
    def qkv_out(self) -> int:
        return self.blocks[0].linear("qkv").out_features

    def linears(self, roles: tuple[str, ...] | list[str] = ROLES) -> list[LinearSpec]:
        """The adaptable linears of every block with one of ``roles``, in block order."""
        return [lin for b in self.blocks for lin in b.linears if lin.role in roles]


def family_of(model: nn.Module) -> str:
    """``vit`` or ``swin`` for a timm model; a one-line error naming the class otherwise."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, SwinTransformer):
        return "swin"
    raise BenchError(
        f"a {type(model).__name__} is not a backbone bench can describe; use a timm VisionTransformer "
        "(vit_base_patch16_224.orig_in21k) or SwinTransformer (swin_base_patch4_window7_224.ms_in22k)"
    )


def block_paths(model: nn.Module) -> list[tuple[str, int, nn.Module]]:
    """(path, stage, block) of every transformer block, in forward order."""
    if family_of(model) == "vit":
        return [(f"blocks.{i}", 0, block) for i, block in enumerate(model.blocks)]
    return [
        (f"layers.{s}.blocks.{i}", s, block)
        for s, stage in enumerate(model.layers)
        for i, block in enumerate(stage.blocks)
    ]


def _linear_spec(block: nn.Module, block_path: str, role: str) -> LinearSpec:
    layer = block.get_submodule(_ROLE_PATHS[role])
    base = getattr(layer, "base_layer", None) or getattr(layer, "base", None) or layer  # an adapted layer
    return LinearSpec(
        role=role,
        path=f"{block_path}.{_ROLE_PATHS[role]}",
        in_features=int(base.in_features),
        out_features=int(base.out_features),
        splits=3 if role == "qkv" else 1,
        bias=getattr(base, "bias", None) is not None,
    )


def _window(block: nn.Module) -> int | None:
    size = getattr(block, "window_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, tuple | list) else size)


def describe_backbone(model: nn.Module, name: str = "") -> BackboneSpec:
    """Describe a timm ViT or Swin (real or on the meta device)."""
    from .base import head_parameters

    family = family_of(model)
    blocks = []
    for index, (path, stage, block) in enumerate(block_paths(model)):
        if not hasattr(block.attn, "qkv"):
            raise BenchError(
                f"{name or type(model).__name__} has attention without a fused qkv linear; bench needs timm's "
                "fused-qkv attention"
            )
        linears = tuple(_linear_spec(block, path, role) for role in ROLES)
        width = linears[0].in_features
        blocks.append(
            BlockSpec(
                index=index,
                path=path,
                stage=stage,
                width=width,
                num_heads=int(block.attn.num_heads),
                mlp_hidden=linears[2].out_features,
                window=_window(block) if family == "swin" else None,
                qkv_fused=True,
                linears=linears,
            )
        )
    head_ids = {id(p) for p in head_parameters(model)}
    prefix = int(getattr(model, "num_prefix_tokens", 0)) if family == "vit" else 0
    return BackboneSpec(
        name=name or type(model).__name__,
        family=family,
        blocks=tuple(blocks),
        class_token=family == "vit" and getattr(model, "cls_token", None) is not None,
        num_prefix_tokens=prefix,
        attention="global" if family == "vit" else "windowed",
        num_patches=int(model.patch_embed.num_patches),
        feature_dim=int(model.num_features),
        backbone_params=sum(p.numel() for p in model.parameters() if id(p) not in head_ids),
    )
