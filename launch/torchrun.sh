#!/usr/bin/env bash
# Launch seo_dist with torchrun on this node (one or many nodes).
#
#   launch/torchrun.sh configs/tiny_cpu.yaml [--set k=v ...] [--resume EXP_DIR]
#
# Single node: NPROC_PER_NODE (default: number of GPUs, or 2 on a CPU-only machine).
# Multi-node, static:   NNODES=4 NODE_RANK=0..3 MASTER_ADDR=host0 MASTER_PORT=29500 launch/torchrun.sh CONFIG
# Multi-node, elastic:  NNODES=4 RDZV_ENDPOINT=host0:29500 [RDZV_ID=job42] launch/torchrun.sh CONFIG
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG.yaml [--set k=v ...] [--resume EXP_DIR]" >&2
  exit 2
fi
CONFIG=$1; shift
if [ ! -f "$CONFIG" ]; then
  echo "$0: config file '$CONFIG' does not exist" >&2
  exit 2
fi

if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(python -c 'import torch; print(torch.cuda.device_count() or 2)')
fi
NNODES=${NNODES:-1}
ARGS=(--nproc-per-node "$NPROC_PER_NODE" --nnodes "$NNODES")
if [ -n "${RDZV_ENDPOINT:-}" ]; then
  ARGS+=(--rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-seo_dist}")
elif [ "$NNODES" -gt 1 ]; then
  : "${MASTER_ADDR:?set MASTER_ADDR (or RDZV_ENDPOINT) for a multi-node run}"
  ARGS+=(--node-rank "${NODE_RANK:?set NODE_RANK for a multi-node run}" --master-addr "$MASTER_ADDR" --master-port "${MASTER_PORT:-29500}")
else
  ARGS+=(--standalone)
fi
if [ -n "${MAX_RESTARTS:-}" ]; then
  ARGS+=(--max-restarts "$MAX_RESTARTS")
fi
exec torchrun "${ARGS[@]}" -m seo_dist.train --config "$CONFIG" "$@"
