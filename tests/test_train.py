"""The learning-rate schedule, the decoded-image cache and the compiled training step."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import methods
from bench.cache import load_split
from bench.train import SplitData, lr_at, train_run
from methods.base import make_config
from suites.base import STAGES
from suites.demo import DEMO_PRESET
from suites.lists import read_list
from tests.conftest import write_task

SCHEDULE = {"total_steps": 1600, "warmup_steps": 160, "base_lr": 1e-3, "warmup_lr": 1e-6, "min_lr": 1e-5}


def test_noah_schedule_warms_up_then_decays_by_cosine():
    lrs = [lr_at(s, **SCHEDULE) for s in range(1600)]
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[80] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)  # linear warm-up
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 160
    assert lrs[160 + 720] == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-3)  # half-way through the cosine
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-8)
    assert all(a >= b for a, b in zip(lrs[160:], lrs[161:], strict=False))


def test_cache_decodes_once_and_notices_edits(tmp_path: Path):
    task = write_task(tmp_path / "t", img_size=12)
    entries = read_list(task, "test.txt", 3)
    cache = tmp_path / "cache"
    images, labels = load_split(entries, 16, "bicubic", cache)
    assert images.shape == (15, 3, 16, 16) and str(images.dtype) == "torch.uint8"
    assert labels.tolist()[:4] == [0, 1, 2, 0]
    [entry] = list(cache.iterdir())
    again, _ = load_split(entries, 16, "bicubic", cache)
    assert (again == images).all() and list(cache.iterdir()) == [entry]  # served from the cache

    path = task / "images/test/000000.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a different mtime, even on coarse clocks
    edited, _ = load_split(entries, 16, "bicubic", cache)
    assert int(edited[0].sum()) == 0 and len(list(cache.iterdir())) == 2


def _tiny_lora_run(compile_mode: str, device: str = "cpu", stage: str = "final"):
    """Two epochs of LoRA on a 2-block ViT, 20 images of 32 px (the last batch of an epoch is partial)."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> SplitData:
        return SplitData(
            torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 5, (n,), generator=g),
        )

    train, evaluate = split(20), split(10)
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=2, num_classes=5
    )
    method = methods.get_method("lora")
    model = method.apply(model, make_config(method))
    preset = DEMO_PRESET.with_overrides(epochs=2, warmup_epochs=1, batch_size=8)
    return train_run(
        model,
        method,
        preset,
        STAGES[stage],
        train,
        evaluate,
        seed=0,
        device=torch.device(device),
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        compile_mode=compile_mode,
    )


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_step():
    """The one-graph step (normalisation + model + loss + correct count) changes speed, not results."""
    eager, compiled = _tiny_lora_run("eager"), _tiny_lora_run("step")
    for a, b in zip(eager.epochs, compiled.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4)
        assert b.train_acc == a.train_acc
    for name, value in eager.trainable_state.items():
        torch.testing.assert_close(compiled.trainable_state[name], value, rtol=1e-3, atol=1e-5)
    assert eager.trainable_state["head.weight"].abs().sum() > 0  # it did train


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ValueError, match="compile_mode 'fast' is not one of eager, model, step, step-cudagraphs"):
        _tiny_lora_run("fast")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_trains_like_the_compiled_step():
    """CUDA-graph replay (the CUDA default) against the same graph launched kernel by kernel, in the
    tune stage, whose per-epoch evaluation runs the eager model between replays."""
    plain, graphs = _tiny_lora_run("step", "cuda", "tune"), _tiny_lora_run("step-cudagraphs", "cuda", "tune")
    for a, b in zip(plain.epochs, graphs.epochs, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-3)
        assert b.eval_acc is not None


def test_a_method_whose_step_cannot_be_graph_captured_compiles_without_cuda_graphs():
    """OFT's Cayley transform solves a linear system, which a CUDA graph cannot capture: on an H200
    the captured step failed with cudaErrorStreamCaptureUnsupported, so its runs compile plainly."""
    import methods
    from bench.train import CUDA_COMPILE_MODE, default_compile_mode

    cuda = torch.device("cuda")
    assert default_compile_mode(cuda, methods.get_method("lora")) == CUDA_COMPILE_MODE
    assert default_compile_mode(cuda, methods.get_method("oft")) == "step"
    # a variant is its base method; a composition with OFT in it cannot be captured either
    from bench.method_entries import resolve_entry

    assert default_compile_mode(cuda, resolve_entry("oft[block_size=8]")) == "step"
    assert default_compile_mode(cuda, resolve_entry("bitfit+oft")) == "step"
    assert default_compile_mode(cuda, resolve_entry("bitfit+lora")) == CUDA_COMPILE_MODE
    assert default_compile_mode(torch.device("cpu"), methods.get_method("oft")) == "eager"
