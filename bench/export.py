"""Taking a finished run out of the tracking store as a model others can load.

Three formats, each a folder with a model card (``README.md``):

* ``peft``: for methods that run through Hugging Face ``peft`` (LoRA and its options, (IA)³, LoHa, LoKr,
  VeRA, OFT, BOFT, FourierFT, LN-tuning, GLoRA). ``adapter_config.json`` and
  ``adapter_model.safetensors`` as ``PeftModel.save_pretrained`` writes them, the head saved with
  the adapter (``modules_to_save``); ``PeftModel.from_pretrained`` on the same timm backbone
  loads it.
* ``merged``: for mergeable methods. The adapter folded into plain timm layers (the method's own
  ``merge``, the model the run scored), saved as one timm state dict with the head
  (``model.safetensors``) and timm's ``config.json``: ``timm.create_model(name, num_classes=C)``
  then ``load_state_dict`` gives the run's model.
* ``bench``: for every method, mergeable or not. The trainable tensors as the run stored them and
  the run's resolved config; :func:`load_bench_export` rebuilds the model.

The run is rebuilt exactly as it trained: the same backbone weights (checked by hash), the
method applied with the run's config, then the run's trainable tensors loaded.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, schema
from .errors import BenchError
from .sources import run_sources

FORMATS = ("peft", "merged", "bench")
CARD = "README.md"
MERGED_WEIGHTS = "model.safetensors"
TIMM_CONFIG = "config.json"
BENCH_TENSORS = "trainable.safetensors"
BENCH_CONFIG = "resolved.json"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
_FIND_HINT = (
    "list runs with `bench runs --suite SUITE` and pass a run key (or its first 8 characters from the key "
    "column), a label such as lora/digits/s0, or an MLflow run id"
)


@dataclass
class StoredRun:
    """A finished run as the tracking store holds it."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    resolved: dict[str, Any]  # config/resolved.json
    state: dict[str, torch.Tensor] = field(repr=False)  # the trainable tensors
    predictions: list[dict[str, str]] = field(repr=False)  # eval/predictions.csv rows

    @property
    def spec(self) -> dict[str, Any]:
        return self.resolved["spec"]

    @property
    def label(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id)

    @property
    def accuracy(self) -> tuple[str, float | None]:
        metric = schema.eval_metric(self.spec["stage"])
        return metric, self.metrics.get(metric)


# ---------------------------------------------------------------------------------------------
# finding a run


def _finished_runs(client: Any, filter_string: str) -> list[Any]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    flt = f"tags.`{schema.KIND}` = '{schema.KIND_RUN}' and attributes.status = 'FINISHED' and {filter_string}"
    return list(client.search_runs(experiments, filter_string=flt, max_results=1000))


def find_run(client: Any, ref: str) -> Any:
    """The finished MLflow run ``ref`` names: a run key (or a prefix of 8+ characters), a label
    such as ``lora/digits/s0``, or an MLflow run id. Several matches with different run keys are
    refused, naming them."""
    ref = ref.strip()
    if not ref or "'" in ref:
        raise BenchError(f"run {ref!r} is not a run key, label or run id; {_FIND_HINT}")
    if re.fullmatch(r"[0-9a-f]{8,32}", ref):
        op = "=" if len(ref) == 32 else "LIKE"
        value = ref if len(ref) == 32 else ref + "%"
        found = _finished_runs(client, f"tags.`{schema.RUN_KEY}` {op} '{value}'")
        if not found and len(ref) == 32:
            found = _by_run_id(client, ref)
    else:
        found = _finished_runs(client, f"attributes.run_name = '{ref}'")
    keys = {r.data.tags.get(schema.RUN_KEY) for r in found}
    if not found:
        raise BenchError(f"no finished run matches {ref!r}; {_FIND_HINT}")
    if len(keys) > 1:
        shown = "; ".join(
            f"{r.data.tags.get(schema.RUN_KEY, '')[:12]} ({_describe(r)})"
            for r in sorted(found, key=lambda r: r.data.tags.get(schema.RUN_KEY, ""))[:6]
        )
        raise BenchError(f"{len(keys)} different runs match {ref!r}: {shown}; pass one run key instead")
    return max(found, key=lambda r: r.info.end_time or 0)  # one run key: its newest record


