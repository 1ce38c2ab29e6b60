"""Retention is a pure function: property tests over random histories (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from seo_dist.checkpoint.layout import checkpoint_name
from seo_dist.checkpoint.retention import (
    CheckpointInfo,
    best_checkpoint,
    plan_deletions,
    plan_space_pruning,
    protected,
    rank_by_metric,
    retained,
)

METRIC = "val/loss"
metric_values = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf]),  # never ranked; drawn often so that a slip shows
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-5, 5).map(float),
)


@st.composite
def histories(draw):
    steps = sorted(draw(st.sets(st.integers(0, 10_000), min_size=1, max_size=25)))
    infos = [
        CheckpointInfo(
            name=checkpoint_name(s),
            step=s,
            metrics={METRIC: draw(metric_values)},
            total_bytes=draw(st.integers(1, 100)),
        )
        for s in steps
    ]
    policy = {
        "keep_last": draw(st.integers(2, 6)),
        "keep_best": draw(st.integers(0, 3)),
        "tracked": {METRIC: draw(st.booleans())},
        "pinned": set(draw(st.lists(st.sampled_from(steps), max_size=3))),
        "latest": draw(st.sampled_from([i.name for i in infos])),
    }
    return infos, policy


def _finite(info: CheckpointInfo) -> bool:
    v = info.metrics.get(METRIC)
    return v is not None and math.isfinite(v)


def _best_k_by_hand(infos: list[CheckpointInfo], k: int, maximize: bool) -> set[str]:
    """The oracle for "best ``k`` by the metric", written apart from retention.py: checkpoints without a finite
    value (None, NaN, +-inf) never count; a better value wins, and of two equal values the later step. Picks the
    best of what is left, ``k`` times (no sort key shared with the code under test)."""

    def beats(a: CheckpointInfo, b: CheckpointInfo) -> bool:
        va, vb = a.metrics[METRIC], b.metrics[METRIC]
        if va != vb:
            return va > vb if maximize else va < vb
        return a.step > b.step

    left = [i for i in infos if _finite(i)]
    chosen: set[str] = set()
    for _ in range(min(k, len(left))):
        best = left[0]
        for other in left[1:]:
            if beats(other, best):
                best = other
        chosen.add(best.name)
        left.remove(best)
    return chosen


@given(histories())
@settings(max_examples=300, deadline=None)
def test_kept_set_is_exactly_the_union(history):
    infos, p = history
    keep = retained(infos, **p)
    maximize = p["tracked"][METRIC]
    newest = {i.name for i in infos if sum(j.step > i.step for j in infos) < p["keep_last"]}
    best_k = _best_k_by_hand(infos, p["keep_best"], maximize)
    pinned = {i.name for i in infos if i.step in p["pinned"]}
    assert keep == newest | best_k | pinned | {p["latest"]}
    doomed = plan_deletions(infos, **p)
    assert {i.name for i in doomed} == {i.name for i in infos} - keep
    assert [i.step for i in doomed] == sorted(i.step for i in doomed)


@given(histories())
@settings(max_examples=300, deadline=None)
def test_best_latest_and_pinned_are_never_deleted(history):
    infos, p = history
    doomed = {i.name for i in plan_deletions(infos, **p)}
    assert p["latest"] not in doomed
    assert not {i.name for i in infos if i.step in p["pinned"]} & doomed
    best = best_checkpoint(infos, METRIC, p["tracked"][METRIC])
    if p["keep_best"] >= 1 and best is not None:
        assert best.name not in doomed
        values = [i.metrics[METRIC] for i in infos if _finite(i)]
        assert best.metrics[METRIC] == (max(values) if p["tracked"][METRIC] else min(values))


@given(st.lists(metric_values, min_size=1, max_size=40), st.integers(2, 5), st.integers(1, 3), st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_run_that_prunes_after_every_save_keeps_its_best_and_newest(values, keep_last, keep_best, maximize):
    """Simulate a run: commit step k, then apply retention (latest = the new one), as the manager does."""
    on_disk: list[CheckpointInfo] = []
    for step, value in enumerate(values, start=1):
        on_disk.append(CheckpointInfo(name=checkpoint_name(step), step=step, metrics={METRIC: value}))
        policy = dict(
            keep_last=keep_last,
            keep_best=keep_best,
            tracked={METRIC: maximize},
            pinned=set(),
            latest=checkpoint_name(step),
        )
        doomed = {i.name for i in plan_deletions(on_disk, **policy)}
        on_disk = [i for i in on_disk if i.name not in doomed]
        names = [i.name for i in on_disk]
        assert checkpoint_name(step) in names
        assert names[-min(keep_last, step) :] == [
            checkpoint_name(s) for s in range(max(1, step - keep_last + 1), step + 1)
        ]
        assert len(on_disk) <= keep_last + keep_best
        history = [
            CheckpointInfo(name=checkpoint_name(s), step=s, metrics={METRIC: v})
            for s, v in enumerate(values[:step], start=1)
        ]
        best_ever = best_checkpoint(history, METRIC, maximize)
        if best_ever is not None:
            assert best_ever.name in names


@given(histories(), st.integers(0, 3000), st.integers(0, 3000))
@settings(max_examples=300, deadline=None)
def test_space_pruning_never_touches_protected_and_frees_enough(history, needed, free):
    infos, p = history
    del p["keep_last"]
    plan = plan_space_pruning(infos, needed, free, **p)
    keep = protected(infos, **p)
    unprotected = [i for i in infos if i.name not in keep]
    if plan is None:
        assert free + sum(i.total_bytes for i in unprotected) < needed
        return
    assert not {i.name for i in plan} & keep
    assert free + sum(i.total_bytes for i in plan) >= needed
    assert [i.step for i in plan] == sorted(i.step for i in unprotected)[
        : len(plan)
    ]  # oldest first, no more than needed
    if plan:
        assert free + sum(i.total_bytes for i in plan[:-1]) < needed


def test_ties_prefer_the_newer_checkpoint_and_nan_is_never_best():
    infos = [
        CheckpointInfo(name=checkpoint_name(s), step=s, metrics={METRIC: v})
        for s, v in [(1, 1.0), (2, float("nan")), (3, 1.0), (4, None), (5, 2.0)]
    ]
    assert best_checkpoint(infos, METRIC, maximize=False).step == 3
    assert best_checkpoint(infos, METRIC, maximize=True).step == 5
    assert [i.step for i in rank_by_metric(infos, METRIC, False)] == [3, 1, 5]
    assert best_checkpoint(infos, "val/acc", maximize=True) is None
