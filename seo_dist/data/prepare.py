"""Tokenize inputs once into a prepared dataset folder (see :mod:`seo_dist.data.dataset` for the layout).

Streaming: documents are read one at a time (:mod:`seo_dist.data.sources`), tokenized in chunks with the
fast tokenizer's batch API (parallel in Rust on ``workers`` threads; the next chunk is read while one is
encoded), and appended to the split's shards. Memory stays at a few chunks whatever the input size.

The folder appears atomically: everything is written into a temporary folder beside ``out`` that is
renamed at the end and removed on any error, so an interrupted run leaves nothing that looks finished
(a stray ``.<name>.prepare-*`` folder of a killed run is removed by the next prepare of the same ``out``).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seo_dist.checkpoint.hashing import DEFAULT_ALGORITHM, hash_file
from seo_dist.data.corpus import EOS_TOKEN, is_validation
from seo_dist.data.dataset import FORMAT, FORMAT_VERSION, MANIFEST, TOKENIZER_DIR
from seo_dist.data.shards import SplitWriter, token_dtype
from seo_dist.data.sources import Document, InputStats, check_inputs, read_documents
from seo_dist.data.tokenizer import TOKENIZER_SAMPLE_CHARS, bounded_sample, load_tokenizer, tokenizer_hash
from seo_dist.errors import UserError
from seo_dist.fileio import atomic_write_json, fsync_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CHUNK_CHARS = 4 << 20
"""Documents are encoded in chunks of about this many characters."""


@dataclass(frozen=True)
class PrepareOptions:
    inputs: tuple[Path, ...]
    out: Path
    tokenizer: Path | None = None
    """A local tokenizer folder; None: train a byte-level BPE on the first documents."""
    vocab_size: int = 4096
    val_fraction: float = 0.05
    skip_bad: bool = False
    overwrite: bool = False
    shard_mb: float = 256.0
    """Close a shard once it holds this many MB of token ids."""
    tokenizer_sample_chars: int = TOKENIZER_SAMPLE_CHARS


def _documents(opts: PrepareOptions, stats: list[InputStats] | None = None) -> Iterator[Document]:
    for path in opts.inputs:
        s = InputStats(path.name)
        if stats is not None:
            stats.append(s)
        yield from read_documents(path, s, skip_bad=opts.skip_bad)


def _tokenizer(opts: PrepareOptions) -> PreTrainedTokenizerFast:
    if opts.tokenizer is not None:
        tok = load_tokenizer(opts.tokenizer)
    else:
        from seo_dist.data.tokenizer import train_tokenizer_on

        texts = (d.text + EOS_TOKEN for d in _documents(opts))
        tok = train_tokenizer_on(bounded_sample(texts, opts.tokenizer_sample_chars), opts.vocab_size)
    if tok.eos_token_id is None:
        raise UserError(f"prepare-data: tokenizer {opts.tokenizer} has no end-of-text (eos) token")
    return tok


def _chunks(docs: Iterator[Document]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    chars = 0
    for doc in docs:
        chunk.append(doc)
        chars += len(doc.text)
        if chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _tokenize_into(opts: PrepareOptions, tok: PreTrainedTokenizerFast, writers: dict[str, SplitWriter],
                   stats: list[InputStats]) -> None:  # fmt: skip
    backend = tok.backend_tokenizer
    encode: Callable[..., Any] = getattr(backend, "encode_batch_fast", backend.encode_batch)
    eos = int(tok.eos_token_id)

    def write(chunk: list[Document], encodings: list[Any]) -> None:
        routed: dict[str, list[list[int]]] = {"train": [], "val": []}
        for doc, enc in zip(chunk, encodings, strict=True):
            ids = enc.ids
            ids.append(eos)
            routed["val" if is_validation(doc.doc_id, opts.val_fraction) else "train"].append(ids)
        for split, docs in routed.items():
            writers[split].add(docs)

    with ThreadPoolExecutor(1) as pool:  # encode_batch releases the GIL: read the next chunk meanwhile
        pending: tuple[list[Document], Future[Any]] | None = None
        for chunk in _chunks(_documents(opts, stats)):
            future = pool.submit(encode, [d.text for d in chunk], add_special_tokens=False)
            if pending is not None:
                write(pending[0], pending[1].result())
            pending = (chunk, future)
        if pending is not None:
            write(pending[0], pending[1].result())


def _write_dataset(opts: PrepareOptions, folder: Path) -> dict[str, Any]:
    tok = _tokenizer(opts)
    tok.save_pretrained(str(folder / TOKENIZER_DIR))
    dtype = token_dtype(len(tok))
    files: dict[str, dict[str, Any]] = {}
    shard_tokens = max(1, int(opts.shard_mb * (1 << 20)) // dtype.itemsize)
    writers = {s: SplitWriter(folder, s, dtype, shard_tokens, DEFAULT_ALGORITHM, files) for s in ("train", "val")}
    stats: list[InputStats] = []
    try:
        _tokenize_into(opts, tok, writers, stats)
    finally:
        for w in writers.values():
            w.abort()
    splits = {}
    for name, w in writers.items():
        shards = w.finish()
        splits[name] = {"tokens": sum(s.tokens for s in shards), "documents": sum(s.documents for s in shards),
                        "shards": [s.to_dict() for s in shards]}  # fmt: skip
    documents = sum(s.documents for s in stats)
    if documents == 0:
        names = ", ".join(str(p) for p in opts.inputs)
        raise UserError(f"prepare-data: no documents in {names} (empty input)")
    if splits["train"]["documents"] == 0:
        raise UserError(f"prepare-data: all {documents} documents fell into the validation split; lower --val-fraction")
    for file in sorted((folder / TOKENIZER_DIR).iterdir()):
        size, digest = hash_file(file, DEFAULT_ALGORITHM)
        files[f"{TOKENIZER_DIR}/{file.name}"] = {"size": size, "hash": digest}
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dtype": dtype.name,
        "eos_id": int(tok.eos_token_id),
        "vocab_size": len(tok),
        "val_fraction": opts.val_fraction,
        "tokenizer": {
            "hash": tokenizer_hash(tok),
            "trained": opts.tokenizer is None,
            "source": str(opts.tokenizer) if opts.tokenizer else None,
        },  # fmt: skip
        "hash_algorithm": DEFAULT_ALGORITHM,
        "splits": splits,
        "documents": documents,
        "skipped_lines": sum(s.skipped for s in stats),
        "inputs": [s.to_dict() for s in stats],
        "files": files,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.prepare-{socket.gethostname()}-"


def _remove_stale_temps(out: Path) -> None:
    """Temporary folders of killed prepares of ``out`` on this host (a folder of another host may be in use)."""
    for stale in out.parent.glob(_temp_prefix(out) + "*"):
        try:
            pid = int(stale.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is replaced only with ``overwrite``."""
    if out.exists() and overwrite:
        old = out.with_name(f"{_temp_prefix(out)}{os.getpid()}-old")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)  # fails (ENOTEMPTY/EEXIST) if out appeared meanwhile
    fsync_dir(out.parent)


def prepare(opts: PrepareOptions) -> dict[str, Any]:
    """Write the prepared dataset ``opts.out``; returns its manifest. Bad input raises a one-line UserError."""
    check_inputs(list(opts.inputs))
    out = opts.out
    if out.exists() and not opts.overwrite:
        raise UserError(f"prepare-data: {out} exists; pass --overwrite to replace it (or choose another --out)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(out)}{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise UserError(f"prepare-data: cannot create {out}: {e.strerror}") from None
    try:
        manifest = _write_dataset(opts, tmp)
        fsync_dir(tmp)
        _publish(tmp, out, opts.overwrite)
        return manifest
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(
                f"prepare-data: disk full while writing {out} ({e.strerror}); nothing was written"
            ) from None
        raise UserError(f"prepare-data: writing {out} failed: {e}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