def _by_run_id(client: Any, run_id: str) -> list[Any]:
    try:
        run = client.get_run(run_id)
    except Exception:
        return []
    if run.data.tags.get(schema.KIND) != schema.KIND_RUN:
        raise BenchError(f"MLflow run {run_id} is a sweep or study parent, not a run; {_FIND_HINT}")
    if run.info.status != "FINISHED":
        raise BenchError(f"MLflow run {run_id} is {run.info.status}, not FINISHED; only finished runs can be exported")
    return [run]


def _describe(run: Any) -> str:
    t = run.data.tags
    return f"suite {t.get(schema.SUITE)}, stage {t.get(schema.STAGE)}, budget {t.get(schema.BUDGET)}, " + (
        f"hparams {', '.join(run_sources(t))}"
    )


def load_stored_run(client: Any, run: Any) -> StoredRun:
    """Download what a run stored: resolved config, trainable tensors, predictions."""
    from safetensors.torch import load

    with tempfile.TemporaryDirectory() as tmp:
        try:
            resolved = json.loads(
                Path(client.download_artifacts(run.info.run_id, schema.RESOLVED_CONFIG, tmp)).read_text()
            )
            state = load(Path(client.download_artifacts(run.info.run_id, schema.TRAINABLE_TENSORS, tmp)).read_bytes())
            text = Path(client.download_artifacts(run.info.run_id, schema.PREDICTIONS, tmp)).read_text()
        except Exception as exc:
            detail = " ".join(str(exc).split())[:160]
            raise BenchError(
                f"run {run.info.run_id} lacks its stored artifacts ({type(exc).__name__}: {detail}); "
                "check that the artifact store is reachable from here, or train the run again"
            ) from None
    return StoredRun(
        run.info.run_id,
        dict(run.data.tags),
        dict(run.data.metrics),
        resolved,
        state,
        list(csv.DictReader(io.StringIO(text))),
    )


# ---------------------------------------------------------------------------------------------
# rebuilding the run's model


def run_weights(stored: StoredRun, checkpoint: Path | None = None):
    """The backbone weights the run trained from, checked against the hash it recorded."""
    from .backbone import Weights, resolve_weights

    spec = stored.spec
    wanted = spec["checkpoint"]
    if wanted.startswith("random-init:"):
        return Weights(None, wanted)
    weights = resolve_weights(spec["backbone"], checkpoint, pretrained=True)
    if weights.checkpoint_id != wanted:
        raise BenchError(
            f"the backbone weights found ({weights.checkpoint_id[:19]}…) are not the ones run {stored.label} trained "
            f"from ({wanted[:19]}…); pass --checkpoint PATH with the file whose sha256 is {wanted.removeprefix('sha256:')}"
        )
    return weights


def frozen_backbone(stored: StoredRun, checkpoint: Path | None, seed: int) -> nn.Module:
    """The run's backbone with its weights and a fresh head, built for inference (no drop-path)."""
    from .backbone import build_backbone

    spec = stored.spec
    return build_backbone(
        spec["backbone"],
        num_classes=spec["num_classes"],
        img_size=spec["hparams"]["img_size"],
        drop_path=0.0,
        weights=run_weights(stored, checkpoint),
        seed=seed,
    )


