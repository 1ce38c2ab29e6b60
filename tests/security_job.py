"""Security test job (tests/test_security.py): real DeepSpeed ZeRO-2 on 2 CPU ranks (gloo), under torchrun.

    torchrun --nproc-per-node 2 tests/security_job.py OUT KEYFILE

1. ``unsigned/``: train 4 steps, save at 2 and 4 (no key). Rank 0 then copies the root three times and plants a
   payload (an object whose ``__reduce__`` would create a marker file) in step 4's rank-state file of rank 1,
   DeepSpeed's model-state file, or rank 1's optimizer-state file, recomputing size, hash and manifest checksum
   (what a person with write access can do). Each copy is loaded with a fresh manager: it must fall back to
   step 2 with the marker never created. A fourth copy holds only the poisoned step 4: the load must raise
   NoValidCheckpointError.
2. ``signed/``: with the key, train 6 steps saving at 2, 4, 6; a fresh engine loads step 4 through the manager
   and trains 5-6: parameters and losses must match bit for bit. A third fresh engine reads step 4 with
   DeepSpeed's own ``engine.load_checkpoint`` (its default checkpoint engine).

Evidence goes to OUT/result_rank{r}.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from ckpt_job import build_engine, train_step

from seo_dist import dist
from seo_dist.checkpoint import CheckpointManager, CheckpointStrategy
from seo_dist.checkpoint.errors import NoValidCheckpointError
from seo_dist.checkpoint.signing import key_from_file

STAGE = 2
TARGETS = {
    "rank_state": "seo_dist_rank_00001.pt",
    "model_state": "mp_rank_00_model_states.pt",
    "optim_state": "zero_pp_rank_1_mp_rank_00_optim_states.pt",
}


class Events(list):
    def __call__(self, name: str, **fields: Any) -> None:
        self.append({"event": name, **fields})


class Payload:
    """Unpickling this runs ``os.system("touch MARKER")``: what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def plant_payload(folder: Path, name: str, marker: Path) -> None:
    """Add a Payload to ``folder/name`` and make the manifest agree again (size, hash, checksum): no key needed."""
    from seo_dist.checkpoint.hashing import hash_file
    from seo_dist.checkpoint.manifest import read_manifest, write_manifest

    path = folder / name
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, trusted
    state["extra"] = Payload(str(marker))
    torch.save(state, path)
    manifest = read_manifest(folder)
    size, digest = hash_file(path, manifest.hash_algorithm)
    manifest.files[name] = {"size": size, "hash": digest}
    write_manifest(folder, manifest)


def params(engine: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def unsigned_part(out: Path) -> dict[str, Any]:
    root = out / "unsigned" / "checkpoints"
    engine = build_engine(STAGE, seed=0)
    mgr = CheckpointManager(root, CheckpointStrategy(save_interval=2, keep_last=3))
    for step in range(1, 5):
        train_step(engine, step)
        if mgr.should_save(step):
            mgr.save_checkpoint(engine, step=step, rank_state={"step": step})
    mgr.close()
    if dist.is_rank_zero():
        for target, name in TARGETS.items():
            copy = out / "unsigned" / f"poisoned_{target}"
            shutil.copytree(root, copy)
            plant_payload(copy / "step_00000004", name, out / f"MARKER_{target}")
        only = out / "unsigned" / "only_poisoned"
        only.mkdir()
        shutil.copytree(root / "step_00000004", only / "step_00000004")
        plant_payload(only / "step_00000004", TARGETS["rank_state"], out / "MARKER_only")
    dist.barrier()
    results: dict[str, Any] = {}
    for target in TARGETS:
        events = Events()
        loader = CheckpointManager(
            out / "unsigned" / f"poisoned_{target}", CheckpointStrategy(save_interval=2, keep_last=3), event_fn=events
        )
        loaded = loader.load_checkpoint("latest", engine)
        results[target] = {"step": loaded["step"], "fell_back_from": loaded["fell_back_from"], "events": events}
        loader.close()
    try:
        CheckpointManager(out / "unsigned" / "only_poisoned").load_checkpoint("latest", engine)
        results["only_poisoned"] = "loaded"
    except NoValidCheckpointError as e:
        results["only_poisoned"] = f"NoValidCheckpointError: {e}"
    engine.destroy()
    return results


def signed_part(out: Path, key_file: Path) -> dict[str, Any]:
    root = out / "signed" / "checkpoints"
    strategy = CheckpointStrategy(save_interval=2, keep_last=3, signing_key_file=str(key_file))
    engine = build_engine(STAGE, seed=0)
    mgr = CheckpointManager(root, strategy)
    losses_a = {}
    for step in range(1, 7):
        losses_a[step] = train_step(engine, step)
        if mgr.should_save(step):
            mgr.save_checkpoint(engine, step=step, rank_state={"step": step})
    mgr.close()
    final_a = params(engine)
    engine.destroy()

    engine = build_engine(STAGE, seed=123)  # other initial weights: the load must overwrite them
    mgr = CheckpointManager(root, strategy)
    loaded = mgr.load_checkpoint(root / "step_00000004", engine)
    loaded_b = params(engine)
    losses_b = {step: train_step(engine, step) for step in (5, 6)}
    final_b = params(engine)
    engine.destroy()

    engine = build_engine(STAGE, seed=321)
    path, _ = engine.load_checkpoint(str(root), tag="step_00000004")  # DeepSpeed's own checkpoint engine
    loaded_c = params(engine)
    engine.destroy()
    return {
        "signed_by": loaded["manifest"].signed_by,
        "key_id": key_from_file(key_file).key_id,
        "hash_algorithm": loaded["manifest"].hash_algorithm,
        "resume_bit_identical": all(torch.equal(final_a[k], final_b[k]) for k in final_a),
        "losses_equal": [losses_a[s] == losses_b[s] for s in (5, 6)],
        "deepspeed_load_path": path,
        "deepspeed_reads_same_weights": all(torch.equal(loaded_b[k], loaded_c[k]) for k in loaded_b),
    }


def main() -> None:
    out, key_file = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_distributed()
    result = {"unsigned": unsigned_part(out), "signed": signed_part(out, key_file)}
    (out / f"result_rank{dist.get_rank()}.json").write_text(json.dumps(result, indent=1, default=str))
    dist.barrier()
    dist.cleanup()
    os._exit(0)


if __name__ == "__main__":
    main()
