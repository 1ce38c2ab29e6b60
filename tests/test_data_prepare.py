"""``seo-dist prepare-data``: the prepared folder, the checks on load, and every kind of bad input.

In-process through the CLI's ``main()`` (fast); the worker-count test runs the command in subprocesses,
since the tokenizer's thread pool is sized once per process. All inputs are generated here.
"""

from __future__ import annotations

import errno
import gzip
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import PYTHON

from seo_dist.cli import main
from seo_dist.data import make_corpus
from seo_dist.data.dataset import open_dataset
from seo_dist.errors import UserError

RECORDS = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "seo.jsonl.gz"
    make_corpus.write(make_corpus.generate(RECORDS, seed=5), path)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "ds"
    assert main(["prepare-data", str(corpus), "--out", str(out), "--vocab-size", "512", "--workers", "1"]) == 0
    return out


def _prepare(capsys, *args: str) -> tuple[int, str]:
    rc = main(["prepare-data", *args, "--vocab-size", "300", "--workers", "1"])
    return rc, capsys.readouterr().err


def test_prepared_folder_is_complete_and_verifies(prepared):
    ds = open_dataset(prepared, verify="full", seq_len=64)
    m = ds.manifest
    assert m["documents"] == RECORDS == m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"]
    assert 0 < m["splits"]["val"]["documents"] < RECORDS * 0.15 and m["dtype"] == "uint16"
    assert m["inputs"][0]["name"] == "seo.jsonl.gz" and m["inputs"][0]["documents"] == RECORDS
    for split in ("train", "val"):
        (shard,) = m["splits"][split]["shards"]
        ids = np.fromfile(prepared / shard["bin"], dtype=np.uint16)
        offsets = np.fromfile(prepared / shard["idx"], dtype=np.uint64)
        assert len(ids) == shard["tokens"] and offsets[0] == 0 and offsets[-1] == len(ids)
        assert len(offsets) == shard["documents"] + 1
        assert (ids[offsets[1:].astype(np.int64) - 1] == m["eos_id"]).all()  # every document ends with EOS
    assert not list(prepared.parent.glob(".ds.prepare-*"))


def test_val_split_follows_the_document_id(prepared):
    from seo_dist.data.corpus import split_records

    _, val = split_records(make_corpus.generate(RECORDS, seed=5), 0.05)
    assert open_dataset(prepared).manifest["splits"]["val"]["documents"] == len(val)


def test_a_flipped_byte_is_caught_and_named(prepared, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(prepared, copy)
    shard = copy / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    open_dataset(copy, verify="sizes")  # same size: only the full check reads the bytes
    with pytest.raises(UserError, match=r"train_00000\.bin is corrupt"):
        open_dataset(copy, verify="full")
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match=r"train_00000\.bin has \d+ bytes, the manifest says"):
        open_dataset(copy, verify="sizes")


def test_another_tokenizer_and_a_too_long_sample_are_refused(prepared):
    ds = open_dataset(prepared)
    with pytest.raises(UserError, match=f"tokenizer {ds.tokenizer_hash[:16]}.*is 0123456789abcdef"):
        open_dataset(prepared, tokenizer_hash="0123456789abcdef" * 4)
    with pytest.raises(UserError, match=r"one sample of train.seq_len=100000000"):
        open_dataset(prepared, seq_len=100_000_000)


def test_text_jsonl_and_txt_inputs_and_shard_rolling(tmp_path, capsys):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"document {i} " * 40}) + "\n" for i in range(50)))
    txt = tmp_path / "book.txt.gz"
    with gzip.open(txt, "wt") as f:
        f.write("".join(f"paragraph {i}\nsecond line of it\n\n\n" for i in range(30)))
    rc, err = _prepare(capsys, str(jsonl), str(txt), "--out", str(tmp_path / "ds"), "--shard-mb", "0.002")
    assert rc == 0, err
    ds = open_dataset(tmp_path / "ds", verify="full")
    assert [i["documents"] for i in ds.manifest["inputs"]] == [50, 30]
    assert len(ds.manifest["splits"]["train"]["shards"]) > 2
    windows = ds.windows("train", 16)
    assert windows.take(np.arange(len(windows))).shape == (len(windows), 16)


