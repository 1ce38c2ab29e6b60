#!/usr/bin/env bash
# Create .venv and install seo_dist with its test tools and the MLflow client (its tests start a local
# MLflow server).
#
#   bash launch/setup_env.sh            # CPU machine: torch 2.13.0 CPU build
#   TORCH_SPEC="torch==2.5.1" bash launch/setup_env.sh   # a cluster: the torch build matching your CUDA
#
# torch is installed first and on its own: DeepSpeed ships as an sdist and would otherwise make pip
# pull a multi-GB CUDA build of torch just to build it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[test,mlflow]"
.venv/bin/python -c "import torch, deepspeed, transformers; print('seo_dist environment ready: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)" 2>&1 | grep -v -i "warn"
