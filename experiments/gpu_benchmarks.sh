#!/usr/bin/env bash
# GPU measurements in one go: correctness on the GPU, trm_jax training-step throughput of the
# paper configs, HESC overhead, and the same-GPU PyTorch reference comparison.
#
#   experiments/gpu_benchmarks.sh OUT_DIR [PARTS] [REFERENCE_DIR]
#
# PARTS: comma-separated from env,parity,sudoku,arc,hesc,torch,lm,vision, or all (the default).
#
# Results are appended as JSON lines to OUT_DIR/gpu_results.jsonl; the console log says
# which command produced each. REFERENCE_DIR is a checkout of
# SamsungSAILMontreal/TinyRecursiveModels (only the torch part needs it).
set -uo pipefail
OUT=${1:?usage: $0 OUT_DIR [PARTS] [REFERENCE_DIR]}
PARTS=${2:-all}
REF=${3:-}
mkdir -p "$OUT"
J="$OUT/gpu_results.jsonl"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 WANDB_MODE=disabled
# One command at a time, each with a wall limit, its log lines kept short.
run() { local limit=$1; shift; echo "+ $*"; timeout "$limit" "$@" 2>&1 | grep -v -E "^[IW][0-9]{4} |xla_bridge" | tail -40; echo "(exit ${PIPESTATUS[0]})"; }

has() { [[ ",$PARTS," == *",$1,"* || $PARTS == all ]]; }
B="python3 experiments/benchmark.py --steps=20 --json_out=$J"

if has env; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
fi
if has parity; then
  # The model-equivalence tests, with JAX on the GPU (float32 matmuls at full precision; the
  # float64 oracle runs in torch on the CPU).
  JAX_PLATFORMS=cuda run 240 python3 -m pytest -q -p no:cacheprovider tests/test_model_parity.py tests/test_losses.py tests/test_act.py
fi
if has sudoku; then
  run 200 $B --config=configs/sudoku.py --breakdown                                  # attention_impl=auto: cuDNN
  run 150 $B --config=configs/sudoku.py --config.model.attention_impl=xla
  run 150 $B --config=configs/sudoku.py:mlp --breakdown
fi
if has arc; then
  run 240 $B --config=configs/arc.py --batch_size=192 --breakdown                    # auto: cuDNN
  run 200 $B --config=configs/arc.py --batch_size=192 --config.model.attention_impl=xla  # does not fit in 80 GB
fi
if has hesc; then
  run 400 python3 experiments/benchmark_hesc.py --batch_size=96 --steps=40 --rounds=5 --dtype=bfloat16 \
      --out="$OUT/hesc_overhead_gpu.md"
fi
if has lm; then
  # The language models at their default (GPU) sizes: training tokens/s and MFU, TRM and baseline;
  # then generation tokens/s from a one-step run (the speed does not depend on the weights).
  for task in code text; do
    run 200 $B --config=configs/$task.py
    run 150 $B --config=configs/$task.py:transformer
    run 300 python3 -m trm_jax.main --config=configs/$task.py --workdir="$OUT/${task}_default" --config.max_steps=1
    run 200 python3 -m trm_jax.generate --workdir="$OUT/${task}_default" --prompt="def" --max_new_tokens=256 \
        --temperature=0
  done
fi
if has vision; then
  # The pixel path (docs/vision.md): the PyTorch system's default job at the multimodal_hesc size
  # (hesc.py:full,vision on 224x224 images of vision_unified), HESC's single-GPU size, the reading
  # TRM (vision_optimized) and ARC from pixels; examples/s of the full train step on random data.
  run 400 $B --config=configs/hesc.py:full,vision --batch_size=32
  run 300 $B --config=configs/hesc.py:vision --batch_size=64
  run 200 $B --config=configs/vision.py --breakdown
  run 200 $B --config=configs/vision.py:unified
  run 240 $B --config=configs/arc.py:pixels --batch_size=192
  run 120 python3 experiments/benchmark_vision.py --skip_builds --batch_size=256 --json_out=$J
fi
if has torch; then
  R="python3 experiments/benchmark_torch_reference.py --reference_dir=$REF --steps=20 --json_out=$J"
  run 240 $R --config=configs/sudoku.py --parity
  run 200 $R --config=configs/sudoku.py:mlp
  run 240 $R --config=configs/arc.py --batch_size=192 --parity --parity_batch_size=4
fi
echo "results: $J"
