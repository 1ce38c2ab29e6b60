"""The monitor's parts without a training job: config checks, the hang verdict, stack dumps, alerts
(to a real webhook on 127.0.0.1, and to one that never answers), the straggler rule, orphan detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from monitor_helpers import BlackHole, Webhook

from seo_dist.config import load_config
from seo_dist.config.sections import JobConfig, MonitorConfig
from seo_dist.errors import ConfigError
from seo_dist.monitor.alerts import AlertContext, AlertSender, Delivery, alert_for
from seo_dist.monitor.dumps import write_rank_dump
from seo_dist.monitor.heartbeat import Heartbeat
from seo_dist.monitor.orphan import OrphanWatch
from seo_dist.monitor.straggler import StragglerRule
from seo_dist.monitor.verdict import HangWatch, describe, recorder_rank

REPO = Path(__file__).resolve().parents[1]
CONTEXT = AlertContext("exp_1", "/runs/exp_1", "node7")


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "override, expected",
    [
        ("monitor.alert_webhook=ftp://x/y", "monitor.alert_webhook must be an http(s) URL"),
        ("monitor.alert_webhook=http://", "monitor.alert_webhook must be an http(s) URL"),
        ("monitor.alert_command=no-such-program-xyz --flag", "program 'no-such-program-xyz' not found"),
        ("monitor.alert_command='unclosed", "cannot be split into words"),
        ("monitor.on_hang=restart", "monitor.on_hang"),
        ("monitor.straggler_factor=1.0", "monitor.straggler_factor"),
        ("monitor.hang_timeout_s=-1", "monitor.hang_timeout_s"),
        ("monitor.collective_timeout_s=60", "must be above monitor.hang_timeout_s"),
    ],
)
def test_bad_monitor_settings_are_one_line_config_errors(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "tiny_cpu.yaml", [override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bad_webhook_exits_2_from_the_cli(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "seo_dist.train", "--config", str(REPO / "configs" / "tiny_cpu.yaml"),
                           "--set", "monitor.alert_webhook=not a url"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("seo_dist: error: monitor.alert_webhook")
    assert not (tmp_path / "experiments").exists()


def test_monitor_settings_do_not_change_the_config_hash() -> None:
    plain = JobConfig()
    tuned = JobConfig(monitor=MonitorConfig(hang_timeout_s=5.0, alert_webhook="https://hooks.example.com/x"))
    assert plain.config_hash() == tuned.config_hash()


def test_good_settings_load() -> None:
    job = load_config(REPO / "configs" / "tiny_cpu.yaml",
                      ["monitor.alert_webhook=https://hooks.example.com/T0/B0", f"monitor.alert_command={sys.executable} -c pass"])  # fmt: skip
    assert job.monitor.hang_timeout_s >= 600 and job.monitor.on_hang == "abort"
    assert not job.monitor.validate()


# ---------------------------------------------------------------------------- the verdict


def _record(rank: int, *, step: int, phase: str = "step", age: float = 0.0, pub: int = 1) -> dict:
    return {"rank": rank, "step": step, "phase": phase, "age": age, "pub": pub, "pid": 100 + rank, "host": "h"}


def test_a_frozen_rank_is_named_and_the_waiting_one_is_not() -> None:
    watch = HangWatch(MonitorConfig(hang_timeout_s=10), 2, silent_after_s=3)
    watch.update({0: _record(0, step=5, age=0.0, pub=1), 1: _record(1, step=5, age=0.2, pub=1)}, now=100.0)
    assert watch.verdict(now=105.0) is None
    # rank 0 keeps publishing (its monitor runs) while its training thread waits; rank 1 publishes nothing
    for t in range(106, 112):
        watch.update({0: _record(0, step=5, age=t - 100.0, pub=t), 1: _record(1, step=5, age=0.2, pub=1)}, now=t)
    verdict = watch.verdict(now=111.0)
    assert verdict is not None and verdict["stalled_ranks"] == [1]
    assert verdict["ranks"]["1"]["seconds_since_heartbeat"] == 11.0
    assert verdict["ranks"]["1"]["seconds_since_progress"] == pytest.approx(11.2)
    assert recorder_rank(verdict) == 0
    assert describe(verdict).startswith("hang detected: rank 1 (step 5, phase step")


def test_slow_phases_get_their_own_allowance_and_exited_ranks_are_ignored() -> None:
    config = MonitorConfig(hang_timeout_s=10, slow_phase_timeout_s=100)
    watch = HangWatch(config, 2, silent_after_s=3)
    watch.update({0: _record(0, step=5, phase="checkpoint_save", age=50), 1: _record(1, step=5, phase="exited", age=500)}, now=0)  # fmt: skip
    assert watch.verdict(now=1) is None
    watch.update({0: _record(0, step=5, phase="checkpoint_save", age=150, pub=2)}, now=2)
    assert watch.verdict(now=2)["stalled_ranks"] == [0]
    assert HangWatch(MonitorConfig(hang_timeout_s=0), 1, silent_after_s=3).verdict() is None


def test_without_a_silent_rank_the_rank_behind_is_stalled() -> None:
    watch = HangWatch(MonitorConfig(hang_timeout_s=10), 3, silent_after_s=3)
    watch.update({r: _record(r, step=7 if r != 2 else 6, age=20, pub=1) for r in range(3)}, now=0)
    verdict = watch.verdict(now=0)
    assert verdict["stalled_ranks"] == [2] and recorder_rank(verdict) == 0


def test_heartbeat_updates_are_progress() -> None:
    hb = Heartbeat()
    first = hb.current
    hb.beat(3)
    with hb.during("validation"):
        assert hb.current.phase == "validation" and hb.current.step == 3
    assert hb.current.phase == "step" and hb.current.seq == first.seq + 3


# ---------------------------------------------------------------------------- dumps


def test_dump_holds_every_threads_stack(tmp_path: Path) -> None:
    import threading

    ready, release = threading.Event(), threading.Event()

    def parked_in_a_named_function() -> None:
        ready.set()
        release.wait(10)

    t = threading.Thread(target=parked_in_a_named_function, name="worker-x")
    t.start()
    ready.wait(5)
    try:
        path = write_rank_dump(tmp_path / "hangs" / "t", 3, {"rank": 3, "verdict": {"stalled_ranks": [1]}})
    finally:
        release.set()
        t.join()
    text = path.read_text()
    assert path.name == "rank_3.txt"
    assert "thread worker-x" in text and "parked_in_a_named_function" in text
    assert "test_dump_holds_every_threads_stack" in text  # the calling (main) thread
    assert "flight recorder" in text


# ---------------------------------------------------------------------------- alerts


def test_webhook_receives_the_alert_with_slack_text() -> None:
    hook = Webhook()
    try:
        sender = AlertSender(hook.url, None, CONTEXT)
        sender.on_event(
            {"event": "end", "status": "failed", "step": 7, "message": "RuntimeError: boom", "level": "error"}
        )
        sender.on_event({"event": "non_finite_loss", "policy": "skip", "step": 8})  # not an alert
        sender.on_event({"event": "checkpoint_save_failed", "step": 9, "message": "disk"})
        assert sender.close(10)
        alert = hook.wait_for("failed")
        assert {k: alert[k] for k in ("event", "experiment_id", "experiment_dir", "step", "message", "host")} == {
            "event": "failed", "experiment_id": "exp_1", "experiment_dir": "/runs/exp_1", "step": 7,
            "message": "RuntimeError: boom", "host": "node7"}  # fmt: skip
        assert "failed" in alert["text"] and "exp_1" in alert["text"] and "boom" in alert["text"]
        assert hook.events() == ["failed", "checkpoint_save_failed"]
    finally:
        hook.close()


def test_alert_for_maps_events() -> None:
    assert alert_for({"event": "end", "status": "completed"}) == "completed"
    assert alert_for({"event": "end", "status": "interrupted"}) is None
    assert alert_for({"event": "non_finite_loss", "policy": "stop"}) == "non_finite_loss"
    for name in ("hang_detected", "straggler_detected", "disk_nearly_full", "checkpoint_save_failed"):
        assert alert_for({"event": name}) == name
    assert alert_for({"event": "alert_failed"}) is None


def test_a_webhook_that_never_answers_costs_the_caller_nothing_and_becomes_an_event() -> None:
    hole = BlackHole()
    reported: list[dict] = []
    try:
        sender = AlertSender(hole.url, None, CONTEXT, report=lambda name, **f: reported.append({"event": name, **f}),
                             delivery=Delivery(timeout_s=0.5, attempts=2, backoff_s=0.1))  # fmt: skip
        sender.send("straggler_detected", 1, "warm-up")  # starts the thread
        start = time.perf_counter()
        for i in range(200):
            sender.send("straggler_detected", i, "slow rank")
        per_call = (time.perf_counter() - start) / 200
        assert per_call < 1e-3, f"send() took {per_call * 1e6:.0f} us while the webhook hangs"
        deadline = time.monotonic() + 20
        while not reported and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reported and reported[0]["event"] == "alert_failed" and reported[0]["target"] == "webhook"
        assert "could not be delivered" in reported[0]["message"]
        assert not sender.close(0.2)  # 200 more undeliverable alerts: close gives up after its bound
    finally:
        hole.close()


def test_alert_command_gets_the_json_on_stdin(tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    script = tmp_path / "notify.py"
    script.write_text(f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())\n")
    sender = AlertSender(None, f"{sys.executable} {script}", CONTEXT)
    sender.send("completed", 12, "done")
    assert sender.close(30)
    assert json.loads(out.read_text())["event"] == "completed"

    failing = AlertSender(None, f"{sys.executable} -c 'import sys; sys.exit(3)'", CONTEXT,
                          report=lambda name, **f: reported.append(f), delivery=Delivery(attempts=1))  # fmt: skip
    reported: list[dict] = []
    failing.send("completed", 12, "done")
    assert failing.close(30)
    assert reported and "exit code 3" in reported[0]["message"]


# ---------------------------------------------------------------------------- stragglers, orphans


def test_straggler_fires_once_per_streak_of_the_same_rank() -> None:
    rule = StragglerRule(factor=1.5, intervals=3)
    slow = {"perf/straggler_ratio": 2.0, "perf/slowest_rank": 1.0, "perf/straggler_s": 0.5}
    assert rule.observe(slow) is None and rule.observe(slow) is None
    fired = rule.observe(slow)
    assert fired is not None and fired["rank"] == 1 and fired["intervals"] == 3
    assert rule.observe(slow) is None  # once per streak
    assert rule.observe({**slow, "perf/straggler_ratio": 1.1}) is None  # streak broken
    assert [rule.observe({**slow, "perf/slowest_rank": r}) for r in (0, 1, 0)] == [None, None, None]


def test_orphan_watch_sees_a_new_parent() -> None:
    assert not OrphanWatch().orphaned()
    assert OrphanWatch(launcher_pid=os.getppid() + 1).orphaned()
