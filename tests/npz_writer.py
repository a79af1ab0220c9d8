"""Write a timm ViT as a Google ``ViT-B_16.npz``-style checkpoint, for tests of the npz loading path.

The layout is the exact inverse of timm's ``timm.models.vision_transformer._load_weights`` (its
non-NaFlex, non-big_vision branch): Flax kernels are ``(in, out)`` (conv kernels HWIO), attention
query/key/value kernels are ``(dim, heads, head_dim)``, biases ``(heads, head_dim)``, and the
attention output kernel is ``(heads, head_dim, dim)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy()


@torch.no_grad()
def save_vit_as_google_npz(model: VisionTransformer, path: Path) -> None:
    """Save ``model`` (class token, no register tokens, plain timm blocks) to ``path`` as a Google ViT npz."""
    w: dict[str, np.ndarray] = {
        "embedding/kernel": _np(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": _np(model.patch_embed.proj.bias),
        "cls": _np(model.cls_token),
        "Transformer/posembed_input/pos_embedding": _np(model.pos_embed),
        "Transformer/encoder_norm/scale": _np(model.norm.weight),
        "Transformer/encoder_norm/bias": _np(model.norm.bias),
    }
    if isinstance(model.head, torch.nn.Linear):
        w["head/kernel"] = _np(model.head.weight.T)
        w["head/bias"] = _np(model.head.bias)
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        mha = p + "MultiHeadDotProductAttention_1/"
        dim = block.attn.proj.weight.shape[0]
        heads = block.attn.num_heads
        head_dim = block.attn.head_dim
        qkv_w = block.attn.qkv.weight.reshape(3, heads * head_dim, dim)
        qkv_b = block.attn.qkv.bias.reshape(3, heads, head_dim)
        for j, name in enumerate(("query", "key", "value")):
            w[f"{mha}{name}/kernel"] = _np(qkv_w[j].T.reshape(dim, heads, head_dim))
            w[f"{mha}{name}/bias"] = _np(qkv_b[j])
        w[f"{mha}out/kernel"] = _np(block.attn.proj.weight.reshape(dim, heads, head_dim).permute(1, 2, 0))
        w[f"{mha}out/bias"] = _np(block.attn.proj.bias)
        for ln, norm in ((0, block.norm1), (2, block.norm2)):
            w[f"{p}LayerNorm_{ln}/scale"] = _np(norm.weight)
            w[f"{p}LayerNorm_{ln}/bias"] = _np(norm.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[f"{p}MlpBlock_3/Dense_{r}/kernel"] = _np(fc.weight.T)
            w[f"{p}MlpBlock_3/Dense_{r}/bias"] = _np(fc.bias)
    np.savez(path, **w)
