#!/usr/bin/env bash
# The GPU check of issue 5 (point 4) on a lent device machine whose image has JAX but no TensorFlow.
#
# Here (a machine with pip access), once, from the repository root:
#     bash benchmarks/gpu_device.sh fetch            # wheels metalab needs beyond that image -> .whl/ (ignored)
# There (the device tool's `run`, carrying .whl), from the repository root:
#     bash benchmarks/gpu_device.sh run [gpu.py arguments]
#     bash benchmarks/gpu_device.sh exec COMMAND...     # any command with the same environment
#
# `fetch` also builds metalab's own wheel from this checkout: run it right before the device call. `run` installs
# the carried wheels (metalab without its dependencies: the JAX backend needs no TensorFlow) into /tmp/site, then
# runs benchmarks/gpu.py with KERAS_BACKEND=jax and keeps its log in $OUT (as $GPU_LOG, default gpu.log).
#
# The call made on an H100 (issue 5, RESULTS.md), about 8 minutes inside a 15-minute lease:
#     bash benchmarks/gpu_device.sh run --iters 30 --torch-device cuda --budget-s 420;
#     GPU_LOG=protonet.log bash benchmarks/gpu_device.sh run --workload protonet --only float32+xla 'torch cuda' \
#         --torch-device cuda --iters 50 --budget-s 70
set -euo pipefail
cd "$(dirname "$0")/.."

# What metalab imports on the JAX backend that the device image (KINDS.md's package list) lacks.
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3
        annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4 platformdirs==4.14.8)

case "${1:-}" in
  fetch)
    python_version="${PYTHON_VERSION:-3.12}"   # the device image's python3
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    # metalab itself as a wheel built here (the device image's setuptools may be older than pyproject needs).
    rm -f .whl/metalab-*.whl
    python3 -m pip wheel -q --no-deps -w .whl .
    ls -la .whl
    du -sh .whl
    ;;
  run|exec)
    verb="$1"
    shift
    if ! ls .whl/metalab-*.whl > /dev/null 2>&1; then
      echo "gpu_device.sh $verb: no .whl/metalab-*.whl here. Run 'bash benchmarks/gpu_device.sh fetch' on the" \
           "machine with pip access first, and carry .whl (the device tool's carry: [\".whl\"])." >&2
      exit 2
    fi
    site=/tmp/site
    # metalab comes without its dependencies (TensorFlow, Streamlit): the JAX backend needs neither.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    out="${OUT:-/tmp/gpu-out}"
    mkdir -p "$out"
    if [ "$verb" = exec ]; then  # any command in that environment, e.g. python3 benchmarks/check_gradients.py
      "$@" 2>&1 | tee "$out/${GPU_LOG:-exec.log}"
    else
      python3 benchmarks/gpu.py --backend jax "$@" 2>&1 | tee "$out/${GPU_LOG:-gpu.log}"
    fi
    ;;
  *)
    echo "usage: bash benchmarks/gpu_device.sh fetch | run [gpu.py arguments] | exec COMMAND..." >&2
    exit 2
    ;;
esac