def test_bad_json_names_file_and_line_and_skip_bad_counts(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(10)]
    lines[6] = "{not json"
    bad.write_text("\n".join(lines) + "\n")
    rc, err = _prepare(capsys, str(bad), "--out", str(tmp_path / "ds"))
    assert rc == 2 and f"{bad}:7: not JSON" in err and "--skip-bad" in err and err.count("\n") == 1
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.*"))
    rc, err = _prepare(capsys, str(bad), "--out", str(tmp_path / "ds"), "--skip-bad")
    assert rc == 0, err
    m = open_dataset(tmp_path / "ds").manifest
    assert (m["skipped_lines"], m["documents"]) == (1, 9)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"title": "t", "keywords": "k", "summary": "s"}\n', "missing field(s) meta_description"),
        ("\n\n", "no documents in"),
        (b"\x1f\x8b\x08\x00garbage", "cannot read"),
        ("[1, 2]\n", "a JSON object is expected"),
    ],
    ids=["missing-field", "empty", "unreadable-gzip", "not-an-object"],
)
def test_bad_inputs_get_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc, err = _prepare(capsys, str(path), "--out", str(tmp_path / "ds"))
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing half-written


def test_missing_input_and_existing_out(tmp_path, capsys, corpus):
    rc, err = _prepare(capsys, str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "ds"))
    assert rc == 2 and "is not a file" in err
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep").write_text("mine")
    rc, err = _prepare(capsys, str(corpus), "--out", str(out))
    assert rc == 2 and "exists; pass --overwrite" in err and (out / "keep").read_text() == "mine"
    rc, err = _prepare(capsys, str(corpus), "--out", str(out), "--overwrite")
    assert rc == 0, err
    assert not (out / "keep").exists() and open_dataset(out, verify="full").manifest["documents"] == RECORDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_disk_full_removes_the_partial_output(tmp_path, capsys, corpus, monkeypatch):
    from seo_dist.data import shards

    real_write = shards._HashedFile.write
    written = []

    def write(self, data):
        written.append(self.path.name)
        if len(written) > 3:  # after a few writes, as a filling disk would
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(shards._HashedFile, "write", write)
    rc, err = _prepare(capsys, str(corpus), "--out", str(tmp_path / "ds"))
    assert rc == 2 and "disk full while writing" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_the_split_is_the_same_whatever_the_number_of_workers(tmp_path, corpus):
    manifests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        cmd = [PYTHON, "-m", "seo_dist.cli", "prepare-data", str(corpus), str(corpus), "--out", str(out),
               "--workers", str(workers), "--vocab-size", "400"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        manifests.append(json.loads((out / "manifest.json").read_text()))
    one, two = manifests
    assert one["files"] == two["files"] and one["splits"] == two["splits"]


def test_seo_dist_verify_checks_a_prepared_dataset(prepared, tmp_path, capsys):
    """``seo-dist verify DIR`` re-hashes a dataset's shards against its manifest: exit 0, then 1 naming the
    shard once a byte is flipped (``--quick`` checks sizes only and does not see it)."""
    from seo_dist.cli import main as cli_main

    copy = tmp_path / "ds"
    shutil.copytree(prepared, copy)
    assert cli_main(["verify", str(copy)]) == 0
    assert "OK (dataset" in capsys.readouterr().out
    shard = copy / "train_00000.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x80
    shard.write_bytes(bytes(data))
    assert cli_main(["verify", str(copy), "--quick"]) == 0
    capsys.readouterr()
    assert cli_main(["verify", str(copy)]) == 1
    assert "train_00000.bin is corrupt" in capsys.readouterr().out
