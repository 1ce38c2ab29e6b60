"""The peer of bench_overhead.py: a plain DeepSpeed training loop with nothing of seo_dist in it.

The same model and settings as ``seo_dist.train --config configs/tiny_cpu.yaml`` with the overrides
bench_overhead.py passes: GPT-2 (n_layer, n_embd, n_head from the flags, vocab 4096, 128 positions), micro
batch 8, sequence 128, ZeRO-2 with configs/deepspeed/zero2.json, gradient clipping 1.0, AdamW (betas 0.9/0.95,
weight decay 0.01 except biases/norms/embeddings), linear warm-up then cosine. Batches are random token ids
(the trainer's are pre-tokenised blocks: neither costs anything measurable). The loss is read every
``--log-interval`` steps, as a plain loop logging it would. Every step is timed on the host; rank 0 writes
the times as JSON to ``--out``.

    torchrun --nproc-per-node 2 benchmarks/plain_deepspeed_peer.py --steps 60 --out peer.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import deepspeed
import torch
from transformers import GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parents[1]
NO_DECAY = ("bias", "norm", "ln_", "embedding", "wte", "wpe")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=args.vocab, n_positions=args.seq, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head)  # fmt: skip
    model = GPT2LMHeadModel(config)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not any(k in n.lower() for k in NO_DECAY)]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not any(k in n.lower() for k in NO_DECAY))]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip

    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ds = json.loads((REPO / "configs" / "deepspeed" / "zero2.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=args.micro_batch, gradient_accumulation_steps=1, gradient_clipping=1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)
    engine.train()
    gen = torch.Generator().manual_seed(args.seed + engine.global_rank)
    times, losses = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        ids = torch.randint(0, args.vocab, (args.micro_batch, args.seq), generator=gen).to(engine.device)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if (step + 1) % args.log_interval == 0:
            losses.append(loss.item())
        times.append(time.perf_counter() - start)
    if engine.global_rank == 0:
        Path(args.out).write_text(json.dumps({"step_times_s": times, "losses": losses}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()  # without it gloo's threads may abort the exit ("terminate called")


if __name__ == "__main__":
    main()
