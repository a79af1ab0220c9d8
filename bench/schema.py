"""Every name bench writes into MLflow: tags, metrics and artifact paths.

The recorder writes them; ``bench runs`` and ``reports/`` read them. Both import the names from
here, so a renamed tag cannot leave a reader behind. This module imports nothing and holds no
logic: it is the contract between the writer and its readers, documented for users in
``docs/reference/tracking-schema.md``.
"""

from __future__ import annotations

# --- tags: what a run is ---------------------------------------------------------------------
KIND = "bench.kind"  # "run" (a training run or tuning trial) or "sweep" (a sweep's or study's parent)
KIND_RUN = "run"
KIND_SWEEP = "sweep"

RUN_KEY = "bench.run_key"
SUITE = "bench.suite"
TASK = "bench.task"
GROUP = "bench.group"
METHOD = "bench.method"  # the method's label: karst, karst[rescale=none], karst+bitfit
METHOD_BASE = "bench.method_base"  # the registered method of a variant (karst); else the label itself
SEED = "bench.seed"
STAGE = "bench.stage"
PRESET = "bench.preset"
BUDGET = "bench.budget"
SHOTS = "bench.shots"
SPLIT_SEED = "bench.split_seed"
DEDUPE = "bench.dedupe"
BACKBONE = "bench.backbone"
CHECKPOINT = "bench.checkpoint"
WEIGHTS_LABEL = "bench.weights_label"  # a human name for the weights (--weights-label), shown in reports
DATA_FINGERPRINT = "bench.data_fingerprint"
VERSION = "bench.version"
HPARAMS = "bench.hparams"  # preset (default), paper (the method's recipe), tuned (a study's best trial) or override (--set preset.…)
HPARAMS_SOURCES = "bench.hparams_sources"  # every source the run serves, comma-separated: a paper or tuned run equal to a preset run is that run
RECIPE = "bench.recipe"  # on paper runs: the recipe file and the sources its values cite
PRESET_OVERRIDES = "bench.preset_overrides"  # the --set preset.FIELD=VALUE of an override run
STUDY = "bench.study"
TRIAL = "bench.trial"

# --- tags: how and where it was computed --------------------------------------------------------
DEVICE = "bench.device"
TRAIN_STEP = "bench.train_step"
GIT_SHA = "bench.git_sha"
EXECUTOR = "bench.executor"  # inline or ray
NODE_ID = "bench.node_id"  # the Ray node (or "local") that trained the run
HOST = "bench.host"
GPU = "bench.gpu"
MERGED_EVAL = "bench.merged_eval"
COMMAND = "bench.command"  # the bench command line that trained the run (model cards quote it)

# --- tags: how it ended -------------------------------------------------------------------------
ERROR = "bench.error"  # one line, on FAILED runs
INTERRUPTED = "bench.interrupted"  # a RUNNING record left by a killed process, closed as KILLED
OPTUNA_STATE = "optuna.state"  # complete, pruned or failed, on tuning trials
OPTUNA_STORAGE = "optuna.storage"
# On a trial stopped other than by its scheduler: "budget" (its study's effort was spent), or
# "failed elsewhere" (another process took it for dead and queued it again).
TUNE_STOP = "bench.tune_stop"

# --- tags: sweep (parent) runs ------------------------------------------------------------------
SWEEP_KEY = "bench.sweep_key"
SWEEP_NAME = "bench.sweep_name"
METHODS = "bench.methods"
SEEDS = "bench.seeds"
TRAINED = "bench.trained"
REUSED = "bench.reused"
FAILED = "bench.failed"
BUDGETS = "bench.budgets"  # the sweep's --budget list ("none" without one)
UNREACHABLE = "bench.unreachable"  # JSON list of {"method", "budget", "reason"}: cells no structure of the method meets

# --- metrics --------------------------------------------------------------------------------------
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
LR = "lr"
VAL_ACC = "val/acc"
TEST_ACC = "test/acc"
EVAL_EXAMPLES = "eval/examples"  # how many examples the accuracy was scored on (its binomial standard error)
PARAMS_TRAINABLE = "params/trainable"
PARAMS_HEAD = "params/head"
TRAIN_IMG_S = "throughput/train_img_s"
TRAIN_IMG_S_STEADY = "throughput/train_img_s_steady"
INFER_IMG_S = "throughput/infer_img_s"
TRAIN_SECONDS = "time/train_s"
WARMUP_SECONDS = "time/warmup_s"  # before the first steady step: building, compiling, capturing (bench.train)
STEADY_SECONDS = "time/steady_s"  # training time at steady speed: time/train_s less its warm-up part
# On a sweep's (or study's) parent run, when it ends: what its runs cost (bench.efficiency)
SWEEP_WALL_SECONDS = "sweep/wall_s"
SWEEP_TRAIN_SECONDS = "sweep/train_s"
SWEEP_WARMUP_SECONDS = "sweep/warmup_s"
SWEEP_STEADY_SECONDS = "sweep/steady_s"
SWEEP_EFFICIENCY = "sweep/efficiency"
PEAK_MEMORY_MB = "mem/peak_mb"
TUNE_OBJECTIVE = "tune/objective"
# On a tuning study's parent run: the effort it was given and spent (trial-epochs charged, and the
# training seconds of those trials), and how many trials were charged.
TUNE_BUDGET_EPOCHS = "tune/budget_epochs"
TUNE_TRIAL_EPOCHS = "tune/trial_epochs"
TUNE_TRAIN_SECONDS = "tune/train_s"
TUNE_TRIALS = "tune/trials"
# System metrics: MLflow's names (system/cpu_utilization_percentage, system/gpu_0_…), sampled by
# the worker per epoch (bench/sysmetrics.py); gpu_0 is the run's own GPU.
SYSTEM_PREFIX = "system/"
GPU_UTILIZATION = "system/gpu_0_utilization_percentage"
GPU_UTILIZATION_MEAN = "system/gpu_utilization_mean"  # over the run's epochs, logged with the result

# --- artifacts ------------------------------------------------------------------------------------
RESOLVED_CONFIG = "config/resolved.json"
PREDICTIONS = "eval/predictions.csv"
TRAINABLE_TENSORS = "checkpoints/trainable.safetensors"
TRACEBACK = "error/traceback.txt"
# Written after training by `bench analyze shift RUN` into RUN's artifacts: SHIFT_DIR, or
# SHIFT_DIR/vs-<first 8 characters of RUN2's run key> with --against RUN2.
SHIFT_DIR = "analysis/shift"
SHIFT_BLOCKS = "blocks.csv"  # one row per block and model pair: mean/std summaries, W1, CKA
SHIFT_CHANNELS = "channels.csv"  # one row per model, block and channel: mean, std
SHIFT_INFO = "shift.json"  # the runs compared, images, token sample, device
SHIFT_FIGURE = "shift.png"  # W1 and CKA against depth, one line per model pair
SHIFT_FIGURE_PDF = "shift.pdf"
# Written by `bench analyze shift --suite …` into its --out folder (not into the store): every
# run's statistics against its frozen backbone, and their summary with intervals per method and block.
SHIFT_RUNS_CSV = "shift_runs.csv"
SHIFT_SUMMARY_CSV = "shift_summary.csv"
SHIFT_SUMMARY_INFO = "shift_summary.json"
SWEEP_FILE = "config/sweep.yaml"  # on a sweep's (or study's) parent run: the resolved `--config` file


def eval_metric(stage: str) -> str:
    """The accuracy a stage scores: test once after the last epoch (final), val each epoch (tune)."""
    return TEST_ACC if stage == "final" else VAL_ACC
