#!/usr/bin/env bash
# Creates .venv/ at the repository root with everything gkd_d2 needs, then installs gkd_d2
# into it (editable). Idempotent: each step is skipped when its result is already there.
#
#   PYTHON=python3.11 bash tools/bootstrap.sh
#
# torch is pinned here (not in setup.py): 2.14.1 + torchvision 0.29.1 is the pair that
# installs on the CPU machines this project is developed on. On a GPU machine with internet,
# install torch and detectron2 yourself first (see README); this script then skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.gkd_d2_bootstrap_done

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import detectron2, gkd_d2" 2>/dev/null; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || { echo "[bootstrap] creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
PIP="$VPY -m pip --disable-pip-version-check"

if ! "$VPY" -c "import torch, torchvision" 2>/dev/null; then
  # torch 2.14.1 on x86_64 is a CUDA build: with its nvidia-* and triton packages it takes about
  # 5.5 GB, the whole .venv about 6 GB. Say so before pip fails half-way with "No space left".
  NEED_GB=${GKD_BOOTSTRAP_NEED_GB:-6}
  FREE_KB=$(df -Pk "$VENV" | awk 'NR==2 {print $4}')
  if [ "$FREE_KB" -lt $((NEED_GB * 1024 * 1024)) ]; then
    echo "[bootstrap] error: installing torch needs about $NEED_GB GB free, but the disk holding" \
      "$(pwd)/$VENV has $((FREE_KB / 1024)) MB free (df -h $VENV). Free some space, or install" \
      "torch + torchvision into $VENV yourself; GKD_BOOTSTRAP_NEED_GB=0 skips this check." >&2
    exit 1
  fi
  echo "[bootstrap] installing torch 2.14.1 + torchvision 0.29.1"
  $PIP install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi

echo "[bootstrap] installing detectron2's dependencies and test tools"
$PIP install -q fvcore iopath pycocotools yacs tabulate termcolor cloudpickle tqdm matplotlib \
  Pillow "omegaconf>=2.1,<2.4" "hydra-core>=1.1" tensorboard black packaging "numpy<2" \
  "setuptools<81" scipy pytest "opencv-python-headless<4.11"

if ! "$VPY" -c "import detectron2" 2>/dev/null; then
  # detectron2 is not on the package index under its own name. sal-detectron2 is a wheel of
  # upstream detectron2 (late 2024) built for CPython 3.10; its Python code runs on 3.11 and
  # detectron2 falls back to pure-Python/torchvision ops when its _C extension does not load.
  SITE=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "[bootstrap] installing detectron2 (sal-detectron2 wheel) into $SITE"
  $PIP install -q --no-deps --only-binary=:all: --python-version 3.10 --upgrade --target "$SITE" sal-detectron2
fi

echo "[bootstrap] installing gkd_d2 (editable)"
$PIP install -q --no-deps --no-build-isolation -e .
"$VPY" -c "import detectron2, gkd_d2; print('[bootstrap] ok: detectron2', detectron2.__version__)"
touch "$STAMP"
