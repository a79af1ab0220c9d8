"""`bench analyze shift`: per-block feature statistics of finished runs.

The statistics in the command's CSV are checked against a computation written here from scratch:
forward hooks on the rebuilt models, torch for means and standard deviations, scipy's
``wasserstein_distance`` channel by channel, and CKA in its kernel (HSIC) form, not the feature
form the command uses. The runs are real: trained by the CLI on generated images, stored in a
real MLflow store, rebuilt by ``bench.export``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy.stats import wasserstein_distance

from bench import export, schema
from bench.shift import trim_added_tokens
from bench.tracking import default_tracking_uri
from reports.feature_shift import evenly_spaced, linear_cka, wasserstein1
from tests.conftest import write_task

# ---------------------------------------------------------------------------------------------
# the statistics on their own


def test_wasserstein1_equals_scipy_per_channel_for_equal_and_unequal_sample_sizes():
    rng = np.random.default_rng(0)
    for n, m in [(50, 50), (37, 61), (1, 9), (64, 48)]:
        a = rng.normal(size=(n, 5))
        b = rng.normal(loc=0.3, scale=1.5, size=(m, 5))
        expected = [wasserstein_distance(a[:, c], b[:, c]) for c in range(5)]
        np.testing.assert_allclose(wasserstein1(a, b), expected, rtol=1e-12, atol=1e-12)
    a = rng.normal(size=(40, 3))
    np.testing.assert_allclose(wasserstein1(a, a + 2.0), 2.0)  # a shift moves every sample by 2
    assert np.all(wasserstein1(a, a[::-1]) == 0)  # order within a sample does not matter


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in Kornblith et al.'s kernel form: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_linear_cka_matches_the_kernel_form_and_its_invariances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8))
    y = x @ rng.normal(size=(8, 6)) + 0.5 * rng.normal(size=(30, 6))
    assert linear_cka(x, y) == pytest.approx(_cka_hsic(x, y), rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-12)  # rotation, scale, offset
    assert linear_cka(x, rng.normal(size=(30, 8))) < 0.6
    with pytest.raises(ValueError):
        linear_cka(x[:1], y[:1])


def test_evenly_spaced_subsets_are_deterministic_and_keep_both_ends():
    assert evenly_spaced(10, 0).tolist() == list(range(10))
    assert evenly_spaced(10, 20).tolist() == list(range(10))
    assert evenly_spaced(797, 4).tolist() == [0, 265, 531, 796]
    assert evenly_spaced(65, 8).tolist() == evenly_spaced(65, 8).tolist()


def test_tokens_a_method_inserts_after_the_class_token_are_left_out():
    x = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # cls, 2 prompts, 4 patches
    kept = trim_added_tokens(x, tokens=5, prefix=1)
    assert torch.equal(kept, torch.cat([x[:, :1], x[:, 3:]], dim=1))
    assert trim_added_tokens(x, tokens=7, prefix=1) is x
    assert trim_added_tokens(x, tokens=9, prefix=1) is x  # a shortened sequence keeps its own tokens


# ---------------------------------------------------------------------------------------------
# the command on trained runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    """KARST, KARST without re-scaling and linear on a tiny ViT, and linear on a tiny Swin, all on
    one generated task and in one store; one epoch each (the features only need to move)."""
    from bench.cli import run_cli

    root = tmp_path_factory.mktemp("shift")
    data = root / "data"
    write_task(data / "alpha", num_classes=3, seed=0)
    workdir = root / "runs"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    base = ["--workdir", str(workdir), "run", "--suite", "tinyfolder", "--seeds", "0,", "--data-root", str(data)]
    base += ["--device", "cpu", "--epochs", "1", "--tasks", "alpha"]
    for extra in (
        ["--methods", "karst,linear"],
        ["--methods", "karst", "--set", "karst.rescale=none"],
        ["--methods", "linear", "--backbone", "swin_demo_tiny"],
    ):
        assert run_cli(base + extra) == 0
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`{schema.KIND}` = '{schema.KIND_RUN}'"
    )
    specs = {
        r.data.tags[schema.RUN_KEY]: json.loads(
            Path(
                client.download_artifacts(r.info.run_id, schema.RESOLVED_CONFIG, str(root / r.info.run_id))
            ).read_text()
        )["spec"]
        for r in runs
    }

    def key(method: str, task: str = "alpha", rescale: str | None = None, backbone: str = "vit_demo_tiny") -> str:
        (found,) = [
            k
            for k, spec in specs.items()
            if (spec["method"], spec["task"], spec["backbone"]) == (method, task, backbone)
            and rescale in (None, spec["method_config"].get("rescale"))
        ]
        return found

    keys = {
        "karst": key("karst", rescale="channel"),
        "karst_none": key("karst", rescale="none"),
        "linear": key("linear"),
        "linear_swin": key("linear", backbone="swin_demo_tiny"),
    }
    return workdir, data, keys


@pytest.fixture
def cli_in(capsys):
    """Run the CLI in-process against a given work directory: (exit code, stdout, stderr)."""
    from bench.cli import run_cli

    def invoke(workdir: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(["--workdir", str(workdir), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _direct_features(model: torch.nn.Module, stored: export.StoredRun, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every ViT block's output on ``images``, [N, T, C], by hooks written here."""
    from bench.train import Normalize

    outputs: dict[str, list[torch.Tensor]] = {}
    handles = [
        block.register_forward_hook(lambda _m, _i, out, name=f"blocks.{i}": outputs.setdefault(name, []).append(out))
        for i, block in enumerate(model.blocks)
    ]
    norm = stored.resolved["normalization"]
    with torch.no_grad():
        model.eval()(Normalize(tuple(norm["mean"]), tuple(norm["std"]))(images))
    for h in handles:
        h.remove()
    return {name: torch.cat(outs).double() for name, outs in outputs.items()}


