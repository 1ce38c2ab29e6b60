"""Chaos (``pytest -m chaos``): a 2-node loopback job (ZeRO-2, one rank per node) loses the node holding rank 1
at a seeded step after its first commit; the surviving node alone continues with ``--resume`` on 1 rank and
``train.grad_accum=2`` (the same global batch). Its partitioned ZeRO state is resharded 2 -> 1, it loads the newest
committed checkpoint, the data order continues at the same global sample, every step is logged once, and it
completes."""

from __future__ import annotations

import random

import pytest
from chaos_harness import (
    Attempt,
    Chain,
    Job,
    chaos_env,
    check_steps_logged_once,
    disk_state,
    events,
    metadata,
    restart_losses,
    torchrun_args,
    train_command,
)
from chaos_scorecard import record

from seo_dist.checkpoint.layout import checkpoint_name

pytestmark = pytest.mark.chaos

MICRO_BATCH = 8  # configs/tiny_cpu.yaml
RANKS_BEFORE = 2


def start_on_one_rank(chain: Chain, sets: list[str]) -> Attempt:
    """``--resume`` of the chain's experiment by a single torchrun with one rank (the surviving node)."""
    started = disk_state(chain.ckpt_root)
    first_event = len(events(chain.exp_dir))
    cmd = train_command(chain.base, sets, resume=chain.exp_dir, launcher=torchrun_args(1))
    log = chain.tmp / "logs" / f"{chain.exp_id}_{len(chain.attempts)}_survivor.log"
    job = Job(cmd, chain.tmp, chaos_env(chain.cache), log)
    attempt = Attempt([job], started_step=started.newest_step, started_state=started, first_event=first_event)
    chain.attempts.append(attempt)
    return attempt


@pytest.mark.parametrize("seed", [11])
def test_lost_node_continues_on_the_surviving_node_alone(seed, tmp_path, cache_dir):
    max_steps = 15
    rng = random.Random(seed)
    chain = Chain(tmp_path, cache_dir, f"reshard{seed}", [f"train.max_steps={max_steps}", "checkpoint.save_interval=3"])
    lost = chain.kill_trial(rng, max_steps, topology="nodes", lose="1", kind="step", after_commit=True)
    assert not lost["state"].problems(), lost["state"]
    survivor = start_on_one_rank(chain, ["train.grad_accum=2"])
    try:
        assert survivor.wait() == [0], survivor.tail()
    finally:
        survivor.close()
    data_lost = restart_losses(chain)  # each start loaded the newest committed checkpoint
    check_steps_logged_once(chain.exp_dir, max_steps)
    assert metadata(chain.exp_dir)["status"] == "completed"
    assert disk_state(chain.ckpt_root).latest == checkpoint_name(max_steps)
    mine = chain.events_of(survivor)
    (resharded,) = [e for e in mine if e["event"] == "resharded"]
    assert (resharded["from_world_size"], resharded["to_world_size"], resharded["zero_stage"]) == (2, 1, 2)
    assert not [e for e in mine if e["event"] == "global_batch_changed"]
    (moved,) = [e for e in mine if e["event"] == "data_resharded"]
    step = resharded["step"]
    assert moved["exact"] is True  # the global sample position maps onto 1 rank without skipping or repeating
    assert moved["epoch"] > 0 or moved["samples_in_epoch"] == step * RANKS_BEFORE * MICRO_BATCH
    record("Node lost (2-node loopback), survivor resumes alone (ZeRO-2 resharded 2 -> 1)",
           f"loaded step {step} on 1 rank in {resharded['seconds']:.0f}s of reshard; completed", data_lost=data_lost)  # fmt: skip
    assert data_lost == 0
