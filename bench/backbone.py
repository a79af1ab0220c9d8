"""Building a timm backbone (a ViT or a Swin) and loading its weights.

Two families are supported (``methods.backbones`` describes them for the methods): timm's
``VisionTransformer`` (supervised IN-21k, DINOv2 with or without registers, CLIP, ViT-L, ViT-H)
and ``SwinTransformer`` (Swin-B: ``swin_base_patch4_window7_224.ms_in22k``, the IN-22k checkpoint
KARST's Swin script uses). Anything else is refused in one line.

Weights come from exactly one of three places, and every run records which (``checkpoint_id``):

* ``--checkpoint PATH``: a local ``.safetensors``, a weights-only ``.pth``/``.pt``/``.bin``, or
  Google's ``.npz``; identified by its sha256. This is the offline path and the one tests use.
* the Hugging Face Hub (``pretrained`` backbones without ``--checkpoint``): one thin function,
  :func:`download_hub_weights`, fetches the file, which then loads like a local checkpoint.
* a seeded random initialisation (the demo's tiny ViT, and tests).

Normalisation (mean/std) comes from the backbone's pretrained config, e.g. 0.5/0.5 for
``vit_base_patch16_224.orig_in21k``, whose original ``ViT-B_16.npz`` expects inputs in [-1, 1],
ImageNet's for Swin and DINOv2, OpenAI's constants for ``vit_base_patch16_clip_224.openai``.
A checkpoint goes through the architecture's own timm filter, which remaps formats (OpenCLIP,
the original Swin release) and resamples the position embedding (ViT, DINOv2 at 224 px) or the
relative-position tables (Swin) to the model's size.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from methods.backbones import BackboneSpec, describe_backbone

from .errors import BenchError

RANDOM_BACKBONE_SEED = 0  # a random backbone must be the same network in every run

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")

# ---------------------------------------------------------------------------------------
# The demo suite's backbones: tiny enough for a CPU, registered in timm like any other model.

default_cfgs = generate_default_cfgs(
    {
        "vit_demo_tiny": {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 32, 32),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bicubic",
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "swin_demo_tiny": {
            "url": "",
            "num_classes": 0,
            "input_size": (3, 32, 32),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "interpolation": "bicubic",
            "first_conv": "patch_embed.proj",
            "classifier": "head.fc",
        },
    }
)


DEMO_BACKBONES = ("vit_demo_tiny", "swin_demo_tiny")  # random-init only: no weights exist for them anywhere


@register_model
def vit_demo_tiny(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT with 4 blocks of width 64 and 4 heads, patch 4 at 32 px (65 tokens). No published weights
    exist; ``pretrained=True`` loads an export's (``timm.create_model("local-dir:PATH", pretrained=True)``)."""
    args = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4, **kwargs}
    return build_model_with_cfg(VisionTransformer, "vit_demo_tiny", pretrained=pretrained, **args)


