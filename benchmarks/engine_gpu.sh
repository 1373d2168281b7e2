#!/usr/bin/env bash
# The torch engine's GPU path in one run, for a machine with a CUDA GPU:
#   1. the engine's tests with the model on the GPU (AUTOPOIESIS_TEST_DEVICE);
#   2. the twin's step-cost fit on the default model and on a larger one (engine_costs.py);
#   3. the static queue orders against online evolution on the larger model (engine_online.py),
#      at half the twin's capacity, so the burst's middle fifth runs past it.
#
#   bash benchmarks/engine_gpu.sh [OUT_DIR]      (default runs/engine-gpu)
#
# DEVICE (cuda), LARGE (the larger model's options), DURATION (60 s), SEEDS (1) and WORKERS (4) override;
# DEVICE=cpu LARGE="-o hidden=64 -o layers=2 -o heads=2" DURATION=10 WORKERS=1 checks the script here.
#
# Each step's output goes to OUT_DIR as it is made, and a step that fails does not stop the next.
out=${1:-runs/engine-gpu}
device=${DEVICE:-cuda}
duration=${DURATION:-60}
seeds=${SEEDS:-1}
workers=${WORKERS:-4}
read -r -a large <<< "${LARGE:--o hidden=2048 -o layers=16 -o heads=16}"  # ~0.8B parameters in fp32
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/device.txt"
AUTOPOIESIS_TEST_DEVICE=$device python3 -m pytest -q -p no:cacheprovider tests/test_engine.py 2>&1 | tee "$out/tests.txt"
python3 benchmarks/engine_costs.py -o device="$device" 2>&1 | tee "$out/costs_default.txt"
python3 benchmarks/engine_costs.py -o device="$device" "${large[@]}" 2>&1 | tee "$out/costs_large.txt"
python3 benchmarks/engine_online.py -o device="$device" "${large[@]}" --load-factor 0.5 --duration "$duration" \
    --seeds "$seeds" --window 5 --workers "$workers" --json > "$out/online.json" 2> >(tee "$out/online.log" >&2)
cat "$out/online.json"
