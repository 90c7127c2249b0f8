#!/usr/bin/env bash
# The pixel path on this CPU (docs/vision.md "Measured"): what each tiny config learns, against the
# same model reading tokens; encoder, renderer and build throughput.
#
#   OUT=/tmp/vision bash experiments/vision_cpu.sh       # -> experiments/results/vision_cpu.*
#
# 1. configs/vision.py:tiny (rendered_text: a 16x160 image of a line -> its bytes, left to right),
#    30 epochs, evaluated every 5 (greedy reading: eval/char_accuracy, eval/line_accuracy);
# 2. experiments/vision_token_reference.py: the same TRM on random 10-letter strings (no language
#    prior to lean on), reading the rendered image vs given the letters as its capsules' content
#    (the token-input model of the same size on the same examples);
# 3. configs/arc.py:tiny,pixels vs configs/arc.py:tiny: ARC from pixels vs from tokens, the same
#    tasks, augmentations and schedule (token accuracy of the output grid over training);
# 4. experiments/benchmark_vision.py: encoder images/s, renderer images/s, build examples/s.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vision}
export TRM_DATA_DIR=${TRM_DATA_DIR:-$OUT/data}
mkdir -p "$OUT"
python -m trm_jax.main --config=configs/vision.py:tiny --workdir="$OUT/rendered_text" \
  --config.epochs=30 --config.eval_interval=5 > "$OUT/rendered_text.log" 2>&1
python experiments/vision_token_reference.py --steps=600 --json_out="$OUT/token_reference.jsonl"
for variant in tiny tiny,pixels; do
  python -m trm_jax.main --config=configs/arc.py:$variant --workdir="$OUT/arc_${variant/,/_}" \
    --config.eval_interval=5 > "$OUT/arc_${variant/,/_}.log" 2>&1
done
python experiments/benchmark_vision.py --json_out="$OUT/throughput.jsonl"
python experiments/compare_vision.py --runs_dir="$OUT" --out=experiments/results/vision_cpu
