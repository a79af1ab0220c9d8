"""Loading backbones offline: formats, position-embedding resampling, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from bench.backbone import Weights, build_backbone, normalization, resolve_weights
from bench.errors import BenchError


def _saved_vit(tmp_path: Path, suffix: str, img_size: int = 32) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(7)
    model = timm.create_model("vit_demo_tiny", num_classes=0, img_size=img_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # nested, as training scripts save it
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_loads_backbone_and_keeps_a_fresh_head(tmp_path: Path, suffix: str):
    path, state = _saved_vit(tmp_path, suffix)
    weights = resolve_weights("vit_demo_tiny", path, pretrained=True)
    assert weights.checkpoint_id.startswith("sha256:") and len(weights.checkpoint_id) == 71
    model = build_backbone("vit_demo_tiny", num_classes=5, img_size=32, drop_path=0.0, weights=weights, seed=0)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.head.weight.shape == (5, 64) and float(model.head.bias.detach().abs().sum()) == 0.0
    # the head depends on the run's seed, the backbone does not
    other = build_backbone("vit_demo_tiny", num_classes=5, img_size=32, drop_path=0.0, weights=weights, seed=1)
    assert torch.equal(other.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert not torch.equal(other.head.weight, model.head.weight)


def test_position_embedding_is_resampled_to_the_preset_size(tmp_path: Path):
    path, state = _saved_vit(tmp_path, ".safetensors", img_size=32)  # 8x8 patch grid
    weights = resolve_weights("vit_demo_tiny", path, pretrained=True)
    model = build_backbone("vit_demo_tiny", num_classes=3, img_size=48, drop_path=0.0, weights=weights, seed=0)
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 64)
    assert torch.equal(model.pos_embed[0, 0], state["pos_embed"][0, 0])  # class token position kept
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_random_backbone_is_the_same_network_in_every_run():
    weights = Weights(None, "random-init:seed0")
    a = build_backbone("vit_demo_tiny", num_classes=3, img_size=32, drop_path=0.0, weights=weights, seed=0)
    b = build_backbone("vit_demo_tiny", num_classes=3, img_size=32, drop_path=0.0, weights=weights, seed=5)
    assert torch.equal(a.blocks[3].mlp.fc2.weight, b.blocks[3].mlp.fc2.weight)
    assert normalization(a) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_bad_checkpoints_are_named(tmp_path: Path):
    with pytest.raises(BenchError, match=r"checkpoint .*missing\.pth does not exist"):
        resolve_weights("vit_demo_tiny", tmp_path / "missing.pth", pretrained=True)
    odd = tmp_path / "w.ckpt2"
    odd.write_bytes(b"x")
    with pytest.raises(BenchError, match=r"unknown format"):
        resolve_weights("vit_demo_tiny", odd, pretrained=True)
    corrupt = tmp_path / "w.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    weights = resolve_weights("vit_demo_tiny", corrupt, pretrained=True)
    with pytest.raises(BenchError, match=r"w\.safetensors cannot be read"):
        build_backbone("vit_demo_tiny", num_classes=3, img_size=32, drop_path=0.0, weights=weights, seed=0)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path):
    path, _ = _saved_vit(tmp_path, ".safetensors")
    weights = resolve_weights("vit_tiny_patch16_224", path, pretrained=True)
    with pytest.raises(BenchError, match=r"does not fit backbone 'vit_tiny_patch16_224'.*--backbone"):
        build_backbone("vit_tiny_patch16_224", num_classes=3, img_size=224, drop_path=0.0, weights=weights, seed=0)


def test_unknown_and_non_vit_backbones():
    from bench.backbone import backbone_spec

    with pytest.raises(BenchError, match=r"unknown backbone 'vit_nonexistent'"):
        backbone_spec("vit_nonexistent")
    with pytest.raises(BenchError, match=r"'resnet18' is a ResNet; bench needs a timm ViT or Swin"):
        backbone_spec("resnet18")


def test_hub_download_fails_with_the_offline_fix():
    # HF_HUB_OFFLINE=1 in the tests: the thin hub path must turn that into a one-line fix.
    with pytest.raises(BenchError, match=r"pass --checkpoint PATH"):
        resolve_weights("vit_base_patch16_224.orig_in21k", None, pretrained=True)


def test_google_npz_checkpoint_loads_through_the_same_path(tmp_path: Path):
    from tests.npz_writer import save_vit_as_google_npz

    torch.manual_seed(3)
    source = timm.create_model("vit_demo_tiny", num_classes=0)
    path = tmp_path / "ViT-tiny.npz"
    save_vit_as_google_npz(source, path)
    weights = resolve_weights("vit_demo_tiny", path, pretrained=True)
    model = build_backbone("vit_demo_tiny", num_classes=4, img_size=32, drop_path=0.0, weights=weights, seed=0)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.head.weight.shape == (4, 64)


def test_a_demo_backbone_outside_the_demo_suite_says_it_has_no_weights(cli, noah_root: Path):
    code, _, err = cli(
        "run", "--suite", "folder", "--data-root", str(noah_root), "--backbone", "vit_demo_tiny",
        "--methods", "linear", "--tasks", "alpha",
    )  # fmt: skip
    assert code == 2, err
    assert "'vit_demo_tiny' is the demo suite's tiny network and has no pretrained weights" in err
    assert "--suite demo" in err and "--checkpoint PATH" in err and len(err.strip().splitlines()) == 1
