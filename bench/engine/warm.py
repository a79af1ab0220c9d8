"""Compile one kind of training step into the cache folder, in a process of its own.

A run whose kind of step is not in the compile cache starts eagerly and calls
:meth:`bench.compile_cache.StepCache.warm_in_background`, which runs this module
(``python -m bench.engine.warm REQUEST``) in a process of its own. That process builds the same model (random weights: a graph depends on shapes,
not values), prepares it as :func:`bench.train.train_run` does, runs one full training step through
the compiled features, and marks the kind warm in the cache's ledger. The run switches to the
compiled step at its next epoch. Whatever this process prints goes to ``kinds/<key>.log`` in the
cache folder, never to the user's terminal; if it fails, the run simply stays eager.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from ..compile_cache import StepKind, WarmRequest


def warm_step(request: WarmRequest, folder: str, kind: StepKind) -> None:
    from ..compile_cache import Ledger

    ledger = Ledger(Path(folder))
    try:
        t0 = time.perf_counter()
        compile_kind(request, Path(folder))
        ledger.record(kind, time.perf_counter() - t0, by="background")
        print(f"compiled {kind.description} in {time.perf_counter() - t0:.1f} s", flush=True)
    except BaseException:  # the run that asked goes on eagerly; the log says why
        traceback.print_exc()
    finally:
        ledger.release(kind)


def compile_kind(request: WarmRequest, folder: Path) -> None:
    """Build the run's model and run one training step (forward and backward) compiled into ``folder``."""
    import torch

    from ..backbone import Weights
    from ..compile_cache import use_cache_folder
    from ..train import Normalize, hold_frozen_in_bf16, run_compiled_step
    from .work import build_model

    use_cache_folder(folder)
    device = torch.device(request.device)
    model, mean, std = build_model(request.run, Weights(None, "random-init:compile-warm-up"))
    model.to(device)
    if request.frozen_bf16:
        hold_frozen_in_bf16(model)
    preset = request.run.preset
    generator = torch.Generator().manual_seed(0)
    shape = (preset.batch_size, 3, preset.img_size, preset.img_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).to(device)
    labels = torch.zeros(preset.batch_size, dtype=torch.int64, device=device)
    run_compiled_step(model, Normalize(mean, std).to(device), device, request.mode, images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(request_path: str) -> None:
    """Read the request the parent wrote (a file only it and this process use), then compile."""
    import pickle

    path = Path(request_path)
    with path.open("rb") as f:
        request, folder, kind = pickle.load(f)
    path.unlink(missing_ok=True)
    warm_step(request, folder, kind)


if __name__ == "__main__":
    main(sys.argv[1])