@pytest.mark.slow
def test_shift_against_a_second_run_agrees_with_a_direct_computation_and_is_logged(trained, tmp_path, cli_in):
    workdir, _, keys = trained
    out = tmp_path / "shift"
    code, stdout, err = cli_in(
        workdir, "analyze", "shift", keys["karst"][:8], "--against", keys["karst_none"][:10],
        "--tokens-per-image", "0", "--images", "0", "--out", str(out), "--device", "cpu", "--batch-size", "4",
    )  # fmt: skip
    assert code == 0, err
    assert "W1 A:F" in stdout and "CKA A:B" in stdout and "logged to run" in " ".join(stdout.split())
    assert {p.name for p in out.iterdir()} == {"blocks.csv", "channels.csv", "shift.json", "shift.png", "shift.pdf"}

    client = MlflowClient(default_tracking_uri(workdir))
    run = export.load_stored_run(client, export.find_run(client, keys["karst"]))
    other = export.load_stored_run(client, export.find_run(client, keys["karst_none"]))
    images, _, _ = export.eval_split(run)
    assert len(images) == 15  # the generated test split
    direct = {
        "frozen": _direct_features(export.frozen_backbone(run, None, seed=0), run, images),
        "A": _direct_features(export.rebuild_model(run)[0], run, images),
        "B": _direct_features(export.rebuild_model(other)[0], run, images),
    }
    info = json.loads((out / "shift.json").read_text())
    names = {info["run"]["name"]: "A", info["against"]["name"]: "B", "frozen": "frozen"}
    assert info["run"]["name"].startswith("karst/alpha/s0@")  # both runs are karst/alpha/s0: told apart by key
    assert info["images"] == 15 and info["against"]["method_config"]["rescale"] == "none"

    rows = _read_csv(out / "blocks.csv")
    assert [r["pair"].replace(info["run"]["name"], "A").replace(info["against"]["name"], "B") for r in rows[:3]] == [
        "A vs frozen", "B vs frozen", "A vs B",
    ]  # fmt: skip
    assert len(rows) == 3 * 4  # three pairs, four blocks
    for row in rows:
        xa, xb = direct[names[row["model_a"]]][row["block"]], direct[names[row["model_b"]]][row["block"]]
        ma, mb = xa.mean(dim=(0, 1)), xb.mean(dim=(0, 1))
        sa, sb = xa.std(dim=(0, 1), unbiased=False), xb.std(dim=(0, 1), unbiased=False)
        assert float(row["mean_a"]) == pytest.approx(float(ma.mean()), abs=1e-6)
        assert float(row["std_b"]) == pytest.approx(float(sb.mean()), rel=1e-6)
        assert float(row["mean_shift"]) == pytest.approx(float((ma - mb).abs().mean()), abs=1e-6)
        assert float(row["std_ratio"]) == pytest.approx(float((sa / sb).mean()), rel=1e-6)
        flat_a, flat_b = xa.reshape(-1, xa.shape[-1]).numpy(), xb.reshape(-1, xb.shape[-1]).numpy()
        w1 = np.mean([wasserstein_distance(flat_a[:, c], flat_b[:, c]) for c in range(flat_a.shape[1])])
        assert float(row["w1"]) == pytest.approx(w1, rel=1e-5)
        cka = _cka_hsic(xa.mean(1).numpy(), xb.mean(1).numpy())
        assert float(row["cka"]) == pytest.approx(cka, abs=1e-6)
    karst_rows = [r for r in rows if r["model_b"] == "frozen" and names[r["model_a"]] == "A"]
    assert all(float(r["w1"]) > 1e-4 for r in karst_rows)  # training moved the features

    channels = _read_csv(out / "channels.csv")
    assert len(channels) == 3 * 4 * 64  # models x blocks x width
    frozen0 = [r for r in channels if r["model"] == "frozen" and r["block"] == "blocks.0"]
    np.testing.assert_allclose(
        [float(r["mean"]) for r in frozen0], direct["frozen"]["blocks.0"].mean(dim=(0, 1)), atol=1e-6
    )

    # logged to RUN's MLflow run under its own folder for this comparison; status and metrics untouched
    before = client.get_run(run.run_id)
    folder = f"{schema.SHIFT_DIR}/vs-{keys['karst_none'][:8]}"
    logged = {Path(a.path).name for a in client.list_artifacts(run.run_id, folder)}
    assert logged == {"blocks.csv", "channels.csv", "shift.json", "shift.png", "shift.pdf"}
    copy = Path(client.download_artifacts(run.run_id, f"{folder}/blocks.csv", str(tmp_path)))
    assert copy.read_text() == (out / "blocks.csv").read_text()
    assert before.info.status == "FINISHED" and before.data.metrics == run.metrics

    # the default subsample: 8 token positions per image, W1 close to the all-token value
    code, _, err = cli_in(
        workdir, "analyze", "shift", keys["karst"], "--against", keys["karst_none"], "--device", "cpu"
    )
    assert code == 0, err
    folder = workdir / "analysis" / f"shift-karst-alpha-s0-vs-{keys['karst_none'][:8]}"
    default = _read_csv(folder / "blocks.csv")
    assert [r["cka"] for r in default] == [r["cka"] for r in rows]  # CKA and moments use every token
    assert [r["mean_a"] for r in default] == [r["mean_a"] for r in rows]
    assert json.loads((folder / "shift.json").read_text())["tokens_per_image"] == 8
    for sampled, full in zip(default, rows, strict=True):
        assert float(sampled["w1"]) == pytest.approx(float(full["w1"]), rel=0.5)


