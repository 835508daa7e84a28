#!/usr/bin/env bash
# The multi-GPU check of issue 17 (point 6): meta-iterations/s of one run with devices=1 against devices=all on a
# lent device machine whose image has JAX but no TensorFlow (and no network), through benchmarks/gpu_device.sh.
#
# Here (a machine with pip access and ../shared/data), right before the device call, from the repository root:
#     bash benchmarks/scale_device.sh fetch      # gpu_device.sh's wheels -> .whl/, Omniglot's small set -> data/
# There (the device tool's `run`, carrying [".whl", "data"]), from the repository root:
#     bash benchmarks/scale_device.sh run [more scale.py arguments]
#
# `run` is `scale.py --parts devices --devices 1 all --cpu-devices 0` with KERAS_BACKEND=jax (gpu_device.sh exec):
# second-order MAML, Omniglot 5-way 1-shot, meta-batch 32 (it splits evenly across 1, 2, 4 or 8 GPUs), 200 fixed
# steps, the first (compiling) step excluded, two alternating rounds; its log is $OUT/scale.log. On a machine with
# one GPU devices=all is that one GPU, and the line of each run names the devices it used. Predicted: about 2 min
# per run on an H100-class GPU (the JAX compile dominates), so 4 runs plus the wheels' install fit one 600 s call.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  fetch)
    bash benchmarks/gpu_device.sh fetch
    grep -qx '/data/' .git/info/exclude 2>/dev/null || echo '/data/' >> .git/info/exclude
    mkdir -p data/omniglot
    # split=minimal1: images_background_small1 trains; the evaluation set is the test split (loaded, not scored).
    src="${METALAB_DATA_DIR:-../shared/data}/omniglot"
    cp "$src/images_background_small1.zip" "$src/images_evaluation.repacked.zip" data/omniglot/
    du -sh data
    ;;
  run)
    shift
    GPU_LOG="${GPU_LOG:-scale.log}" bash benchmarks/gpu_device.sh exec python3 benchmarks/scale.py --parts devices \
      --devices 1 all --cpu-devices 0 --meta-batch-size 32 --device-steps 200 --rounds 2 --data-dir data "$@"
    ;;
  *)
    echo "usage: bash benchmarks/scale_device.sh fetch | run [scale.py arguments]" >&2
    exit 2
    ;;
esac