def rebuild_model(stored: StoredRun, checkpoint: Path | None = None) -> tuple[nn.Module, Any, Any]:
    """The run's trained model (unmerged), its method and its config."""
    from methods.base import make_config

    from .backbone import build_backbone
    from .method_entries import resolve_entry

    spec = stored.spec
    method = resolve_entry(spec["method"])
    config = make_config(method, spec["method_config"])
    model = build_backbone(
        spec["backbone"],
        num_classes=spec["num_classes"],
        img_size=spec["hparams"]["img_size"],
        drop_path=spec["hparams"]["drop_path"],
        weights=run_weights(stored, checkpoint),
        seed=spec["seed"],
    )
    model = method.apply(model, config)
    missing = sorted(set(stored.state) - set(dict(model.named_parameters())))
    if missing:
        raise BenchError(
            f"run {stored.label}'s stored tensors do not fit method {spec['method']!r} as installed "
            f"(unknown: {', '.join(missing[:3])}); export it with the bench version that trained it ({stored.tags.get(schema.VERSION)})"
        )
    params = dict(model.named_parameters())
    wrong = [(n, t) for n, t in stored.state.items() if t.shape != params[n].shape]
    if wrong:
        name, tensor = wrong[0]
        raise BenchError(
            f"run {stored.label}'s stored tensor {name} has shape {list(tensor.shape)}, but method {spec['method']!r} "
            f"as installed builds {list(params[name].shape)}; the store's {schema.TRAINABLE_TENSORS} was changed or "
            f"written by another version: export with the bench version that trained it ({stored.tags.get(schema.VERSION)}) "
            "or train the run again"
        )
    with torch.no_grad():
        for name, tensor in stored.state.items():
            params[name].copy_(tensor)
    return model.eval(), method, config


def eval_split(stored: StoredRun, rows: list[int] | None = None, task_dir: Path | None = None):
    """The split the run scored, decoded as the run decoded it, and the stored predictions.

    ``rows`` picks examples by position in the split (all by default); ``task_dir`` reads the
    images from another copy of the task folder than the one the run trained on.
    """
    from suites.images import decode_images
    from suites.lists import ListEntry, inside_folder

    hp = stored.spec["hparams"]
    root = task_dir or Path(stored.resolved["data"]["task_dir"])
    picked = stored.predictions if rows is None else [stored.predictions[i] for i in rows]
    entries = []
    for row in picked:  # the stored paths are the list's, relative to the task folder; none may leave it
        where = f"run {stored.label}'s {schema.PREDICTIONS}:{row['index']}"
        entries.append(ListEntry(Path(inside_folder(root, row["path"], where)), int(row["label"]), where))
    resize = hp.get("resize")
    size, crop = (hp["img_size"], None) if resize is None else (resize, hp["img_size"])
    images, labels = decode_images(entries, size, hp["interpolation"], crop)
    preds = torch.tensor([int(row["prediction"]) for row in picked])
    return images, labels, preds


