#!/usr/bin/env bash
# The language models on this CPU: the recursive model (TRM) vs the transformer baseline at equal
# parameters, trained for the same wall-clock budget, then evaluated, sampled and timed.
#
#   BUDGET=900 OUT=/tmp/lm bash experiments/lm_budget.sh        # -> experiments/results/language_cpu.*
#
# For each of configs/code.py:tiny and configs/text.py:tiny the two runs train at the same time
# (one per core of a 2-core machine: the same conditions for both) on the same long schedule
# (epochs=50, so neither reaches its end and both keep the same learning rate at every step) and are
# stopped by SIGINT after BUDGET seconds (the trainer saves a checkpoint and exits); the periodic
# evaluations (code: every 0.05 epoch, text: every 0.5) count in the budget. An --eval_only run then
# scores the last checkpoint on the whole validation split. Generation tokens/s: the trained tiny runs, and the GPU
# default sizes (configs/*.py with no variant; one training step, the speed does not depend on the weights).
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-900}
OUT=${OUT:-/tmp/lm_budget}
RESULTS=experiments/results
export TRM_DATA_DIR=${TRM_DATA_DIR:-$OUT/data}
mkdir -p "$OUT"
for task in code text; do
  python -m trm_jax.main --config=configs/$task.py:tiny --dataset_only
  for arch in trm transformer; do
    variant=tiny; [ "$arch" = transformer ] && variant=tiny,transformer
    rm -rf "$OUT/${task}_$arch"
    every=0.5; [ "$task" = code ] && every=0.05
    timeout -s INT "$BUDGET" python -m trm_jax.main --config=configs/$task.py:$variant \
      --workdir="$OUT/${task}_$arch" --config.epochs=50 --config.eval_interval=$every \
      > "$OUT/${task}_$arch.log" 2>&1 &
  done
  wait || true
  for arch in trm transformer; do
    variant=tiny; [ "$arch" = transformer ] && variant=tiny,transformer
    python -m trm_jax.main --config=configs/$task.py:$variant --workdir="$OUT/${task}_$arch" --eval_only \
      --config.epochs=50 > "$OUT/${task}_$arch.eval.log" 2>&1
  done
done
# Samples and generation speed of the trained tiny models.
for run in code_trm code_transformer text_trm text_transformer; do
  prompt='def fib(n):'; [[ $run == text_* ]] && prompt='The'
  python -m trm_jax.generate --workdir="$OUT/$run" --prompt="$prompt" --max_new_tokens=128 --seed=0 \
    --num_samples=2 > "$OUT/$run.samples.txt" 2> "$OUT/$run.speed.txt"
done
# Generation speed at the default (GPU) sizes, from a one-step run on this CPU.
for task in code text; do
  rm -rf "$OUT/${task}_default"
  python -m trm_jax.main --config=configs/$task.py --workdir="$OUT/${task}_default" --config.max_steps=1 \
    --config.global_batch_size=2 > "$OUT/${task}_default.log" 2>&1
  python -m trm_jax.generate --workdir="$OUT/${task}_default" --prompt="def" --max_new_tokens=64 --temperature=0 \
    > /dev/null 2> "$OUT/${task}_default.speed.txt"
done
python experiments/compare_language_models.py --runs_dir="$OUT" --budget="$BUDGET" --out="$RESULTS/language_cpu"
