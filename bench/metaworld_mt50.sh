#!/usr/bin/env bash
# The `metaworld-mt50-pixels` pipeline on LeRobot's MT50 protocol, as resumable stages:
#
#   bash bench/metaworld_mt50.sh                     # data in $DATA, runs in $RUNS, record in $RUNS/stages.jsonl
#   EPISODES=5000 RUNS=runs/mt50px-100 bash bench/metaworld_mt50.sh --train.steps 12000   # 100 per task
#
#   1. gen:      EPISODES DART demonstrations (noise 0.2) with 64x64 corner2 frames + hand proprioception;
#   2. pretrain: the preset's alignment pretraining (contrastive / ITM / MLM / MRM + position targets);
#   3. train:    behaviour cloning from the pretrained weights (--init-from);
#   4. eval:     LeRobot's protocol from the preset (10 episodes per task, 500-step cap), per difficulty group beside
#                the published rows (RUN/eval.json "task_groups", RUN/report.md).
#
# Extra arguments (dotted overrides) go to the pretraining and the training command; EVAL_ARGS (word-split) to the
# evaluation. A smoke run of the whole pipeline (~3 min on 2 cores):
#   EPISODES=50 RUNS=/tmp/mt50-smoke DATA=/tmp/mt50-smoke/data EVAL_ARGS="--episodes 1 --max-steps 20 --no-offline" \
#       bash bench/metaworld_mt50.sh --pretrain.steps 5 --train.steps 5 --train.batch_size 8 --pretrain.batch_size 8
#
# A finished stage leaves $RUNS/<stage>.done and is skipped when the script runs again; an interrupted one resumes
# (generation from its shards, training from its last checkpoint). Each stage's wall and CPU seconds (of the command
# and its children) go to $RUNS/stages.jsonl. Threads: THREADS (default 2) for pretraining and training; WORKERS
# (default 2) generation and evaluation processes. VLAFOUNDRY_IMAGE_RAM_MB defaults to 7000 here: the ~0.2M frames
# of 2,500 episodes inflate to ~2.5 GB, 5,000 episodes to ~5 GB (above the 4 GiB default: docs/data.md).
set -euo pipefail
EPISODES=${EPISODES:-2500}
DATA=${DATA:-data/mt50-rgb-$EPISODES}
RUNS=${RUNS:-runs/mt50px}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-2}
VF=${VF:-vlafoundry}
export VLAFOUNDRY_IMAGE_RAM_MB=${VLAFOUNDRY_IMAGE_RAM_MB:-7000} HF_HUB_OFFLINE=1
mkdir -p "$RUNS"

stage() {  # stage NAME COMMAND...: run unless NAME.done exists; append {"stage", "wall_s", "cpu_s"} to stages.jsonl
  local name=$1; shift
  if [ -e "$RUNS/$name.done" ]; then echo "[mt50] $name: done before, skipped"; return; fi
  echo "[mt50] $name: $*"
  python3 - "$RUNS" "$name" "$@" <<'PY'
import json, resource, subprocess, sys, time
runs, name, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.time()
rc = subprocess.call(cmd)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
if rc != 0:
    sys.exit(f"[mt50] {name} failed with exit status {rc}; rerun the script to resume it")
rec = {"stage": name, "command": cmd, "wall_s": round(time.time() - t0, 1),
       "cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "max_rss_mb": round(ru.ru_maxrss / 1024)}
with open(f"{runs}/stages.jsonl", "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f"[mt50] {name}: {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} CPU s, {rec['max_rss_mb']} MB max RSS")
PY
  touch "$RUNS/$name.done"
}

stage gen $VF data generate metaworld/mt50 --episodes "$EPISODES" --image rgb --camera corner2 --image-size 64 \
    --proprio hand --action-noise 0.2 --workers "$WORKERS" --no-progress --out "$DATA"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
stage pretrain $VF pretrain --preset metaworld-mt50-pixels --data "$DATA" --out "$RUNS/pretrain" "$@"
stage train $VF train --preset metaworld-mt50-pixels --data "$DATA" --out "$RUNS/train" \
    --init-from "$RUNS/pretrain" "$@"
# shellcheck disable=SC2086  # EVAL_ARGS is word-split on purpose
stage eval $VF eval "$RUNS/train" --num-envs 32 --workers "$WORKERS" --gifs 0 ${EVAL_ARGS:-}
echo "[mt50] all stages done: $RUNS/train/report.md"