def predict(model: nn.Module, stored: StoredRun, images: torch.Tensor) -> torch.Tensor:
    """Predictions of ``model`` on uint8 ``images``, normalised as the run normalised them."""
    from .train import Normalize, SplitData
    from .train import predict as run_predict

    norm = stored.resolved["normalization"]
    data = SplitData(images, torch.zeros(len(images), dtype=torch.int64))
    return run_predict(model, Normalize(tuple(norm["mean"]), tuple(norm["std"])), data, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# the formats


def uses_peft(model: nn.Module) -> bool:
    return isinstance(getattr(model, "peft_config", None), dict) and bool(model.peft_config)


def default_format(method: Any, model: nn.Module) -> str:
    return "merged" if method.mergeable else "bench"


def _classifier(backbone: str) -> str:
    """The head's module path: ``head`` on a ViT, ``head.fc`` behind a Swin's pooling head."""
    from .backbone import backbone_spec

    return "head.fc" if backbone_spec(backbone).family == "swin" else "head"


def squash_crop_pct(img_size: int, resize: int | None) -> float:
    """The ``crop_pct`` under which timm's eval transform reproduces bench's decoding exactly.

    Bench resizes every image to a square (``resize`` or ``img_size``, aspect ratio not kept) and,
    with ``resize``, centre-crops ``img_size``. timm's ``crop_mode="squash"`` does the same:
    ``Resize((floor(img_size / crop_pct),) * 2)`` then ``CenterCrop(img_size)``
    (``timm.data.transforms_factory.transforms_imagenet_eval``). The plain ratio can land one ulp
    short of ``resize`` (9 / (9 / 14) = 13.999…), so it is lowered until the floor is exact.
    """
    import math

    target = resize or img_size
    if target < img_size:
        raise BenchError(f"preset resize {target} is smaller than img_size {img_size}; a centre crop cannot grow")
    pct = img_size / target
    while math.floor(img_size / pct) < target:
        pct = math.nextafter(pct, 0.0)
    return pct


def data_config(stored: StoredRun) -> dict[str, Any]:
    """The run's evaluation preprocessing in the fields ``timm.data.resolve_data_config`` reads."""
    hp = stored.spec["hparams"]
    norm = stored.resolved["normalization"]
    return {
        "input_size": [3, hp["img_size"], hp["img_size"]],
        "interpolation": hp["interpolation"],
        "crop_pct": squash_crop_pct(hp["img_size"], hp.get("resize")),
        "crop_mode": "squash",
        "mean": list(norm["mean"]),
        "std": list(norm["std"]),
    }


def _timm_config(stored: StoredRun) -> dict[str, Any]:
    """timm's ``config.json``: ``timm.create_model("hf-hub:…")`` or ``("local-dir:…")`` reads it, and
    ``timm.data.resolve_data_config`` + ``create_transform`` rebuild the run's preprocessing from it."""
    spec = stored.spec
    arch, _, tag = spec["backbone"].partition(".")
    return {
        "architecture": arch,
        "num_classes": spec["num_classes"],
        "model_args": {"img_size": spec["hparams"]["img_size"]},
        "pretrained_cfg": {
            "tag": tag or None,
            **data_config(stored),
            "num_classes": spec["num_classes"],
            "classifier": _classifier(spec["backbone"]),
        },
    }


def write_merged(model: nn.Module, method: Any, stored: StoredRun, out: Path) -> None:
    from safetensors.torch import save_file

    from .backbone import create_backbone

    if not method.mergeable:
        raise BenchError(
            f"method {method.name!r} cannot merge into plain timm layers; export run {stored.label} with --format bench"
        )
    merged = method.merge(model)
    state = {k: v.detach().contiguous().clone() for k, v in merged.state_dict().items()}
    spec = stored.spec
    with torch.device("meta"):
        plain = create_backbone(spec["backbone"], num_classes=spec["num_classes"], img_size=spec["hparams"]["img_size"])
    expected = plain.state_dict()
    extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    if extra or missing:  # a merge that leaves its own modules behind is not a plain timm model
        raise BenchError(
            f"method {method.name!r} merged into a model that is not plain {spec['backbone']} "
            f"(extra {extra[:3]}, missing {missing[:3]}); export run {stored.label} with --format bench"
        )
    save_file(state, str(out / MERGED_WEIGHTS), metadata={"format": "pt"})
    (out / TIMM_CONFIG).write_text(json.dumps(_timm_config(stored), indent=2) + "\n")


def write_peft(model: nn.Module, method: Any, stored: StoredRun, out: Path, checkpoint: Path | None) -> None:
    """The adapter through peft's own writer: a PeftModel over a fresh copy of the backbone, its
    head (``modules_to_save``) and adapter weights set to the run's."""
    import copy

    from peft import get_peft_model

    if not uses_peft(model):
        fits = " or ".join(f"--format {f}" for f in (("merged", "bench") if method.mergeable else ("bench",)))
        raise BenchError(
            f"method {method.name!r} does not run through peft, so it has no peft format; "
            f"export run {stored.label} with {fits}"
        )
    (adapter_name, config), *more = model.peft_config.items()
    if more:
        raise BenchError(f"run {stored.label} holds {len(more) + 1} peft adapters; --format peft writes one")
    config = copy.deepcopy(config)
    config.modules_to_save = ["head"]  # the head trains with the adapter: it travels with it
    config.inference_mode = False
    spec = stored.spec
    base = frozen_backbone(stored, checkpoint, seed=spec["seed"])
    peft_model = get_peft_model(base, config, adapter_name=adapter_name)
    peft_model.peft_config[adapter_name].base_model_name_or_path = spec["backbone"]
    targets = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, tensor in stored.state.items():
            if name.startswith("head."):
                key = f"base_model.model.head.modules_to_save.{adapter_name}.{name.removeprefix('head.')}"
            else:
                key = f"base_model.model.{name}"
            if key not in targets:
                raise BenchError(
                    f"run {stored.label}'s tensor {name} has no place in the peft adapter of {method.name!r}"
                )
            targets[key].copy_(tensor)
    peft_model.save_pretrained(str(out), save_embedding_layers=False)  # a ViT has no token embeddings to check
    # peft's adapter config has no field for preprocessing: timm's config.json of the base carries it
    (out / TIMM_CONFIG).write_text(json.dumps(_timm_config(stored), indent=2) + "\n")


def write_bench(stored: StoredRun, out: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in stored.state.items()}, str(out / BENCH_TENSORS))
    (out / BENCH_CONFIG).write_text(json.dumps(stored.resolved, indent=2, sort_keys=True) + "\n")


