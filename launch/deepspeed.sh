#!/usr/bin/env bash
# Launch seo_dist with the DeepSpeed launcher (it appends --local_rank=N; seo_dist accepts it).
#
#   launch/deepspeed.sh configs/gpt2_small_1node.yaml [--set k=v ...]
#
# Multi-node: HOSTFILE=launch/hostfile (see launch/hostfile.example; passwordless ssh between nodes).
# CPU-only machine: NUM_ACCELERATORS=2 launch/deepspeed.sh configs/tiny_cpu.yaml
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
ARGS=()
if [ -n "${HOSTFILE:-}" ]; then
  ARGS+=(--hostfile "$HOSTFILE")
fi
if [ -n "${NUM_ACCELERATORS:-}" ]; then
  ARGS+=(--num_accelerators "$NUM_ACCELERATORS")
fi
ARGS+=(--master_port "${MASTER_PORT:-29500}")
exec deepspeed "${ARGS[@]}" --module seo_dist.train --config "$CONFIG" "$@"