@register_model
def swin_demo_tiny(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin with two stages of widths 32 and 64 (2 blocks each), patch 4 and 4 x 4 windows at 32 px
    (8 x 8 tokens, shifted windows in the first stage, one window after the patch merging).

    Wide enough for every Swin method at its published shape (KARST's f = 8 gives m = 4 and 8, so
    ranks 4 and 8 at the default rank 8). No published weights exist; ``pretrained=True`` loads an
    export's, as for ``vit_demo_tiny``.
    """
    args = {
        "img_size": 32,
        "patch_size": 4,
        "embed_dim": 32,
        "depths": (2, 2),
        "num_heads": (2, 4),
        "window_size": 4,
        **kwargs,
    }
    return build_model_with_cfg(SwinTransformer, "swin_demo_tiny", pretrained=pretrained, **args)


# ---------------------------------------------------------------------------------------

BACKBONE_CLASSES = (VisionTransformer, SwinTransformer)
BACKBONE_HINT = "a timm ViT or Swin such as vit_base_patch16_224.orig_in21k or swin_base_patch4_window7_224.ms_in22k"


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from: a local file (with its sha256) or a seeded random init."""

    path: Path | None
    checkpoint_id: str  # "sha256:<hex>" or "random-init:seed<k>"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_weights(backbone: str, checkpoint: Path | None, pretrained: bool) -> Weights:
    """Decide where the weights come from, once per sweep (hashing a checkpoint takes a second)."""
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise BenchError(f"checkpoint {checkpoint} does not exist; pass --checkpoint with a local weights file")
        if checkpoint.suffix not in CHECKPOINT_SUFFIXES:
            raise BenchError(
                f"checkpoint {checkpoint} has an unknown format; use one of {', '.join(CHECKPOINT_SUFFIXES)}"
            )
        return Weights(checkpoint, "sha256:" + sha256_file(checkpoint))
    if not pretrained:
        return Weights(None, f"random-init:seed{RANDOM_BACKBONE_SEED}")
    path = download_hub_weights(backbone)
    return Weights(path, "sha256:" + sha256_file(path))


def download_hub_weights(backbone: str) -> Path:
    """Fetch a timm backbone's weights file from the Hugging Face Hub (the only network access).

    A cached file is used as is. Offline (HF_HUB_OFFLINE) or with the Hub unreachable this fails
    at once: the Hub client would otherwise retry for half a minute before giving up.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    if backbone in DEMO_BACKBONES:
        raise BenchError(
            f"backbone {backbone!r} is the demo suite's tiny network and has no pretrained weights; "
            "run it with --suite demo (random init), or pass --checkpoint PATH with weights of its shape"
        )
    from suites.hub import hub_endpoint, hub_offline, reachable

    cfg = _pretrained_cfg(backbone)
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise BenchError(f"backbone {backbone!r} has no Hugging Face Hub weights in timm; pass --checkpoint PATH")
    filename = cfg.get("hf_hub_filename") or "model.safetensors"
    cached = try_to_load_from_cache(hub_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    if hub_offline():
        raise BenchError(
            f"the weights of {backbone!r} are not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            "pass --checkpoint PATH with a local weights file, or unset HF_HUB_OFFLINE to download them"
        )
    endpoint = hub_endpoint()
    if not reachable(endpoint):
        raise BenchError(
            f"cannot reach the Hugging Face Hub at {endpoint} to download the weights of {backbone!r}; "
            "pass --checkpoint PATH with a local weights file to run offline"
        )
    try:
        return Path(hf_hub_download(hub_id, filename))
    except Exception as exc:  # hub down, gated repo: the fix is the same
        raise BenchError(
            f"could not download the weights of {backbone!r} from the Hub ({type(exc).__name__}); "
            "pass --checkpoint PATH with a local weights file to run offline"
        ) from None


def _pretrained_cfg(backbone: str) -> dict:
    try:
        return dict(timm.models.get_pretrained_cfg(backbone, allow_unregistered=False).to_dict())
    except Exception:
        return {}


def create_backbone(backbone: str, **kwargs) -> nn.Module:
    """A timm ViT or Swin, without weights; anything else is refused in one line."""
    try:
        model = timm.create_model(backbone, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BenchError(
                f"unknown backbone {backbone!r}; use {BACKBONE_HINT} "
                "(list them with python -c \"import timm; print(timm.list_models('vit_*') + timm.list_models('swin_*'))\")"
            ) from None
        raise
    except TypeError:
        # Other architectures reject a ViT's keyword arguments (img_size, ...) before their class
        # can be looked at, so build the bare model on the meta device to say what it is.
        with torch.device("meta"):
            bare = timm.create_model(backbone, pretrained=False)
        if isinstance(bare, BACKBONE_CLASSES):
            raise
        raise BenchError(f"backbone {backbone!r} is a {type(bare).__name__}; bench needs {BACKBONE_HINT}") from None
    if not isinstance(model, BACKBONE_CLASSES):
        raise BenchError(f"backbone {backbone!r} is a {type(model).__name__}; bench needs {BACKBONE_HINT}")
    return model


@lru_cache(maxsize=32)
def backbone_spec(backbone: str, img_size: int | None = None) -> BackboneSpec:
    """Shapes and parameter count of ``backbone``, built on the meta device: no weights, no download."""
    if img_size is not None and img_size < 1:
        raise BenchError(f"--img-size {img_size} must be a positive number of pixels, e.g. 224")
    kwargs = {"img_size": img_size} if img_size else {}
    with torch.device("meta"):
        try:
            model = create_backbone(backbone, num_classes=0, **kwargs)
        except (ValueError, AssertionError) as exc:
            raise BenchError(f"backbone {backbone!r} cannot be built at --img-size {img_size} ({exc})") from None
    patch = max(model.patch_embed.patch_size)
    if img_size is not None and img_size < patch:
        raise BenchError(
            f"--img-size {img_size} is smaller than the {patch}-pixel patches of {backbone!r}; use at least {patch}"
        )
    return describe_backbone(model, backbone)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.5, 0.5, 0.5))), tuple(cfg.get("std", (0.5, 0.5, 0.5)))


@lru_cache(maxsize=2)
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BenchError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}); it must be a .safetensors "
            "file, a weights-only torch state dict (.pth/.pt/.bin) or a Google .npz"
        ) from None
    for wrapper in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"checkpoint {path} does not hold a state dict of tensors")
    return state


def _is_head_key(key: str) -> bool:
    return key.startswith(("head.", "head_dist."))  # a Swin's head.fc. included


def _checkpoint_filter(model: nn.Module):
    """The architecture's own timm filter (ViT: formats and pos-embed; Swin: relative-position tables)."""
    return sys.modules[type(model).__module__].checkpoint_filter_fn


def load_weights(model: nn.Module, path: Path, backbone: str) -> None:
    """Load a checkpoint into ``model`` (head excluded), resampling position tables if needed."""
    if path.suffix == ".npz":
        if not isinstance(model, VisionTransformer):
            raise BenchError(f"checkpoint {path} is a Google .npz, which only ViTs load; pass a .safetensors or .pth")
        try:
            model.load_pretrained(str(path))  # timm's loader for Google's npz format
        except Exception as exc:
            raise BenchError(f"checkpoint {path} is not a ViT npz matching {backbone!r} ({exc})") from None
        return
    state = _checkpoint_filter(model)(dict(_read_state_dict(path)), model)  # remaps formats, resamples
    state = {k: v for k, v in state.items() if not _is_head_key(k)}
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not _is_head_key(k))
    shape = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or missing or shape:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape))
            if keys
        )
        raise BenchError(
            f"checkpoint {path} does not fit backbone {backbone!r} ({detail}); pass the --backbone it was trained as"
        )
    model.load_state_dict(state, strict=False)