def load_bench_export(folder: Path, checkpoint: Path | None = None) -> nn.Module:
    """The model a ``--format bench`` export holds, rebuilt: backbone, method, trained tensors."""
    from safetensors.torch import load_file

    resolved = json.loads((folder / BENCH_CONFIG).read_text())
    stored = StoredRun("", {}, {}, resolved, load_file(str(folder / BENCH_TENSORS)), [])
    return rebuild_model(stored, checkpoint)[0]


# ---------------------------------------------------------------------------------------------
# the model card


def _versions() -> dict[str, str]:
    out = {"bench": __version__}
    for name in ("torch", "timm", "peft", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def training_command(stored: StoredRun) -> str:
    """The command line that trained the run: as recorded, or rebuilt from its identity."""
    recorded = stored.tags.get(schema.COMMAND)
    if recorded:
        return recorded
    spec = stored.spec
    args = ["bench", "run", "--suite", spec["suite"], "--tasks", spec["task"], "--methods", spec["method"]]
    args += ["--seeds", f"{spec['seed']},", "--stage", spec["stage"], "--backbone", spec["backbone"]]
    args += ["--epochs", str(spec["hparams"]["epochs"])]
    args += [f"--set={spec['method']}.{k}={v}" for k, v in sorted(spec["method_config"].items()) if v is not None]
    return shlex.join(args) + "  # rebuilt from the run's identity"


def model_card(stored: StoredRun, fmt: str, method: Any) -> str:
    spec = stored.spec
    hp = spec["hparams"]
    metric, acc = stored.accuracy
    training_env = stored.resolved.get("environment", {})
    lib = {"peft": "peft", "merged": "timm", "bench": "bench"}[fmt]
    register = _registers(spec["backbone"])
    load = {
        "peft": (
            f"import json\nfrom pathlib import Path\n\nimport timm, torch\nfrom peft import PeftModel\n{register}\n"
            f"{_base_snippet(stored)}\n"
            'model = PeftModel.from_pretrained(base, "PATH_OR_REPO").eval()\n'
            'pretrained_cfg = json.loads(Path("PATH/config.json").read_text())["pretrained_cfg"]\n'
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg))\n"
        ),
        "merged": (
            f"import timm\n{register}\n"
            'model = timm.create_model("local-dir:PATH", pretrained=True).eval()  # or "hf-hub:OWNER/NAME"\n'
            "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))\n"
        ),
        "bench": (
            'from pathlib import Path\nfrom bench.export import load_bench_export\n\nmodel = load_bench_export(Path("PATH")).eval()\n'
        ),
    }[fmt]
    norm = stored.resolved["normalization"]
    versions = "\n".join(f"| {k} | {training_env.get(k, '–')} | {v} |" for k, v in _versions().items())
    return f"""---
library_name: {lib}
base_model: {spec["backbone"]}
tags:
- image-classification
- bench
- {spec["method"]}
---

# {spec["method"]} on {spec["suite"]}/{spec["task"]} (seed {spec["seed"]})

A `{spec["method"]}` fine-tune of `{spec["backbone"]}`, exported with `bench export --format {fmt}` from run
`{stored.label}` (run key `{spec.get("run_key", stored.resolved.get("run_key"))}`).

| | |
|---|---|
| backbone | `{spec["backbone"]}` at {hp["img_size"]} px |
| backbone weights | `{spec["checkpoint"]}` |
| method | `{spec["method"]}`{" (merged into plain timm layers)" if fmt == "merged" else ""} |
| method config | `{json.dumps(spec["method_config"], sort_keys=True)}` |
| suite / task | `{spec["suite"]}` / `{spec["task"]}` ({spec["num_classes"]} classes, stage `{spec["stage"]}`) |
| data fingerprint | `{spec["data"]}` |
| seed | {spec["seed"]} |
| {metric} | {f"{100 * acc:.2f} %" if acc is not None else "–"} |
| preset | `{spec["preset"]}`: `{json.dumps(hp, sort_keys=True)}` |
| input | {_input_text(hp)}; mean {norm["mean"]}, std {norm["std"]} |

Trained with:

```
{training_command(stored)}
```

## Load it

```python
{load}```

Inputs are RGB images {_input_text(hp)}, scaled to [0, 1] and normalised with the mean and std above.
{_transform_note(fmt)} {_precision_note(stored)}

## Package versions

| package | training | export |
|---|---|---|
{versions}
"""


