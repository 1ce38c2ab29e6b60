"""The background half of an asynchronous save: one writer thread, at most one save in flight.

The training thread stages (copies every tensor to host buffers, :mod:`.staging`) and hands the
staged files to :class:`BackgroundWriter`; its thread writes them through the hashing writer (hash in
the same pass, fsync) and runs the commit on the manager's own gloo group, never the training group.
Results (timings, or the error) are picked up on the training thread by :meth:`BackgroundWriter.collect`.

Why a thread and not a process (benchmarks/bench_async_writer.py, numbers in benchmarks/RESULTS.md):
``torch.save`` releases the GIL while it checksums and copies storage bytes, and the file write, xxh3 and
fsync release it too, so the writer thread holds the GIL only for pickling metadata and one short Python
call per 8 MB slice. Measured on the 2-core VM with a 1 GB payload written over and over, the slowdown of
a GPT-2 training step was the same, within the noise of a shared machine, under a writer thread as under
a writer process (three runs: -4% vs +3%, -5% vs -11%, +88% vs +118%), and for a millisecond step bound by
op dispatch +42/+17/+69% vs +107/-30/+118%: what slows training is the CPU and memory bandwidth that the
write takes, and a process takes them as well. Only a loop that holds the GIL all the time (pure Python, not a
training step) showed it: the thread then wrote at half the process's rate. A process would also need
shared-memory staging buffers (pinned-memory registration on CUDA), a copy of the job description and an
error channel of its own; :class:`BackgroundWriter` keeps the choice in one place should that change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seo_dist import dist
from seo_dist.checkpoint.hashing import FileRecord, write_torch_file
from seo_dist.checkpoint.staging import StagedFile
from seo_dist.errors import error_line

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

log = logging.getLogger(__name__)

THREAD_NAME = "seo-dist-ckpt-writer"


def write_staged(files: list[StagedFile], folder: Path, algorithm: str) -> tuple[list[FileRecord], list[str]]:
    """Write staged files into ``folder`` (hashed while written, fsynced); errors are returned, not raised,
    so that this rank still reaches the commit and every rank learns that the save failed."""
    records: list[FileRecord] = []
    errors: list[str] = []
    for staged in files:
        try:
            records.append(write_torch_file(staged.materialize(), folder, staged.relpath, algorithm))
        except Exception as e:  # noqa: BLE001 - see docstring
            errors.append(f"{staged.relpath}: {error_line(e)}")
    return records, errors


class BackgroundWriter:
    """One worker thread and the one save it may be running.

    The thread is not a daemon: the interpreter joins it before exiting, so a save in flight is finished
    (committed or failed cleanly) even when the training script returns without waiting for it.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[None] | None = None
        self._stats: dict[str, Any] = {}
        self._worker_ident: int | None = None

    @property
    def in_flight(self) -> bool:
        return self._future is not None

    @property
    def finished(self) -> bool:
        """True when the save in flight has finished (and :meth:`collect` would not block)."""
        return self._future is not None and self._future.done()

    def on_worker_thread(self) -> bool:
        return threading.get_ident() == self._worker_ident

    def submit(self, job: Callable[[dict[str, Any]], None], stats: dict[str, Any]) -> None:
        """Run ``job(stats)`` on the worker thread; ``job`` fills in ``stats``. Call :meth:`collect` first."""
        if self._future is not None:
            raise RuntimeError("a checkpoint save is already in flight; collect it first")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

        def run() -> None:
            self._worker_ident = threading.get_ident()
            job(stats)

        self._stats = stats
        self._future = self._executor.submit(run)

    def collect(self, block: bool) -> tuple[dict[str, Any] | None, BaseException | None]:
        """The stats and error (or None) of the save in flight once it has finished; ``(None, None)``
        when nothing is in flight, or when it is still running and ``block`` is false."""
        future = self._future
        if future is None or (not block and not future.done()):
            return None, None
        error = future.exception()  # waits
        self._future = None
        return self._stats, error

    def shutdown(self) -> None:
        """Stop the worker thread (after the save in flight, if any, has finished)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class CommitGroup:
    """The process group of a manager's collectives: the caller's ``group``, else (once a background save needs
    one) a gloo group of its own, so that the writer thread never uses the training group. ``None`` means the
    default group (or no process group at all, world size 1)."""

    def __init__(self, group: ProcessGroup | None = None) -> None:
        self.group = group
        self._owned = False

    def ensure_own(self) -> None:
        """Create the manager's own gloo group unless one was given or made already. A collective, run on the
        training thread by every rank; a no-op before ``torch.distributed`` is initialised (world size 1 so far),
        in which case the next background save tries again."""
        if self.group is None and not self._owned and dist.is_initialized():
            self.group = dist.new_gloo_group()
            self._owned = True

    def release(self) -> None:
        """Destroy the group if this object created it."""
        if self._owned and self.group is not None and dist.is_initialized():
            import torch.distributed as tdist

            tdist.destroy_process_group(self.group)
            self.group = None
