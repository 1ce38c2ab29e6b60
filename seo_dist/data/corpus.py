"""The SEO corpus: records of (title, keywords, page summary) -> meta description."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from seo_dist.errors import UserError

SHIPPED_CORPUS = Path(__file__).with_name("corpus") / "seo_corpus.jsonl.gz"
REQUIRED_FIELDS = ("title", "keywords", "summary", "meta_description")

PAGE_TOKEN = "<|page|>"
META_TOKEN = "<|meta|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, PAGE_TOKEN, META_TOKEN]


@dataclass(frozen=True)
class Corpus:
    records: list[dict]
    sha256: str
    source: str


def format_prompt(record: dict) -> str:
    """The page part the model conditions on; generation continues after ``<|meta|>``."""
    keywords = record["keywords"]
    if isinstance(keywords, list):
        keywords = ", ".join(keywords)
    return f"{PAGE_TOKEN} title: {record['title']}\nkeywords: {keywords}\nsummary: {record['summary']}\n{META_TOKEN} "


def record_text(record: dict) -> str:
    """One training example without its end-of-text token: prompt, then the meta description."""
    return format_prompt(record) + record["meta_description"]


def format_record(record: dict) -> str:
    """One training example: prompt, the meta description, end of text."""
    return record_text(record) + EOS_TOKEN


def split_bucket(doc_id: str) -> int:
    """A document's validation bucket in [0, 10000): a hash of its id, so it never moves between splits."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 10_000


def is_validation(doc_id: str, val_fraction: float) -> bool:
    return split_bucket(doc_id) < int(val_fraction * 10_000)


def load_corpus(path: str | Path | None = None) -> Corpus:
    """Read a JSONL (optionally gzipped) corpus; default: the one shipped with seo_dist."""
    path = Path(path) if path is not None else SHIPPED_CORPUS
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"data.corpus: cannot read {str(path)!r}: {e.strerror}") from None
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"data.corpus {str(path)!r} line {lineno}: not JSON ({e.msg})") from None
        missing = [f for f in REQUIRED_FIELDS if f not in rec]
        if missing:
            raise UserError(f"data.corpus {str(path)!r} line {lineno}: missing field(s) {', '.join(missing)}")
        rec.setdefault("id", f"line-{lineno}")
        records.append(rec)
    if len(records) < 20:
        raise UserError(f"data.corpus {str(path)!r}: only {len(records)} records; need at least 20")
    return Corpus(records=records, sha256=hashlib.sha256(raw).hexdigest(), source=str(path))


def split_records(records: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic split by a hash of the record id, so a record never moves between splits."""
    train: list[dict] = []
    val: list[dict] = []
    for rec in records:
        (val if is_validation(str(rec["id"]), val_fraction) else train).append(rec)
    return train, val
