#!/usr/bin/env bash
# The realmini sweeps of issue 10 on a rented GPU machine that has torch/timm/peft but no
# MLflow and no network. Run from the repository root on that machine:
#
#   bash docs/results/realmini/device_sweep.sh stage          # once carrying .stage_ckpt, once .whl
#   bash docs/results/realmini/device_sweep.sh run [bench run options…]   # carry .stage
#
# `stage` installs the carried wheels (mlflow-skinny, sqlalchemy, alembic, optuna and their
# needs) into /tmp/site and copies the checkpoint to /tmp/stage; `run` unpacks realmini into
# /tmp/data once, runs `bench run` against a work directory kept in /tmp/work (so a later call
# on the same machine resumes the sweep: finished runs are skipped), stops itself before the
# 10-minute call limit (the run in progress stays RUNNING and is retrained next time), and
# copies the MLflow store to $OUT.
set -euo pipefail
CKPT=/tmp/stage/vit_s14_imgfocus.safetensors
case "${1:-}" in
stage)  # whichever of the two is carried (together they exceed one call's 64 MiB)
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
  if [ -f .stage_ckpt/vit_s14_imgfocus.safetensors ]; then
    mkdir -p /tmp/stage && cp .stage_ckpt/vit_s14_imgfocus.safetensors "$CKPT" && sha256sum "$CKPT"
  fi
  ;;
run)
  shift
  [ -f "$CKPT" ] || { echo "no staged checkpoint: run 'stage' first on this machine"; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
  [ -d /tmp/data/realmini ] || { mkdir -p /tmp/data && tar -xf .stage/realmini.tar -C /tmp/data; }
  mkdir -p /tmp/work
  # a fresh machine continues from the store the previous call brought back (carried in .stage)
  [ -f /tmp/work/mlflow.db ] || [ ! -f .stage/mlflow.db ] || cp .stage/mlflow.db /tmp/work/mlflow.db
  start=$(date +%s)
  set +e
  timeout --signal=INT "${BENCH_LIMIT_S:-540}" python3 -m bench --workdir /tmp/work run --suite folder \
    --data-root /tmp/data/realmini --backbone vit_small_patch14_dinov2 --checkpoint "$CKPT" "$@"
  rc=$?
  set -e
  echo "bench exit $rc after $(( $(date +%s) - start )) s"
  cp /tmp/work/mlflow.db "$OUT/mlflow.db"
  nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/gpu.txt"
  ;;
*)
  echo "usage: $0 stage | run [bench run options]"; exit 2
  ;;
esac
