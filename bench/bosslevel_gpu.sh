#!/usr/bin/env bash
# A BossLevel run sized to a fixed wall-clock budget on one GPU machine (the `babyai-bosslevel` preset's model,
# fewer demonstrations and steps than the preset): demonstrations -> alignment pretraining -> behaviour cloning,
# with the step counts chosen from throughput measured in the same call, so the whole script ends inside BUDGET_S.
#
#   BUDGET_S=540 EPISODES=16000 bash bench/bosslevel_gpu.sh      # results under $OUT (default runs/bosslevel-gpu)
#
# Stages (each logged with its wall time to $OUT/log.txt):
#   1. the CUDA tests of the suite (pytest -k cuda; CUDA_TESTS=0 skips them), and SMOKE_DATA (64 episodes) generated
#      unless it exists;
#   2. EPISODES BossLevel bot demonstrations on (nproc - 2) worker processes, in the background;
#   3. meanwhile a smoke run of the full-size preset on the GPU (SMOKE_DATA, a few episodes): pretrain and train,
#      which also measures pretraining and training steps/s; bf16 autocast, fp32 if bf16 fails;
#   4. pretraining for PRETRAIN_S seconds' worth of steps, then behaviour cloning for what is left of BUDGET_S
#      (less RESERVE_S for packing) at the measured rate;
#   5. closed-loop evaluation (EVAL_EPISODES from seed 10^9, at most EVAL_S seconds), then the final weights and run
#      records packed into $OUT (the model split in 15 MB parts: the device tool returns files of at most 16 MiB), to
#      evaluate again elsewhere:
#        cat model.safetensors.part* > CKPT/model.safetensors; vlafoundry eval CKPT --episodes 1000 --no-offline
#
# Needs vlafoundry importable (installed, or PYTHONPATH=src with VF="python3 -m vlafoundry") and its dependencies;
# on a stock PyTorch GPU image without network, the ones usually missing travel as wheels: minigrid, gymnasium,
# farama-notifications, pygame-ce (imported by minigrid) and minari (checked on a copy of such an image's package set).
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-runs/bosslevel-gpu}
BUDGET_S=${BUDGET_S:-540}
EPISODES=${EPISODES:-16000}
PRETRAIN_S=${PRETRAIN_S:-30}
RESERVE_S=${RESERVE_S:-110}   # evaluation (EVAL_S) and packing
EVAL_S=${EVAL_S:-95}
EVAL_EPISODES=${EVAL_EPISODES:-1000}
EVAL_ENVS=${EVAL_ENVS:-250}
EVAL_DEVICE=${EVAL_DEVICE:-cuda}
WORK=${WORK:-/tmp/bosslevel-gpu}
SMOKE_DATA=${SMOKE_DATA:-$WORK/smoke-data}
SMOKE_PRE_STEPS=${SMOKE_PRE_STEPS:-8}
SMOKE_TRAIN_STEPS=${SMOKE_TRAIN_STEPS:-40}
MIN_PRE_STEPS=${MIN_PRE_STEPS:-20}
MIN_STEPS=${MIN_STEPS:-50}
OVERRIDES=${OVERRIDES:-}      # extra dotted overrides for every pretrain/train command (word-split)
CUDA_TESTS=${CUDA_TESTS:-1}
NPROC=$(python3 -c "import os; print(len(os.sched_getaffinity(0)))")   # not nproc: it honours OMP_NUM_THREADS
GEN_WORKERS=${GEN_WORKERS:-$(( NPROC > 4 ? NPROC - 2 : 1 ))}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
el() { echo $(( $(date +%s) - T0 )); }
say() { echo "[t=$(el)s] $*" | tee -a "$LOG"; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
rate() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(round(s['steps']/max(1e-9, s['wall_s']), 3))" "$1"; }
VF="${VF:-python3 -m vlafoundry}"

say "host: $NPROC CPUs; $(nvidia-smi -L 2>/dev/null | head -1); $(python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())')"

# 1. CUDA tests
if [ "$CUDA_TESTS" = 1 ]; then python3 -m pytest -q -p no:cacheprovider -k cuda tests/nn 2>&1 | tail -3 | tee -a "$LOG"; fi
if [ ! -d "$SMOKE_DATA" ]; then
    say "generating 64 smoke episodes -> $SMOKE_DATA"
    $VF data generate babyai/BossLevel --episodes 64 --workers 2 --seed 5000000 --out "$SMOKE_DATA" --no-progress \
        >> "$LOG" 2>&1 || { say "smoke data generation FAILED"; exit 1; }
fi

# 2. demonstrations in the background
DATA="$WORK/bosslevel-$EPISODES"
say "generating $EPISODES BossLevel episodes on $GEN_WORKERS workers -> $DATA"
( $VF data generate babyai/BossLevel --episodes "$EPISODES" --workers "$GEN_WORKERS" --out "$DATA" \
    --no-progress > "$WORK/generate.log" 2>&1; echo $? > "$WORK/generate.rc" ) &
GEN_PID=$!

# 3. smoke run on the GPU, full-size model, bf16 then fp32
PREC=""
for p in auto fp32; do
    rm -rf "$WORK/smoke"
    if $VF pretrain --preset babyai-bosslevel --data "$SMOKE_DATA" --out "$WORK/smoke/pre" \
            --pretrain.steps $SMOKE_PRE_STEPS --pretrain.warmup_steps 1 --train.precision $p $OVERRIDES >> "$WORK/smoke.log" 2>&1 \
        && $VF train --preset babyai-bosslevel --data "$SMOKE_DATA" --out "$WORK/smoke/train" \
            --init-from "$WORK/smoke/pre" --train.steps $SMOKE_TRAIN_STEPS --train.warmup_steps 1 --train.eval_every 1000 \
            --train.checkpoint_every 1000 --train.precision $p $OVERRIDES >> "$WORK/smoke.log" 2>&1; then
        PREC=$p; break
    fi
    say "smoke with precision $p FAILED:"; tail -25 "$WORK/smoke.log" | tee -a "$LOG"
done
if [ -z "$PREC" ]; then kill $GEN_PID 2>/dev/null; say "no precision worked; stopping"; exit 1; fi
PRE_RATE=$(rate "$WORK/smoke/pre/summary.json")
TRAIN_RATE=$(rate "$WORK/smoke/train/summary.json")
say "smoke OK (precision $PREC): pretrain $PRE_RATE steps/s, train $TRAIN_RATE steps/s (with the generator running)"
wait $GEN_PID
if [ "$(cat "$WORK/generate.rc")" != 0 ]; then say "generation FAILED:"; tail -20 "$WORK/generate.log" | tee -a "$LOG"; exit 1; fi
say "$(tail -1 "$WORK/generate.log")"

# 4. pretraining, then behaviour cloning sized to the time left
PRE_STEPS=$(python3 -c "print(max($MIN_PRE_STEPS, int($PRETRAIN_S * $PRE_RATE)))")
say "pretraining $PRE_STEPS steps"
$VF pretrain --preset babyai-bosslevel --data "$DATA" --out "$WORK/pre" --pretrain.steps "$PRE_STEPS" \
    --pretrain.warmup_steps $(( PRE_STEPS / 10 + 1 )) --train.precision $PREC $OVERRIDES > "$WORK/pretrain.log" 2>&1 \
    || { say "pretrain FAILED"; tail -20 "$WORK/pretrain.log" | tee -a "$LOG"; exit 1; }
say "pretrain done: $(json "$WORK/pre/summary.json" "['wall_s']") s"
LEFT=$(( BUDGET_S - $(el) - RESERVE_S - 25 ))   # 25 s: process start, data loading, final validation
STEPS=$(python3 -c "print(max($MIN_STEPS, int($LEFT * $TRAIN_RATE * 0.9)))")
EVERY=$(( STEPS / 5 > 0 ? STEPS / 5 : 1 ))
say "training $STEPS steps (~${LEFT}s at the smoke rate)"
$VF train --preset babyai-bosslevel --data "$DATA" --out "$WORK/train" --init-from "$WORK/pre" \
    --train.steps "$STEPS" --train.warmup_steps $(( STEPS / 20 + 1 )) --train.eval_every $EVERY \
    --train.checkpoint_every "$STEPS" --train.precision $PREC $OVERRIDES > "$WORK/train.log" 2>&1 \
    || { say "train FAILED"; tail -20 "$WORK/train.log" | tee -a "$LOG"; }
say "train done: $(json "$WORK/train/summary.json" "" 2>/dev/null | head -c 600)"

# 5. closed-loop evaluation on the GPU (many env slots: one batched forward serves them all), then pack
timeout "$EVAL_S" $VF eval "$WORK/train" --episodes "$EVAL_EPISODES" --num-envs "$EVAL_ENVS" --workers "$GEN_WORKERS" --device "$EVAL_DEVICE" \
    --no-offline --gifs 0 > "$WORK/eval.log" 2>&1 && say "eval: $(grep -m1 success "$WORK/eval.log" | tr -s ' ')" \
    || { say "eval FAILED or timed out after ${EVAL_S}s:"; tail -8 "$WORK/eval.log" | tee -a "$LOG"; }
CK=$(ls -d "$WORK"/train/checkpoints/step_* 2>/dev/null | tail -1)
if [ -n "$CK" ]; then
    split -b 15000000 -d "$CK/model.safetensors" "$OUT/model.safetensors.part"
    tar czf "$OUT/records.tgz" -C "$WORK" --exclude='*.safetensors' --exclude='tb' --exclude='report_assets' \
        --exclude='report.html' smoke/pre/summary.json smoke/train/summary.json smoke/train/eval.json \
        pre/summary.json pre/metrics.jsonl train generate.log smoke.log pretrain.log train.log eval.log 2>/dev/null
fi
say "done; total $(el) s"