def _input_text(hp: dict[str, Any]) -> str:
    size, resize, interp = hp["img_size"], hp.get("resize"), hp["interpolation"]
    if resize is None:
        return f"resized ({interp}) to {size}×{size}, aspect ratio not kept, no crop"
    return f"resized ({interp}) to {resize}×{resize}, aspect ratio not kept, then centre-cropped to {size}×{size}"


def _transform_note(fmt: str) -> str:
    if fmt == "bench":
        return "`resolved.json` holds this preprocessing (`spec.hparams`, `normalization`)."
    return (
        f"`{TIMM_CONFIG}` holds it in the fields timm reads (`crop_mode: squash` with the `crop_pct` that gives "
        "exactly these sizes), so the transform above reproduces the run's inputs."
    )


def _registers(backbone: str) -> str:
    """The import that registers ``backbone`` in timm, when bench defines it (the demo's tiny ViT)."""
    import timm

    arch = backbone.partition(".")[0]
    if timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__ == "bench.backbone":
        return "import bench.backbone  # registers " + arch + " in timm\n"
    return ""


def _base_snippet(stored: StoredRun) -> str:
    spec, hp = stored.spec, stored.spec["hparams"]
    create = f'timm.create_model("{spec["backbone"]}", num_classes={spec["num_classes"]}, img_size={hp["img_size"]})'
    if spec["checkpoint"].startswith("random-init:seed"):
        seed = spec["checkpoint"].removeprefix("random-init:seed")
        return f"torch.manual_seed({seed})  # the run's backbone is timm's random init from this seed\nbase = {create}"
    return (
        f"base = {create}\n"
        f"# load the backbone weights whose sha256 is {spec['checkpoint'].removeprefix('sha256:')}, head excluded:\n"
        'base.load_state_dict(timm.models.load_checkpoint_state_dict("BACKBONE.safetensors"), strict=False)'
    )


