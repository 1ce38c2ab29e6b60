"""Fault injection for checkpoint writes, driven by environment variables (tests, chaos runs, drills).

Background writes run on another thread (and could run in another process), where monkeypatching from a
test is fragile; an environment variable read when each file is opened reaches them all. Unset, each
check costs two dictionary lookups.

``SEO_DIST_CKPT_FAULT=ERRNO[:SUBSTRING][@RANK]``
    The first write to a checkpoint file whose relative path contains ``SUBSTRING`` (any file if
    omitted), on rank ``RANK`` (any rank if omitted), raises ``OSError(ERRNO)``: e.g. ``ENOSPC`` (disk
    full), ``EIO`` (I/O error), ``EACCES`` (permission); the writer then cleans up as after a real failure.
``SEO_DIST_CKPT_WRITE_DELAY_S=SECONDS``
    Sleep this long before writing each checkpoint file: a slow disk, to catch a save in flight (and,
    for the background writer, to let training change the live tensors before the staged copy is read).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

FAULT_ENV = "SEO_DIST_CKPT_FAULT"
DELAY_ENV = "SEO_DIST_CKPT_WRITE_DELAY_S"
COPY_DELAY_ENV = "SEO_DIST_CKPT_COPY_DELAY_S"
"""Seconds the background staging copy sleeps first (tests: the optimizer step must wait for it)."""


@dataclass(frozen=True, slots=True)
class WriteFault:
    errno: int
    match: str = ""
    rank: int | None = None

    def applies(self, relpath: str) -> bool:
        if self.match not in relpath:
            return False
        if self.rank is None:
            return True
        from seo_dist import dist

        return dist.get_rank() == self.rank

    def error(self, relpath: str) -> OSError:
        return OSError(self.errno, f"{os.strerror(self.errno)} (injected by {FAULT_ENV})", relpath)


def parse_fault(spec: str) -> WriteFault:
    """``ENOSPC:optim_states@1`` -> WriteFault(ENOSPC, "optim_states", 1); ValueError naming the bad part."""
    rest, _, rank = spec.partition("@")
    name, _, match = rest.partition(":")
    code = getattr(errno, name.strip().upper(), None)
    if not isinstance(code, int):
        raise ValueError(f"{FAULT_ENV}={spec!r}: {name!r} is not an errno name such as ENOSPC, EIO or EACCES")
    try:
        rank_value = int(rank) if rank.strip() else None
    except ValueError:
        raise ValueError(f"{FAULT_ENV}={spec!r}: rank {rank!r} is not an integer") from None
    return WriteFault(code, match, rank_value)


def write_fault(relpath: str) -> WriteFault | None:
    """The fault configured for a file about to be written, if any."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    fault = parse_fault(spec)
    return fault if fault.applies(relpath) else None


def delay_before_write() -> None:
    seconds = os.environ.get(DELAY_ENV)
    if seconds:
        time.sleep(float(seconds))


def delay_before_copy() -> None:
    seconds = os.environ.get(COPY_DELAY_ENV)
    if seconds:
        time.sleep(float(seconds))
