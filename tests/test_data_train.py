"""Training from ``data.corpus`` through the prepared-data cache, and the exact resume of the sample order.

One real ``torchrun --nproc-per-node 2`` job of 16 steps (saving at step 8) and one resume of a copy from
step 8; every rank writes the global sample ids it consumed (``SEO_DIST_DATA_TRACE``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, FAST, free_port, job_env, read_jsonl, run_job

from seo_dist.data import make_corpus
from seo_dist.data.loader import TRACE_ENV

SETS = [*FAST, "checkpoint.save_interval=8", "checkpoint.async_save=false", "experiment.code_snapshot=false",
        "experiment.wandb=disabled", "experiment.tensorboard=false", "experiment.console=false"]  # fmt: skip


def _trace(prefix: Path, rank: int) -> list[dict]:
    return read_jsonl(Path(f"{prefix}.rank{rank}"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("data_train")
    cache = tmp / "cache"
    corpus = tmp / "crawl.jsonl.gz"
    make_corpus.write(make_corpus.generate(1500, seed=11), corpus)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TRACE_ENV, str(tmp / "first"))
        first = run_job(tmp, cache, nproc=2, name="d", overrides=[*SETS, f"data.corpus={corpus}"])
        assert first.proc.returncode == 0, first.output[-6000:]
        exp = first.base_dir / "d"
        copy = first.base_dir / "d_resumed"
        shutil.copytree(exp, copy)
        shutil.rmtree(copy / "checkpoints" / "step_00000016")
        mp.setenv(TRACE_ENV, str(tmp / "resumed"))
        cmd = [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m",
               "seo_dist.train", "--resume", str(copy / "checkpoints" / "step_00000008")]  # fmt: skip
        resumed = subprocess.run(cmd, cwd=tmp, env=job_env(cache), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    return {"tmp": tmp, "cache": cache, "first": first, "exp": exp, "copy": copy}


def test_a_corpus_is_prepared_once_and_training_learns(runs):
    status, step, first_loss, last_loss = runs["first"].final()
    assert (status, step) == ("completed", 16) and last_loss < first_loss - 0.5
    (prepared,) = [p for p in (runs["cache"] / "datasets").iterdir()]
    assert prepared.name.startswith("crawl-") and (prepared / "manifest.json").is_file()
    first = [e for e in read_jsonl(runs["exp"] / "logs" / "events.jsonl") if e["event"] == "dataset_ready"]
    assert len(first) == 1 and first[0]["prepared"] is True and first[0]["path"] == str(prepared)
    again = [e for e in read_jsonl(runs["copy"] / "logs" / "events.jsonl") if e["event"] == "dataset_ready"]
    assert len(again) == 2 and again[-1]["prepared"] is False  # the resumed start reused the folder
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert again[-1]["train_tokens"] == manifest["splits"]["train"]["tokens"]


def test_the_resumed_run_consumes_exactly_the_samples_of_the_uninterrupted_one(runs):
    tmp = runs["tmp"]
    for rank in (0, 1):
        first, resumed = _trace(tmp / "first", rank), _trace(tmp / "resumed", rank)
        assert len(first) == 16 and len(resumed) == 8
        assert resumed == first[8:]
    ids = [i for rank in (0, 1) for rec in _trace(tmp / "first", rank) for i in rec["ids"]]
    assert len(ids) == len(set(ids)) == 16 * 2 * 8  # one epoch: no sample twice across ranks and steps
    metrics = read_jsonl(runs["copy"] / "metrics" / "metrics.jsonl")
    assert [r["step"] for r in metrics if "train/loss" in r][-1] == 16