def _precision_note(stored: StoredRun) -> str:
    device = stored.tags.get(schema.DEVICE, "")
    if device == "cuda":
        return "The run scored its test split under bf16 autocast on CUDA; in fp32 a few predictions may differ."
    return "The run scored its test split in fp32 on the CPU; this export reproduces those predictions exactly."


# ---------------------------------------------------------------------------------------------
# the export


@dataclass
class ExportResult:
    folder: Path
    format: str
    run: StoredRun
    files: list[str]
    verified: tuple[int, int] | None = None  # (equal predictions, all), with --verify


def export_run(
    client: Any,
    ref: str,
    out: Path,
    fmt: str | None = None,
    checkpoint: Path | None = None,
    verify: bool = False,
) -> ExportResult:
    """Export the finished run ``ref`` into the folder ``out`` (created; must be empty if it exists)."""
    if fmt is not None and fmt not in FORMATS:
        raise BenchError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"export folder {out} exists and is not empty; choose another --out or empty it")
    stored = load_stored_run(client, find_run(client, ref))
    model, method, _ = rebuild_model(stored, checkpoint)
    fmt = fmt or default_format(method, model)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "merged":
        write_merged(model, method, stored, out)
    elif fmt == "peft":
        write_peft(model, method, stored, out, checkpoint)
    else:
        write_bench(stored, out)
    (out / CARD).write_text(model_card(stored, fmt, method))
    _apply_umask(out)
    result = ExportResult(out, fmt, stored, sorted(p.name for p in out.iterdir()))
    if verify:
        result.verified = verify_export(result, checkpoint)
    return result


def _apply_umask(folder: Path) -> None:
    """Give every exported file the mode the user's umask asks for: safetensors writes its files
    0600 whatever the umask, which would keep an export meant for sharing private."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def load_export(folder: Path, fmt: str, stored: StoredRun, checkpoint: Path | None = None) -> nn.Module:
    """The model an export holds, loaded as its model card says (timm, peft or bench)."""
    if fmt == "merged":
        from safetensors.torch import load_file

        from .backbone import create_backbone

        spec = stored.spec
        model = create_backbone(spec["backbone"], num_classes=spec["num_classes"], img_size=spec["hparams"]["img_size"])
        model.load_state_dict(load_file(str(folder / MERGED_WEIGHTS)))
        return model.eval()
    if fmt == "peft":
        from peft import PeftModel

        # any head will do: the adapter carries the trained one
        base = frozen_backbone(stored, checkpoint, seed=stored.spec["seed"] + 1)
        return PeftModel.from_pretrained(base, str(folder)).eval()
    return load_bench_export(folder, checkpoint).eval()


def verify_export(result: ExportResult, checkpoint: Path | None = None) -> tuple[int, int]:
    """Load the export as a user would and count its test predictions equal to the stored ones."""
    images, _, stored_preds = eval_split(result.run)
    model = load_export(result.folder, result.format, result.run, checkpoint)
    preds = predict(model, result.run, images)
    return int((preds == stored_preds).sum()), len(stored_preds)


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload an export folder to the Hugging Face Hub repository ``repo``; return its URL.

    The only code that talks to the Hub for exports: offline, or with the Hub unreachable or the
    token missing, it fails in one line.
    """
    import os

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if flag in ("1", "ON", "YES", "TRUE"):
        raise BenchError(
            f"cannot push {folder} to the Hub repository {repo}: HF_HUB_OFFLINE is set; unset it (and log in with "
            "`hf auth login`) to upload, or share the folder another way"
        )
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="bench export")
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise BenchError(
            f"cannot push {folder} to the Hub repository {repo} ({type(exc).__name__}: {detail}); check the network, "
            "the repository name (OWNER/NAME) and your token (`hf auth login`)"
        ) from None
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo}")