def check_weights(weights: Weights, backbone: str, img_size: int) -> None:
    """Load a checkpoint into the backbone once, before a sweep starts.

    A file that cannot be read or does not fit would otherwise fail only inside the first run,
    leaving a FAILED record behind; the state dict stays cached for the runs.
    """
    if weights.path is None:
        return
    torch.manual_seed(RANDOM_BACKBONE_SEED)
    model = create_backbone(backbone, num_classes=0, img_size=img_size)
    load_weights(model, weights.path, backbone)


def reset_head(model: nn.Module) -> None:
    """A fresh head, initialised as timm does (trunc-normal std 0.02, zero bias), from the current RNG."""
    head = model.head
    head = getattr(head, "fc", head)  # a Swin's ClassifierHead pools, then its fc classifies
    if isinstance(head, nn.Linear):
        nn.init.trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)


def build_backbone(
    backbone: str,
    *,
    num_classes: int,
    img_size: int,
    drop_path: float,
    weights: Weights,
    seed: int,
) -> nn.Module:
    """The backbone with its weights loaded and a fresh head drawn from ``seed``.

    A random backbone is drawn from a fixed seed so every run sees the same network; only the
    head (and later the method's own modules) depend on the run's seed.
    """
    torch.manual_seed(RANDOM_BACKBONE_SEED)
    model = create_backbone(backbone, num_classes=num_classes, img_size=img_size, drop_path_rate=drop_path)
    if weights.path is not None:
        load_weights(model, weights.path, backbone)
    torch.manual_seed(seed)
    reset_head(model)
    return model
