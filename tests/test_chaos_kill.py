"""Chaos, the long trials (``pytest -m chaos``): processes die at seeded random moments, over and over.

- the marathon: one experiment (torchrun, 2 ranks) SIGKILLed whole ten times - during startup, at a
  training step or while a background save is being written - then resumed to completion;
- a single rank SIGKILLed with no restarts: rank 0 must exit by itself and record the failure;
  ``--resume`` continues;
- 2-node loopback runs where either node (the one holding rank 0 or rank 1) is lost.

After every kill: every committed checkpoint verifies, ``latest`` names a committed one, and the next
start loads the newest committed checkpoint (nothing committed is lost). At the end every step is
in metrics.jsonl exactly once. CI runs a seeded subset of these faults in test_chaos_chain.py.
"""

from __future__ import annotations

import random
import time

import pytest
from chaos_harness import (
    STARTUP_TIMEOUT_S,
    SURVIVOR_BOUND_S,
    Chain,
    check_steps_logged_once,
    disk_state,
    event_names,
    metadata,
    restart_losses,
    wait_until,
)
from chaos_scorecard import record

from seo_dist.checkpoint.layout import checkpoint_name
from seo_dist.tracking.analysis import load_run

pytestmark = pytest.mark.chaos

SAVE_EVERY = 3


def check_after_kill(trial: dict) -> None:
    state = trial["state"]
    assert not state.problems(), f"after a kill at {trial['moment']}: {state.problems()}"


def check_completed(chain: Chain, max_steps: int) -> None:
    meta = metadata(chain.exp_dir)
    assert meta["status"] == "completed"
    check_steps_logged_once(chain.exp_dir, max_steps)
    state = disk_state(chain.ckpt_root)
    assert not state.problems() and state.staging == [], state
    assert state.latest == checkpoint_name(max_steps)
    assert not (chain.exp_dir / ".lock").exists()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_marathon(seed, tmp_path, cache_dir):
    trials = 10
    max_steps = 8 * trials + 10
    rng = random.Random(seed)
    chain = Chain(tmp_path, cache_dir, f"marathon{seed}", [f"train.max_steps={max_steps}",
                                                            f"checkpoint.save_interval={SAVE_EVERY}"])  # fmt: skip
    for _ in range(trials):
        check_after_kill(chain.kill_trial(rng, max_steps))
    chain.finish()
    lost = restart_losses(chain)
    check_completed(chain, max_steps)
    moments = [t["moment"] for t in chain.trials]
    in_save = sum("save in flight" in m for m in moments)
    if any(t["state"].staging for t in chain.trials):
        assert "checkpoint_swept" in event_names(chain.exp_dir)  # staging folders of killed saves are swept
    record("SIGKILL of the whole job (torchrun, 2 ranks) at random moments",
           f"every committed checkpoint verified; latest never partial; resumed from the newest "
           f"({in_save} kills during a save)", trials=trials, data_lost=lost)  # fmt: skip
    assert lost == 0, moments


def test_single_rank_sigkill_without_restarts(tmp_path, cache_dir):
    """SIGKILL of rank 1 only (max-restarts 0): rank 0 records the failure and exits by itself; ``--resume`` continues."""
    max_steps = 40
    chain = Chain(
        tmp_path, cache_dir, "rankkill", [f"train.max_steps={max_steps}", f"checkpoint.save_interval={SAVE_EVERY}"]
    )
    attempt = chain.start(slow_writes=True)
    try:
        wait_until(
            lambda: len(disk_state(chain.ckpt_root).committed) >= 2, STARTUP_TIMEOUT_S, "two commits", attempt.lead
        )
        workers = attempt.lead.wait_for_workers(2)
        workers[1].kill()
        killed = time.monotonic()
        workers[0].wait(timeout=SURVIVOR_BOUND_S)
        survivor_s = time.monotonic() - killed
        rcs = attempt.wait(60)
    finally:
        attempt.close()
    assert survivor_s < SURVIVOR_BOUND_S and rcs != [0]
    state = disk_state(chain.ckpt_root)
    assert not state.problems(), state
    status = metadata(chain.exp_dir)["status"]
    assert status in ("failed", "interrupted"), status
    chain.finish()
    lost = restart_losses(chain)
    check_completed(chain, max_steps)
    record("SIGKILL of one rank, no restarts, then --resume",
           f"rank 0 exited by itself in {survivor_s:.0f}s, status {status}; resumed", data_lost=lost)  # fmt: skip
    assert lost == 0


@pytest.mark.parametrize("seed,lose", [(3, "0"), (4, "1"), (5, "0")])
def test_lost_node_trials(seed, lose, tmp_path, cache_dir):
    """2-node loopback: a whole-job kill, then the loss of the node holding rank ``lose``, then a clean finish."""
    max_steps = 36
    rng = random.Random(seed)
    chain = Chain(tmp_path, cache_dir, f"nodes{seed}", [f"train.max_steps={max_steps}",
                                                         f"checkpoint.save_interval={SAVE_EVERY}"])  # fmt: skip
    check_after_kill(chain.kill_trial(rng, max_steps, topology="nodes"))
    lost_node = chain.kill_trial(rng, max_steps, topology="nodes", lose=lose, kind=rng.choice(["step", "save"]))
    check_after_kill(lost_node)
    assert lost_node["exit_s"] < SURVIVOR_BOUND_S
    if lose == "1":  # rank 0 survived: it recorded the outcome (a dead rank 0 cannot)
        assert metadata(chain.exp_dir)["status"] in ("failed", "interrupted")
    else:  # metadata still says running; `seo-dist runs` sees the dead lock owner and says abandoned
        assert metadata(chain.exp_dir)["status"] == "running"
        assert load_run(chain.exp_dir).status == "abandoned"
    chain.finish(topology="nodes")
    lost = restart_losses(chain)
    check_completed(chain, max_steps)
    record("SIGKILL of the whole job (2-node loopback) at random moments",
           "every committed checkpoint verified; resumed from the newest", data_lost=lost)  # fmt: skip
    record("Node lost (2-node loopback: SIGKILL of one torchrun and its rank)",
           f"survivor exited by itself in {lost_node['exit_s']:.0f}s; resumed", data_lost=lost)  # fmt: skip
    assert lost == 0
