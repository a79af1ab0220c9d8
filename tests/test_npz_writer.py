"""The Google-layout npz writer round-trips through timm's own npz loader, bit for bit."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from tests.npz_writer import save_vit_as_google_npz


def _random_vit(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=4,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():  # timm inits biases to 0 and norms to 1: make every tensor seed-dependent
            p.normal_()
    return model


def test_npz_round_trips_through_timm_loader(tmp_path: Path):
    model = _random_vit(0)
    path = tmp_path / "w.npz"
    save_vit_as_google_npz(model, path)

    model2 = _random_vit(1)
    model2.load_pretrained(str(path))

    state, state2 = model.state_dict(), model2.state_dict()
    assert state.keys() == state2.keys()
    for key in ("head.weight", "head.bias", "pos_embed", "cls_token", "blocks.1.attn.qkv.weight"):
        assert key in state
    mismatched = [k for k in state if not torch.equal(state[k], state2[k])]
    assert not mismatched

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))
