"""Asynchronous checkpoints: host staging, the background writer, poll/wait/close, failures, kills.

In-process tests (world size 1, a plain torch model) cover staging and the manager's bookkeeping. Three
torchrun jobs of tests/ckpt_job.py on 2 CPU ranks (gloo) cover the real thing with DeepSpeed ZeRO 2 and 3,
shared by the tests below through module-scoped fixtures:
``async`` (saves, resume, staging proof, injected failures, exit with a save in flight),
``async_kill`` (SIGKILL of the whole job while a background write is in flight) and ``async_resume``.
Slow writes and write failures are injected with the environment variables of seo_dist.checkpoint.faults.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from conftest import BIN, free_port
from test_checkpoint_deepspeed import assert_same_state, load, tail

from seo_dist.checkpoint.errors import CheckpointSaveError
from seo_dist.checkpoint.faults import DELAY_ENV, FAULT_ENV, parse_fault
from seo_dist.checkpoint.index import read_latest
from seo_dist.checkpoint.layout import checkpoint_name, staging_name
from seo_dist.checkpoint.manager import CheckpointManager
from seo_dist.checkpoint.manifest import read_manifest
from seo_dist.checkpoint.staging import HostStager
from seo_dist.checkpoint.strategy import CheckpointStrategy
from seo_dist.checkpoint.verify import verify_checkpoint
from seo_dist.cli import main as cli_main

JOB = Path(__file__).with_name("ckpt_job.py")
REPO = Path(__file__).resolve().parents[1]
STAGES = (2, 3)
WRITE_DELAY_S = 1.0  # ckpt_job.WRITE_DELAY_S
COPY_DELAY_S = 1.5  # ckpt_job.COPY_DELAY_S
STAT_KEYS = ("step", "path", "stall_s", "stage_s", "write_s", "bytes", "write_gbps")


def job_cmd(mode: str, out: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        str(JOB),
        mode,
        str(out),
        *extra,
    ]


def job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (DELAY_ENV, FAULT_ENV)}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def torchrun(mode: str, out: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(job_cmd(mode, out, *extra), env=job_env(), capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- fixtures: the three jobs


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ckpt_async")


@pytest.fixture(scope="module")
def run(out) -> Path:
    proc = torchrun("async", out, "--stages", ",".join(map(str, STAGES)))
    assert proc.returncode == 0, tail(proc)
    return out


@pytest.fixture(scope="module")
def killed(out) -> dict[str, Any]:
    """Starts the kill job, waits until both ranks have a background write in flight, SIGKILLs the whole job
    (torchrun and its workers, which it starts in sessions of their own: like a lost node), and records what
    was on disk right after."""
    folder = out / "kill"
    proc = subprocess.Popen(
        job_cmd("async_kill", folder),
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    markers = [folder / f"inflight_rank{r}.txt" for r in (0, 1)]
    deadline = time.time() + 180
    while not all(m.exists() for m in markers) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    ready = all(m.exists() for m in markers)
    job = psutil.Process(proc.pid)
    for p in [job, *job.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    output = proc.communicate(timeout=60)[0]
    assert ready, f"the job never had a save in flight:\n{output[-4000:]}"
    root = folder / "checkpoints"
    return {
        "folder": folder,
        "root": root,
        "returncode": proc.returncode,
        "markers": [m.read_text() for m in markers],
        "listing": sorted(p.name for p in root.iterdir()),
        "latest": read_latest(root),
        "report": verify_checkpoint(root / checkpoint_name(2)),
    }


@pytest.fixture(scope="module")
def resumed(killed) -> Path:
    proc = torchrun("async_resume", killed["folder"])
    assert proc.returncode == 0, tail(proc)
    return killed["folder"]


def rank_json(folder: Path, name: str, rank: int) -> dict[str, Any]:
    return json.loads((folder / f"{name}_rank{rank}.json").read_text())


def stage_dir(run: Path, stage: int) -> Path:
    return run / f"async_zero{stage}"


# ---------------------------------------------------------------------------- 2 ranks, DeepSpeed ZeRO 2 and 3


@pytest.mark.parametrize("stage", STAGES)
def test_background_saves_commit_and_verify(run, stage):
    folder = stage_dir(run, stage)
    root = folder / "checkpoints"
    committed = sorted(p.name for p in root.iterdir() if p.is_dir())
    if stage == STAGES[-1]:  # then injected failures at 10 and 12, a save at 14, the save in flight at exit at 16
        assert committed == [checkpoint_name(s) for s in (2, 14, 16)]
    else:  # saves at 2, 4, 6, 8 with keep_last=2; 2 is the best by val/loss
        assert committed == [checkpoint_name(s) for s in (2, 6, 8)]
    for name in committed:
        report = verify_checkpoint(root / name)
        assert report.ok, report.summary()
        assert cli_main(["verify", str(root / name)]) == 0
        manifest = read_manifest(root / name)
        assert (manifest.world_size, manifest.zero_stage) == (2, stage)
        assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= set(manifest.files)
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    events = json.loads((folder / "events.json").read_text())
    assert [e["step"] for e in events if e["event"] == "checkpoint_saved"] == [2, 4, 6, 8]


@pytest.mark.parametrize("stage", STAGES)
def test_training_returns_long_before_the_background_write_ends(run, stage):
    for rank in (0, 1):
        res = rank_json(stage_dir(run, stage), "async", rank)
        save2 = next(s for s in res["finished"] if s["step"] == 2)
        assert res["timeline"]["save2"]["in_flight"] is True
        assert save2["write_s"] >= WRITE_DELAY_S  # the injected slow disk
        assert save2["stall_s"] < 0.25 * save2["write_s"], save2
        assert save2["stage_s"] <= save2["stall_s"] and save2["error"] is None


@pytest.mark.parametrize("stage", STAGES)
def test_prewarmed_staging_buffers_leave_the_first_save_nothing_to_allocate(run, stage):
    for rank in (0, 1):
        res = rank_json(stage_dir(run, stage), "async", rank)
        background = [s for s in res["finished"] if s["async"]]
        assert [s["step"] for s in background] == [2, 4, 6]
        assert background[0]["staged_bytes"] > 20_000  # the model and optimizer shards
        assert [s["staging_allocated_bytes"] for s in background] == [0, 0, 0], background
        assert background[0]["staging_buffer_bytes"] >= background[0]["staged_bytes"]


def test_copy_in_background_returns_first_and_the_optimizer_step_waits_for_the_copy(run):
    """ZeRO-3: the save returned while its copy (slowed by 1.5 s) had not started; forward and backward ran, the
    optimizer step waited for the copy; the checkpoint holds the state at save time, not after that step."""
    folder = stage_dir(run, STAGES[-1])
    for rank in (0, 1):
        res = rank_json(folder, "overlap", rank)
        assert res["copying_at_return"] is True and res["returned_s"] < COPY_DELAY_S / 2, res
        assert res["forward_backward_done_s"] < COPY_DELAY_S and res["waited_s"] > 0.1, res
        (save,) = res["stats"]
        assert save["error"] is None and save["copy_s"] >= COPY_DELAY_S
        assert save["copy_wait_s"] == pytest.approx(res["waited_s"], abs=1e-3)
        at_save, loaded = load(folder / f"O20_rank{rank}.pt"), load(folder / f"L20_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(at_save[key], loaded[key], f"overlap rank{rank} {key}")
        after = load(folder / f"O21_rank{rank}.pt")
        assert not all(torch.equal(at_save["module"][k], after["module"][k]) for k in at_save["module"])
    report = verify_checkpoint(folder / "overlap" / checkpoint_name(20))
    assert report.ok, report.summary()


@pytest.mark.parametrize("stage", STAGES)
def test_a_new_save_waits_for_the_one_in_flight(run, stage):
    for rank in (0, 1):
        res = rank_json(stage_dir(run, stage), "async", rank)
        save4 = next(s for s in res["finished"] if s["step"] == 4)
        assert save4["wait_s"] > 0.3 * WRITE_DELAY_S and save4["stall_s"] >= save4["wait_s"]
        assert [s["step"] for s in res["finished"]] == [2, 4, 6, 8]


@pytest.mark.parametrize("stage", STAGES)
def test_what_was_written_is_the_state_at_save_time_not_later(run, stage):
    """Training changed parameters, fp32 master weights and Adam moments before the slowed-down writer read
    its staged copy; the checkpoint of step 2 still holds the state of step 2."""
    folder = stage_dir(run, stage)
    for rank in (0, 1):
        timeline = rank_json(folder, "async", rank)["timeline"]
        assert timeline["mutated_after_s"] < WRITE_DELAY_S and timeline["in_flight_after_mutation"] is True
        at_save, loaded = load(folder / f"A2_rank{rank}.pt"), load(folder / f"B2_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(at_save[key], loaded[key], f"zero{stage} rank{rank} {key}")
        later = load(folder / f"A4_rank{rank}.pt")
        assert not all(torch.equal(at_save["module"][k], later["module"][k]) for k in at_save["module"])


@pytest.mark.parametrize("stage", STAGES)
def test_resume_from_a_background_save_repeats_the_same_losses(run, stage):
    folder = stage_dir(run, stage)
    for rank in (0, 1):
        res = rank_json(folder, "async", rank)
        assert res["losses_b"] == {k: res["losses_a"][k] for k in ("7", "8")}  # bit-identical
        assert res["loaded6"] == {"name": checkpoint_name(6), "rank_state": {"data_step": 6, "rank": rank}}
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(load(folder / f"A6_rank{rank}.pt")[key], load(folder / f"B6_rank{rank}.pt")[key], key)


def test_zero_to_fp32_reads_a_background_save(run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = stage_dir(run, 2)
    fp32 = get_fp32_state_dict_from_zero_checkpoint(str(folder / "checkpoints"), tag=checkpoint_name(2))
    expected = load(folder / "A2_rank0.pt")["module"]
    assert set(fp32) == set(expected) and all(torch.equal(fp32[k], v.float()) for k, v in expected.items())


def test_the_final_blocking_save_is_committed_when_it_returns(run):
    res = rank_json(stage_dir(run, 2), "async", 0)
    assert res["timeline"]["final"] == {"latest": checkpoint_name(8), "manifest": True}
    assert res["timeline"]["save8"]["in_flight"] is False
    assert next(s for s in res["finished"] if s["step"] == 8)["async"] is False


def test_poll_reports_the_metrics_of_each_save(run):
    folder = stage_dir(run, 2)
    for rank in (0, 1):
        for stats in rank_json(folder, "async", rank)["finished"]:
            assert all(isinstance(stats[k], (int, float)) for k in STAT_KEYS if k != "path"), stats
            assert stats["write_gbps"] == pytest.approx(stats["rank_bytes"] / 1e9 / stats["write_s"])
            if stats["step"] in (2, 6, 8):
                assert stats["bytes"] == read_manifest(Path(stats["path"])).total_bytes


def test_injected_write_failure_raises_on_every_rank_and_commits_nothing(run):
    folder = stage_dir(run, STAGES[-1])
    raised = [rank_json(folder, "failures", r)["raise"] for r in (0, 1)]
    for r in raised:
        assert "step_00000010 not committed" in r["raised"] and "No space left" in r["raised"]
        assert "rank 1: zero_pp_rank_1_mp_rank_00_optim_states.pt" in r["raised"]
        assert r["latest_before"] == r["latest_after"] == checkpoint_name(8)
        assert [n for n in r["listing"] if n.startswith("step_")] == [checkpoint_name(s) for s in (2, 6, 8)]
    assert raised[0]["raised"] == raised[1]["raised"]
    events = json.loads((folder / "failure_events.json").read_text())
    assert [e["step"] for e in events if e["event"] == "checkpoint_save_failed"] == [10, 12]


def test_with_on_error_warn_a_failed_save_is_reported_and_training_goes_on(run):
    folder = stage_dir(run, STAGES[-1])
    for rank in (0, 1):
        warn = rank_json(folder, "failures", rank)["warn"]
        (failed,) = warn["stats"]
        assert failed["step"] == 12 and "No space left" in failed["error"]
        assert warn["latest_after"] == checkpoint_name(8)
        (nxt,) = warn["next_save"]
        assert nxt["step"] == 14 and nxt["error"] is None and warn["latest_next"] == checkpoint_name(14)


def test_a_save_in_flight_when_the_script_ends_is_committed_before_exit(run):
    folder = stage_dir(run, STAGES[-1])
    assert all(rank_json(folder, "exit", r)["in_flight"] for r in (0, 1))
    root = folder / "checkpoints"
    assert read_latest(root) == checkpoint_name(16)
    assert verify_checkpoint(root / checkpoint_name(16)).ok


def test_sigkill_during_a_background_write_leaves_the_previous_latest_valid(killed):
    assert killed["returncode"] != 0 and killed["markers"] == ["True", "True"]
    assert not list(killed["folder"].glob("survived_rank*.txt"))
    assert killed["latest"] == checkpoint_name(2) and killed["report"].ok
    assert [n for n in killed["listing"] if n.startswith("step_")] == [checkpoint_name(2), staging_name(3)]


def test_resume_after_the_kill_loads_the_previous_checkpoint_and_saves_again(killed, resumed):
    res = [rank_json(resumed, "resume", r) for r in (0, 1)]
    assert [Path(p).name for p in res[0]["swept"]] == [staging_name(3)] and res[1]["swept"] == []
    assert res[0]["loaded"] == res[1]["loaded"] == checkpoint_name(2)
    for rank in (0, 1):
        before, after = load(resumed / f"kill2_rank{rank}.pt"), load(resumed / f"resumed_rank{rank}.pt")
        for key in ("module", "optimizer", "lr_scheduler"):
            assert_same_state(before[key], after[key], f"rank{rank} {key}")
        assert [(s["step"], s["async"], s["error"]) for s in res[rank]["done"]] == [(3, True, None), (4, False, None)]
    root = killed["root"]
    assert read_latest(root) == checkpoint_name(4)
    assert all(verify_checkpoint(root / checkpoint_name(s)).ok for s in (2, 3, 4))
    assert not res[0]["staging_left"]


# ---------------------------------------------------------------------------- staging (in process)


def tied_state() -> dict[str, Any]:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(16, 8)
    head = torch.nn.Linear(8, 16, bias=False)
    head.weight = emb.weight  # tied, as in GPT-2
    flat = torch.randn(100)
    return {
        "module": {"emb": emb.weight.detach(), "head": head.weight.detach(), "view": flat[10:30].view(4, 5)},
        "param": torch.nn.Parameter(torch.randn(3, 3)),
        "bf16": torch.randn(7).to(torch.bfloat16),
        "flat": flat,
        "meta": {"step": 3, "betas": (0.9, 0.95), "names": ["a", "b"]},
    }


def torch_save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_staged_file_saves_byte_for_byte_what_a_synchronous_save_writes():
    state = tied_state()
    staged = HostStager().stage("x.pt", state)
    assert torch_save_bytes(staged.materialize()) == torch_save_bytes(state)
    again = staged.materialize()
    assert again["module"]["emb"].untyped_storage().data_ptr() == again["module"]["head"].untyped_storage().data_ptr()
    assert isinstance(again["param"], torch.nn.Parameter)
    assert staged.nbytes == sum(s.nbytes() for s in staged.storages.values())


def test_staged_copy_does_not_change_when_the_live_state_does():
    state = tied_state()
    expected = torch_save_bytes(state)
    staged = HostStager().stage("x.pt", state)
    with torch.no_grad():
        for t in (state["module"]["emb"], state["flat"], state["param"], state["bf16"]):
            t.add_(1)
    state["meta"]["step"] = 4
    state["meta"]["names"].append("c")
    assert torch_save_bytes(staged.materialize()) == expected


def test_staging_buffers_are_allocated_once_and_reused():
    stager = HostStager()
    state = tied_state()
    stager.stage("x.pt", state)
    first = stager.allocated_bytes
    assert first == stager.pool_bytes > 0
    state["flat"].mul_(2)
    staged = stager.stage("x.pt", state)
    assert stager.allocated_bytes == first  # same shapes: the same buffers
    assert torch.equal(staged.materialize()["flat"], state["flat"])
    state["bf16"] = torch.randn(20).to(torch.bfloat16)  # 14 bytes -> 40: a new buffer replaces the old one
    stager.stage("x.pt", state)
    assert stager.allocated_bytes == first + 40 and stager.pool_bytes == first - 14 + 40
    stager.release()
    assert stager.pool_bytes == 0


def test_planning_allocates_and_touches_the_buffers_ahead_and_copies_nothing():
    stager = HostStager()
    state = tied_state()
    with stager.planning():
        planned = stager.stage("x.pt", state)
    emb = state["module"]["emb"].untyped_storage()
    assert any(s.data_ptr() == emb.data_ptr() for s in planned.storages.values())  # a dry run: the live storages
    stager.wait_prewarmed()
    ahead = stager.allocated_bytes
    assert ahead == stager.prewarmed_bytes == stager.pool_bytes > 0
    staged = stager.stage("x.pt", state)
    assert stager.allocated_bytes == ahead  # the save found every buffer ready
    assert all(s.data_ptr() != emb.data_ptr() for s in staged.storages.values())
    assert torch_save_bytes(staged.materialize()) == torch_save_bytes(state)
    with stager.planning():  # planned again with the buffers in place: nothing more to allocate
        stager.stage("x.pt", state)
    stager.wait_prewarmed()
    assert stager.allocated_bytes == ahead


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: pinned staging of CUDA tensors")
def test_cuda_tensors_are_staged_into_pinned_host_buffers():
    state = {"w": torch.randn(1024, 1024, device="cuda"), "b": torch.randn(10, device="cuda")}
    stager = HostStager()
    staged = stager.stage("x.pt", state)
    stager.synchronize()
    assert all(s.is_pinned() and s.device.type == "cpu" for s in staged.storages.values())
    state["w"].add_(1)
    assert torch.equal(staged.materialize()["w"], (state["w"] - 1).cpu())


def test_fault_spec_is_parsed_and_bad_specs_are_named():
    fault = parse_fault("ENOSPC:optim_states@1")
    assert (fault.match, fault.rank) == ("optim_states", 1) and fault.error("f").errno == 28
    assert parse_fault("eio").match == "" and parse_fault("EIO").rank is None
    with pytest.raises(ValueError, match="NOPE"):
        parse_fault("NOPE")
    with pytest.raises(ValueError, match="rank"):
        parse_fault("EIO@x")


# ---------------------------------------------------------------------------- the manager in one process


class Events(list):
    def __call__(self, name, **fields):
        self.append({"event": name, "thread": threading.current_thread().name, **fields})


def small_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    return model, opt


def async_manager(root: Path, events: Events, **kwargs) -> CheckpointManager:
    return CheckpointManager(
        root, CheckpointStrategy(save_interval=1, max_checkpoints=3), async_save=True, event_fn=events, **kwargs
    )


def test_background_save_in_one_process(tmp_path, monkeypatch):
    events = Events()
    mgr = async_manager(tmp_path, events)
    model, opt = small_model()
    monkeypatch.setenv(DELAY_ENV, "0.5")
    path = mgr.save_checkpoint(model, opt, step=1, metrics={"val/loss": 1.0})
    assert mgr.in_flight and mgr.poll() == [] and not path.exists() and events == []
    with torch.no_grad():
        model[0].weight.add_(1)
    (stats,) = mgr.wait()
    assert stats["stall_s"] < 0.5 < stats["write_s"] and path.is_dir() and read_latest(tmp_path) == path.name
    saved = torch.load(path / "model_state.pt", weights_only=False)["model"]
    assert torch.equal(saved["0.weight"] + 1, model[0].weight)
    assert [(e["event"], e["thread"]) for e in events] == [("checkpoint_saved", "MainThread")]  # not the writer's
    monkeypatch.delenv(DELAY_ENV)
    assert mgr.save_checkpoint(model, opt, step=2, blocking=True) == tmp_path / checkpoint_name(2)
    assert read_latest(tmp_path) == checkpoint_name(2)  # committed before it returned
    assert [(s["step"], s["async"]) for s in mgr.poll()] == [(2, False)]
    assert mgr.close() == [] and mgr.close() == []


def test_background_and_synchronous_saves_write_the_same_bytes(tmp_path):
    model, opt = small_model()
    hashes = []
    for name, async_save in (("sync", False), ("async", True)):
        mgr = CheckpointManager(tmp_path / name, async_save=async_save)
        mgr.save_checkpoint(model, opt, step=5)
        mgr.close()
        hashes.append(read_manifest(tmp_path / name / checkpoint_name(5)).files["model_state.pt"])
    assert hashes[0] == hashes[1]


def test_failed_background_save_raises_at_the_next_poll_and_keeps_latest(tmp_path, monkeypatch):
    events = Events()
    mgr = async_manager(tmp_path, events)
    model, opt = small_model()
    mgr.save_checkpoint(model, opt, step=1)
    mgr.wait()
    monkeypatch.setenv(FAULT_ENV, "EIO:model_state")
    mgr.save_checkpoint(model, opt, step=2)
    deadline = time.time() + 30
    with pytest.raises(CheckpointSaveError, match="Input/output error"):
        while time.time() < deadline:
            mgr.poll()
            time.sleep(0.01)
    assert [(s["step"], "Input/output" in s["error"]) for s in mgr.poll()] == [(2, True)]  # raised once, reported
    assert read_latest(tmp_path) == checkpoint_name(1) and verify_checkpoint(tmp_path / checkpoint_name(1)).ok
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [checkpoint_name(1)]
    assert [e["event"] for e in events][-1] == "checkpoint_save_failed"
    monkeypatch.delenv(FAULT_ENV)
    mgr.save_checkpoint(model, opt, step=3)  # the manager goes on after a raised failure
    assert [s["step"] for s in mgr.wait()] == [3]
    mgr.close()


def test_failure_is_raised_by_the_next_save_too(tmp_path, monkeypatch):
    mgr = async_manager(tmp_path, Events())
    model, opt = small_model()
    monkeypatch.setenv(FAULT_ENV, "ENOSPC")
    mgr.save_checkpoint(model, opt, step=1)
    while mgr.in_flight:  # finished, not yet collected
        time.sleep(0.01)
    monkeypatch.delenv(FAULT_ENV)
    with pytest.raises(CheckpointSaveError, match="No space left"):
        mgr.save_checkpoint(model, opt, step=2)
    mgr.close()


def test_on_error_warn_returns_the_error_and_goes_on(tmp_path, monkeypatch):
    events = Events()
    mgr = async_manager(tmp_path, events, on_error="warn")
    model, opt = small_model()
    monkeypatch.setenv(FAULT_ENV, "EACCES")
    mgr.save_checkpoint(model, opt, step=1)
    (failed,) = mgr.wait()
    assert "Permission denied" in failed["error"] and read_latest(tmp_path) is None
    assert [e["event"] for e in events] == ["checkpoint_save_failed"]
    assert mgr.save_checkpoint(model, opt, step=2, blocking=True) is None  # a failed synchronous save: warned too
    monkeypatch.delenv(FAULT_ENV)
    mgr.save_checkpoint(model, opt, step=3)
    assert [(s["step"], s["error"] is None) for s in mgr.wait()] == [(2, False), (3, True)]
    assert read_latest(tmp_path) == checkpoint_name(3)
    assert [e["event"] for e in events] == ["checkpoint_save_failed"] * 2 + ["checkpoint_saved"]
    mgr.close()


def test_load_waits_for_the_save_in_flight(tmp_path, monkeypatch):
    mgr = async_manager(tmp_path, Events())
    model, opt = small_model()
    monkeypatch.setenv(DELAY_ENV, "0.3")
    mgr.save_checkpoint(model, opt, step=1)
    fresh, fresh_opt = small_model()
    with torch.no_grad():
        fresh[0].weight.zero_()
    loaded = mgr.load_checkpoint("latest", fresh, fresh_opt)
    assert loaded["step"] == 1 and torch.equal(fresh[0].weight, model[0].weight)
    assert [s["step"] for s in mgr.poll()] == [1]
    mgr.close()


def test_background_commits_never_use_the_training_group(tmp_path):
    """World size 1 builds its one-rank process group with the engine, after the manager: the first background
    save then creates the manager's own gloo group, on the training thread."""
    import torch.distributed as tdist

    mgr = async_manager(tmp_path, Events())
    assert mgr.group is None  # no process group yet
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        model, opt = small_model()
        mgr.save_checkpoint(model, opt, step=1)
        assert mgr.group is not None and mgr.group is not tdist.group.WORLD
        assert [s["step"] for s in mgr.wait()] == [1] and verify_checkpoint(tmp_path / checkpoint_name(1)).ok
        mgr.close()
        assert mgr.group is None
    finally:
        tdist.destroy_process_group()


def test_a_failure_can_be_agreed_on_before_it_is_raised(tmp_path, monkeypatch):
    mgr = async_manager(tmp_path, Events())
    model, opt = small_model()
    monkeypatch.setenv(FAULT_ENV, "ENOSPC")
    mgr.save_checkpoint(model, opt, step=1)
    deadline = time.time() + 30
    done: list = []
    while not done and time.time() < deadline:
        done = mgr.poll(raise_errors=False)  # never raises: the error waits
        time.sleep(0.01)
    assert [(s["step"], "No space left" in s["error"]) for s in done] == [(1, True)] and mgr.failed
    with pytest.raises(CheckpointSaveError, match="No space left"):
        mgr.wait()  # what every rank calls once an all-reduce of `failed` says some rank failed
    assert not mgr.failed
    mgr.close()
