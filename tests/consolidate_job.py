"""Real DeepSpeed checkpoints for tests/test_consolidate.py, run under torchrun (1 or 2 CPU ranks).

One launch trains a tiny GPT-2 in the scenarios named by ``--scenarios``, one engine after another, and
lays each out as an experiment directory the way seo_dist does:

```
<out>/<scenario>/
  checkpoints/step_0000000N/   DeepSpeed's files + hf_config.json + manifest.json (a committed checkpoint)
  checkpoints/latest, index.json
  artifacts/tokenizer/         the tokenizer, saved by rank 0
  live/step_0000000N.pt        rank 0: the live parameters (gathered under ZeRO-3), fp32, and the logits
```

The width is odd (n_embd 63, 3 heads) so that parameter sizes are odd and DeepSpeed's padding and
partition boundaries fall inside parameters; ``transformer.wpe.weight`` is frozen so that frozen
parameters take their own path; the optimizer has two parameter groups, as in seo_dist's trainer.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from seo_dist import dist
from seo_dist.checkpoint.hashing import hash_file
from seo_dist.checkpoint.index import build_index, read_latest, scan_checkpoints, write_index
from seo_dist.checkpoint.layout import MANIFEST, checkpoint_name
from seo_dist.checkpoint.manifest import Manifest, write_manifest
from seo_dist.config import TrainConfig
from seo_dist.data import get_tokenizer, load_corpus
from seo_dist.engine.deepspeed_engine import build_optimizer

SCENARIOS: dict[str, dict[str, Any]] = {
    "z1": {"stage": 1, "bf16": False, "save_steps": (2,)},
    "z2": {"stage": 2, "bf16": False, "save_steps": (1, 2)},  # two checkpoints: --best picks step 1
    "z2_bf16": {"stage": 2, "bf16": True, "save_steps": (2,)},
    "z3": {"stage": 3, "bf16": False, "save_steps": (2,)},
}
VOCAB = 512
SEQ = 16
MICRO_BATCH = 2
HF_CONFIG_FILE = "hf_config.json"
VAL_LOSS_BY_STEP = {1: 2.0, 2: 3.0}  # a made-up metric: step 1 is the best


def probe_input() -> torch.Tensor:
    """The fixed input whose logits the tests compare."""
    return torch.arange(2 * SEQ).remainder(VOCAB - 7).add(3).view(2, SEQ)


def make_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=63, n_layer=2, n_head=3, bos_token_id=0, eos_token_id=0, pad_token_id=1
    )
    model = GPT2LMHeadModel(config)
    model.transformer.wpe.weight.requires_grad_(False)
    return model


def ds_config(stage: int, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
        "gradient_clipping": 1.0,
        "steps_per_print": 10_000,
    }


def live_state(engine: Any, stage: int) -> dict[str, torch.Tensor]:
    """Every parameter of the model as it is now (tied ones once, as named_parameters lists them)."""
    import deepspeed

    params = dict(engine.module.named_parameters())
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().float().clone() for n, p in params.items()}
    return {n: p.detach().float().clone() for n, p in params.items()}


def commit(exp: Path, tag: str, step: int, stage: int, hf_config: dict[str, Any]) -> None:
    """What seo_dist's checkpoint core does after DeepSpeed wrote its files: hf_config, manifest, index."""
    folder = exp / "checkpoints" / tag
    (folder / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2))
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size, digest = hash_file(path, "xxh3_128")
        files[path.relative_to(folder).as_posix()] = {"size": size, "hash": digest}
    write_manifest(
        folder,
        Manifest(
            step=step,
            hash_algorithm="xxh3_128",
            files=files,
            world_size=dist.get_world_size(),
            zero_stage=stage,
            metrics={"val/loss": VAL_LOSS_BY_STEP[step]},
        ),
    )
    root = exp / "checkpoints"
    scan = scan_checkpoints(root)
    write_index(root, build_index(scan, latest=read_latest(root), tracked={"val/loss": False}, pinned=()))


def run_scenario(out: Path, name: str, spec: dict[str, Any], tokenizer: Any) -> None:
    import deepspeed

    exp = out / name
    model = make_model()
    hf_config = model.config.to_dict()
    optimizer = build_optimizer(model, TrainConfig(lr=5e-2, weight_decay=0.1))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config(spec["stage"], spec["bf16"])
    )
    gen = torch.Generator().manual_seed(100 + dist.get_rank())
    for step in range(1, max(spec["save_steps"]) + 1):
        engine.train()
        ids = torch.randint(0, VOCAB, (MICRO_BATCH, SEQ), generator=gen)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if step not in spec["save_steps"]:
            continue
        tag = checkpoint_name(step)
        engine.save_checkpoint(str(exp / "checkpoints"), tag=tag)
        state = live_state(engine, spec["stage"])
        engine.eval()
        with torch.no_grad():
            logits = engine(input_ids=probe_input()).logits.float()
        if dist.is_rank_zero():
            commit(exp, tag, step, spec["stage"], hf_config)
            (exp / "live").mkdir(exist_ok=True)
            torch.save({"params": state, "logits": logits, "bf16": spec["bf16"]}, exp / "live" / f"{tag}.pt")
        dist.barrier()
    if dist.is_rank_zero():
        tokenizer.save_pretrained(str(exp / "artifacts" / "tokenizer"))
    engine.destroy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    dist.init_distributed()
    tokenizer = get_tokenizer(load_corpus(), VOCAB)
    for name in args.scenarios.split(","):
        run_scenario(args.out, name, SCENARIOS[name], tokenizer)
    dist.barrier()
    if dist.is_rank_zero():
        (args.out / "done").write_text("ok")
    dist.cleanup()
    os._exit(0)  # skip interpreter teardown of DeepSpeed's hooks (seconds on 2 cores)


if __name__ == "__main__":
    main()
