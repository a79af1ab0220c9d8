"""The run engine: one driver, the inline and Ray executors, and the failure semantics through both.

Ray runs for real: a local cluster started by the command (``--executor ray --workers 2``), and a
two-node cluster started with ``ray start`` on 127.0.0.1. Each cluster gets its own short temp
dir (Ray's socket paths must stay short) and a small object store, and every node is stopped.
"""

from __future__ import annotations

import ast
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import methods
from bench.cli import run_cli
from bench.engine import ExecutorOptions, Recorder, SilentReporter, make_executor
from bench.engine.executors import choose_executor, parse_gpus
from bench.sweep import SweepRequest, plan_sweep, run_sweep
from bench.tracking import Tracker, default_tracking_uri
from methods.base import BackboneSpec, Method, freeze_all_but, register_method
from tests.conftest import RAY_SMALL

ROOT = Path(__file__).resolve().parent.parent


def _records(workdir: Path, experiment: str = "bench/tinyfolder") -> dict[str, list]:
    return Tracker(default_tracking_uri(workdir)).runs_by_key(experiment)


def _history(workdir: Path, run_id: str) -> list[float]:
    client = Tracker(default_tracking_uri(workdir)).client
    return [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def _fresh_workdir(tmp_path: Path, template: Path, name: str) -> Path:
    wd = tmp_path / name
    wd.mkdir()
    shutil.copy(template, wd / "mlflow.db")
    return wd


# ---------------------------------------------------------------------------------------
# The code's shape: no import cycle, no private names across modules


def _bench_imports() -> dict[str, set[tuple[str, str | None]]]:
    """For each module of the bench package, the bench modules (and names) it imports, at any depth."""
    graph: dict[str, set[tuple[str, str | None]]] = {}
    for path in sorted((ROOT / "bench").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[tuple[str, str | None]] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target == "bench" or target.startswith("bench."):
                    for alias in node.names:
                        sub = f"{target}.{alias.name}"
                        if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists():
                            edges.add((sub, None))  # `from . import schema`: the module itself
                        else:
                            edges.add((target, alias.name))
            elif isinstance(node, ast.Import):
                edges |= {(a.name, None) for a in node.names if a.name.startswith("bench.")}
        graph[module] = edges
    return graph


def test_no_import_cycle_and_no_private_names_across_bench_modules():
    graph = _bench_imports()
    assert "bench.engine.driver" in graph and "bench.sweep" in graph
    private = sorted(
        f"{m} imports {t}.{n}"
        for m, edges in graph.items()
        for t, n in edges
        if n and n.startswith("_") and not n.startswith("__") and t != m and not t.startswith(m + ".")
    )
    assert private == []

    def deps(m: str) -> set[str]:
        # a package's __init__ re-exports its modules; importing it is importing them
        return {t for t, _ in graph.get(m, ()) if t in graph and t != m and not m.startswith(t + ".")}

    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        if seen.get(m) == 2:
            return
        assert seen.get(m) != 1, "import cycle: " + " -> ".join([*stack[stack.index(m) :], m])
        seen[m] = 1
        for t in sorted(deps(m)):
            visit(t, [*stack, m])
        seen[m] = 2

    for module in graph:
        visit(module, [])
    # the engine knows nothing of sweeps, tuning or the CLI
    engine = [m for m in graph if m.startswith("bench.engine")]
    assert not {t for m in engine for t in deps(m)} & {"bench.sweep", "bench.tune", "bench.studies", "bench.cli"}


@pytest.mark.slow
def test_every_bench_module_imports_on_its_own():
    modules = [m for m in _bench_imports() if m != "bench.__main__"]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    from concurrent.futures import ThreadPoolExecutor

    def fresh_import(
        module: str,
    ) -> subprocess.CompletedProcess:  # a fresh interpreter each: no earlier import can hide a cycle
        return subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, cwd=ROOT)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for module, done in zip(modules, pool.map(fresh_import, modules), strict=True):
            assert done.returncode == 0, (module, done.stderr[-2000:])


def test_ray_is_imported_only_for_the_ray_executor():
    probe = (
        "import sys\nfrom bench.engine import ExecutorOptions, make_executor\n"
        "make_executor(ExecutorOptions(), 'cpu')\nimport bench.sweep, bench.tune, bench.cli\n"
        "print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


# ---------------------------------------------------------------------------------------
# Choosing an executor


def test_executor_choice_and_its_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_executor(ExecutorOptions(), "auto") == "inline"  # a CPU: this process
    assert choose_executor(ExecutorOptions(), "cpu") == "inline"
    assert choose_executor(ExecutorOptions(workers=2), "cpu") == "ray"
    assert choose_executor(ExecutorOptions(address="127.0.0.1:6379"), "auto") == "ray"
    with pytest.raises(Exception, match="--executor 'slurm' must be one of auto, inline, ray"):
        choose_executor(ExecutorOptions(kind="slurm"), "cpu")
    with pytest.raises(Exception, match="--workers need the Ray executor"):
        choose_executor(ExecutorOptions(kind="inline", workers=2), "cpu")
    with pytest.raises(Exception, match="--runs-per-gpu 0 must be at least 1"):
        make_executor(ExecutorOptions(runs_per_gpu=0), "auto")
    with pytest.raises(Exception, match="contradict --device cpu"):
        make_executor(ExecutorOptions(kind="ray", runs_per_gpu=2), "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_executor(ExecutorOptions(), "auto") == "inline"  # one GPU: this process
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert choose_executor(ExecutorOptions(), "auto") == "ray"  # several GPUs: Ray over all of them
    assert choose_executor(ExecutorOptions(), "cpu") == "inline"


def test_gpus_option(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert parse_gpus("all") == ["4", "5", "6", "7"]
    assert parse_gpus("2") == ["4", "5"]
    assert parse_gpus("1,3") == ["5", "7"]
    assert parse_gpus("2,") == ["6"]
    for bad in ("5", "0,4", "1,1", "x", "0"):
        with pytest.raises(Exception, match="--gpus"):
            parse_gpus(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_gpus_without_cuda_is_one_line_error(cli, noah_root: Path):
    for flags in (["--gpus", "all"], ["--executor", "ray", "--gpus", "2"]):
        code, _, err = cli("run", "--suite", "tinyfolder", "--methods", "linear", "--data-root", str(noah_root), *flags)
        assert code == 2 and "needs CUDA devices" in err and len(err.strip().splitlines()) == 1, err


def test_bad_executor_options_are_one_line_errors(cli, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--data-root", str(noah_root))
    for flags, fragment in (
        (["--executor", "inline", "--workers", "2"], "--workers need the Ray executor"),
        (["--executor", "dask"], "--executor 'dask' must be one of"),
        (["--workers", "0"], "--workers 0 must be at least 1"),
    ):
        code, _, err = cli(*base, *flags)
        assert code == 2 and fragment in err and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.slow
def test_unreachable_ray_address_is_a_one_line_error(cli, noah_root: Path, ray_tmp: str):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "linear", "--data-root", str(noah_root),
        "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
    )  # fmt: skip
    assert code == 2 and f"cannot start or join the Ray cluster at 127.0.0.1:{port}" in err, err


# ---------------------------------------------------------------------------------------
# A local Ray cluster against inline


DEMO = ("run", "--suite", "demo", "--methods", "lora,linear", "--seeds", "2", "--epochs", "2")


@pytest.mark.slow
def test_ray_sweep_gives_the_inline_run_keys_and_results(tmp_path: Path, mlflow_template: Path, ray_tmp: str, capsys):
    inline = _fresh_workdir(tmp_path, mlflow_template, "inline")
    ray = _fresh_workdir(tmp_path, mlflow_template, "ray")
    assert run_cli(["--workdir", str(inline), *DEMO, "--executor", "inline"]) == 0
    assert run_cli(["--workdir", str(ray), *DEMO, "--executor", "ray", "--workers", "2", *RAY_SMALL]) == 0
    ours, theirs = _records(ray, "bench/demo"), _records(inline, "bench/demo")
    assert set(ours) == set(theirs) and len(ours) == 4
    for key, [mine] in ours.items():
        [ref] = theirs[key]
        assert mine.info.status == ref.info.status == "FINISHED"
        assert mine.data.metrics["test/acc"] == ref.data.metrics["test/acc"]  # same seeds, same result
        assert mine.data.metrics["params/trainable"] == ref.data.metrics["params/trainable"]
        assert _history(ray, mine.info.run_id) == pytest.approx(_history(inline, ref.info.run_id), rel=1e-4)
        assert mine.data.tags["bench.executor"] == "ray" and ref.data.tags["bench.executor"] == "inline"
        assert len(mine.data.tags["bench.node_id"]) > 20 and ref.data.tags["bench.node_id"] == "local"
        assert mine.data.tags["bench.device"] == "cpu" and mine.data.tags["bench.train_step"] == "eager"
        client = Tracker(default_tracking_uri(ray)).client
        assert {f.path for f in client.list_artifacts(mine.info.run_id)} == {"config", "eval", "checkpoints"}
    # the rerun resumes: nothing is trained again
    capsys.readouterr()
    assert run_cli(["--workdir", str(ray), *DEMO, "--executor", "ray", "--workers", "2", *RAY_SMALL]) == 0
    assert "0 run(s) trained, 4 already finished and reused" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("token_file", ["stale", "none"])
def test_two_ray_nodes_on_one_machine_both_train(
    token_file: str, cli, workdir: Path, noah_root: Path, ray_tmp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`ray start --head` and a second `ray start --address`, 1 CPU each; `bench run --ray-address`.

    The cluster guide's procedure (RAY_AUTH_MODE=token and one RAY_AUTH_TOKEN on every node and
    on the machine running bench), in a home with no ~/.ray/auth_token or one an earlier cluster
    left behind: neither plays a part."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if token_file == "stale":
        (home / ".ray" / "auth_token").write_text("0" * 64)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    try:
        head = [*ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port)]
        subprocess.run([*head, "--include-dashboard", "false", *common], check=True, env=env, capture_output=True)
        join = [*ray, "start", "--address", address, "--node-ip-address", "127.0.0.1", *common]
        subprocess.run(join, check=True, env=env, capture_output=True)
        code, out, err = cli(
            "run", "--suite", "tinyfolder", "--methods", "lora,linear", "--seeds", "2", "--tasks", "alpha",
            "--data-root", str(noah_root), "--executor", "ray", "--ray-address", address,
        )  # fmt: skip
        assert code == 0, err
        assert "Ray: 2 node(s), 2 CPU, 0 GPU; 2 run(s) at once" in err
    finally:
        subprocess.run([*ray, "stop", "--force"], env=env, capture_output=True)
    runs = [r for rs in _records(workdir).values() for r in rs]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["bench.node_id"] for r in runs}) == 2  # both nodes trained runs


# ---------------------------------------------------------------------------------------
# Failure semantics through Ray


@dataclass
class _DyingConfig:
    marker: str = ""  # while this file exists, the run's first forward pass ends its process


def _exit_if_marked(config: _DyingConfig):
    def hook(module, args, output):
        if Path(config.marker).exists():
            os._exit(7)  # what a segfault or the OOM killer does to a worker: no goodbye

    return hook


class _Dying(Method):
    """Test-only: ends the process that trains it while its marker file exists."""

    name = "_dying"
    Config = _DyingConfig
    budget_adjustable = False

    def apply(self, model, config):
        model.head.register_forward_hook(_exit_if_marked(config))
        freeze_all_but(model, [])
        return model

    def count(self, spec: BackboneSpec, config) -> int:
        return 0


@pytest.fixture
def dying_method():
    register_method(_Dying)
    yield
    methods.base._REGISTRY.pop("_dying")


@pytest.mark.slow
def test_a_killed_ray_worker_fails_its_run_the_others_finish_and_a_rerun_resumes(
    dying_method, cli, workdir: Path, noah_root: Path, tmp_path: Path, ray_tmp: str
):
    marker = tmp_path / "die"
    marker.touch()
    args = (
        "run", "--suite", "tinyfolder", "--methods", "_dying,linear", "--seeds", "1", "--tasks", "alpha",
        "--data-root", str(noah_root), "--set", f"_dying.marker={marker}", "--executor", "ray", "--workers", "2",
        *RAY_SMALL,
    )  # fmt: skip
    code, _, err = cli(*args)
    assert code == 1, err
    assert "failed: _dying/alpha/s0: the Ray worker training it was lost" in err
    records = _records(workdir)
    status = {rs[0].data.tags["bench.method"]: rs[0].info.status for rs in records.values()}
    assert status == {"_dying": "FAILED", "linear": "FINISHED"}  # never FINISHED without a result
    [dead] = [rs[0] for rs in records.values() if rs[0].data.tags["bench.method"] == "_dying"]
    assert "WorkerCrashedError" in dead.data.tags["bench.error"] or "lost" in dead.data.tags["bench.error"]

    marker.unlink()  # the cause is fixed: the rerun trains the failed run only
    code, out, err = cli(*args)
    assert code == 0, err
    assert "1 run(s) trained, 1 already finished and reused" in out
    statuses = Counter(r.info.status for rs in _records(workdir).values() for r in rs)
    assert statuses == {"FINISHED": 2, "FAILED": 1}


class _InterruptAtSecondStart(SilentReporter):
    """Ctrl-C once two runs are in flight."""

    def __init__(self) -> None:
        self.started = 0

    def run_started(self, run, epochs) -> None:
        self.started += 1
        if self.started == 2:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_through_ray_marks_runs_in_flight_killed_and_the_rerun_resumes(
    cli, workdir: Path, noah_root: Path, ray_tmp: str
):
    request = SweepRequest(
        suite="tinyfolder", methods=["lora", "linear"], seeds=[0, 1], tasks=["alpha"], data_root=noah_root, device="cpu"
    )
    plan = plan_sweep(request, workdir)
    recorder = Recorder(Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"))
    executor = make_executor(ExecutorOptions(kind="ray", workers=2, object_store_mb=80), "cpu")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, recorder, executor, workdir, _InterruptAtSecondStart())
    import ray

    assert not ray.is_initialized()  # the local cluster is stopped
    statuses = Counter(r.info.status for rs in _records(workdir).values() for r in rs)
    assert statuses == {"KILLED": 2}, statuses
    [sweep] = recorder.tracker.search("bench/tinyfolder", kind="sweep")
    assert sweep.info.status == "KILLED"

    code, out, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "lora,linear", "--seeds", "2", "--tasks", "alpha",
        "--data-root", str(noah_root), "--device", "cpu", "--executor", "ray", "--workers", "2", *RAY_SMALL,
    )  # fmt: skip
    assert code == 0, err
    assert "4 run(s) trained, 0 already finished and reused" in out
    statuses = Counter(r.info.status for rs in _records(workdir).values() for r in rs)
    assert statuses == {"KILLED": 2, "FINISHED": 4}


# ---------------------------------------------------------------------------------------
# A run that fails does not stop the others (inline)


@dataclass
class _NanConfig:
    pass


class _Nan(Method):
    """Test-only: the logits become NaN, so the training loss does."""

    name = "_nan"
    Config = _NanConfig
    budget_adjustable = False

    def apply(self, model, config):
        model.head.register_forward_hook(lambda m, a, out: out * torch.nan)
        freeze_all_but(model, [])
        return model

    def count(self, spec: BackboneSpec, config) -> int:
        return 0


@pytest.fixture
def nan_method():
    register_method(_Nan)
    yield
    methods.base._REGISTRY.pop("_nan")


def test_a_non_finite_loss_fails_its_run_and_the_sweep_goes_on(nan_method, cli, workdir: Path, noah_root: Path):
    code, out, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "_nan,linear", "--seeds", "1", "--tasks", "alpha",
        "--data-root", str(noah_root),
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err and "internal error" not in err  # not the user's input: exit 1
    assert "failed: _nan/alpha/s0: FloatingPointError: the training loss is not finite" in err
    assert err.rstrip().splitlines()[-1].startswith("error: 1 of 2 run(s) failed")
    assert "1 run(s) trained" in out  # the summary of what finished is still printed
    tracker = Tracker(default_tracking_uri(workdir))
    runs = {r.data.tags["bench.method"]: r for rs in _records(workdir).values() for r in rs}
    assert runs["linear"].info.status == "FINISHED" and runs["_nan"].info.status == "FAILED"
    assert "--set preset.lr=" in runs["_nan"].data.tags["bench.error"]  # says how to lower the learning rate
    traceback = tracker.client.download_artifacts(runs["_nan"].info.run_id, "error/traceback.txt")
    assert "FloatingPointError" in Path(traceback).read_text()
    [sweep] = tracker.search("bench/tinyfolder", kind="sweep")
    assert sweep.info.status == "FAILED" and sweep.data.tags["bench.failed"] == "1"