@pytest.mark.slow
def test_frozen_against_frozen_gives_zero_distance_and_unit_cka_on_vit_and_swin(trained, tmp_path, cli_in):
    workdir, _, keys = trained
    for ref, blocks in (("linear", ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]), ("linear_swin", None)):
        out = tmp_path / ref
        code, _, err = cli_in(workdir, "analyze", "shift", keys[ref], "--out", str(out), "--device", "cpu")
        assert code == 0, err
        rows = _read_csv(out / "blocks.csv")
        if blocks:
            assert [r["block"] for r in rows] == blocks
        else:  # Swin: two stages of two blocks, widths 32 and 64
            assert [(r["block"], r["stage"], r["width"]) for r in rows] == [
                ("layers.0.blocks.0", "0", "32"), ("layers.0.blocks.1", "0", "32"),
                ("layers.1.blocks.0", "1", "64"), ("layers.1.blocks.1", "1", "64"),
            ]  # fmt: skip
        for r in rows:
            assert float(r["w1"]) == pytest.approx(0.0, abs=1e-6)
            assert float(r["mean_shift"]) == pytest.approx(0.0, abs=1e-6)
            assert float(r["cka"]) == pytest.approx(1.0, abs=1e-6)
            assert float(r["std_ratio"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_shift_errors_are_one_line_each(trained, tmp_path, cli_in):
    workdir, data, keys = trained

    def fails(*args: str) -> str:
        code, _, err = cli_in(workdir, "analyze", "shift", *args, "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "no finished run matches 'nothing/like/this'" in fails("nothing/like/this")
    assert "2 different runs match 'karst/alpha/s0'" in fails("karst/alpha/s0")
    err = fails(keys["linear"], "--against", keys["linear_swin"])
    assert "backbone 'swin_demo_tiny'" in err and "vit_demo_tiny" in err and "same suite, task, backbone" in err
    assert "--images 1 is too few" in fails(keys["linear"], "--images", "1")
    err = fails(keys["linear"], "--data-root", str(tmp_path / "elsewhere"))
    assert "task folder" in err and "elsewhere" in err and "--data-root" in err

    # a run whose stored tensors are gone from the artifact store
    client = MlflowClient(default_tracking_uri(workdir))
    run = export.find_run(client, keys["karst_none"])
    stored = Path(client.download_artifacts(run.info.run_id, schema.TRAINABLE_TENSORS, str(tmp_path)))
    artifact = Path(run.info.artifact_uri.removeprefix("file://")) / schema.TRAINABLE_TENSORS
    assert artifact.read_bytes() == stored.read_bytes()
    artifact.unlink()
    try:
        err = fails(keys["karst_none"])
        assert "lacks its stored artifacts" in err and "train the run again" in err
    finally:
        shutil.copy(stored, artifact)

    # the data moved: --data-root finds it again
    moved = tmp_path / "moved"
    shutil.copytree(data / "alpha", moved / "alpha")
    code, _, err = cli_in(workdir, "analyze", "shift", keys["linear"], "--data-root", str(moved), "--device", "cpu")
    assert code == 0, err


def test_unknown_run_and_bad_options_fail_in_one_line(cli):
    code, _, err = cli("analyze", "shift", "karst/none/s0", "--device", "cpu")
    assert code == 2 and "no finished run matches 'karst/none/s0'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("analyze", "shift", "karst/none/s0", "--tokens-per-image", "-1")
    assert code == 2 and "--tokens-per-image -1 must be 0 (all tokens) or more" in err


def test_prompt_tokens_are_left_out_and_a_forward_that_bypasses_the_blocks_is_refused():
    """VPT-Deep inserts 10 prompts after the class token: the frozen backbone's 65 tokens per image
    are what is measured. Sparse-Tuning runs attention and MLP itself: no block output to read."""
    from bench.backbone import RANDOM_BACKBONE_SEED, Weights, build_backbone
    from bench.errors import BenchError
    from bench.shift import Block, gather
    from bench.train import Normalize
    from methods.base import get_method, make_config

    def tiny() -> torch.nn.Module:
        weights = Weights(None, f"random-init:seed{RANDOM_BACKBONE_SEED}")
        return build_backbone("vit_demo_tiny", num_classes=3, img_size=32, drop_path=0.0, weights=weights, seed=0)

    def adapted(name: str) -> torch.nn.Module:
        method = get_method(name)
        return method.apply(tiny(), make_config(method)).eval()

    blocks = [Block(f"blocks.{i}", i, 0) for i in range(4)]
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    args = (blocks, 1, images, Normalize((0.5,) * 3, (0.5,) * 3), torch.device("cpu"), 4, 0)
    feats = gather({"frozen": tiny().eval(), "vpt": adapted("vpt_deep")}, *args)
    assert [feats["frozen"][b.path].count for b in blocks] == [6 * 65] * 4
    assert [feats["vpt"][b.path].count for b in blocks] == [6 * 65] * 4  # the 10 prompts left out
    assert all(torch.cat(f.sample).shape == (6 * 65, 64) for f in feats["vpt"].values())  # k = 0: every token
    with pytest.raises(BenchError, match="without calling block blocks.0"):
        gather({"frozen": tiny().eval(), "sparse": adapted("sparse_tuning")}, *args)
