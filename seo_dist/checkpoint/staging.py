"""Host staging for asynchronous saves: a point-in-time copy of what ``torch.save`` would write.

The state dicts that DeepSpeed hands to a checkpoint engine reference live tensors (parameters, fp32 master
partitions, Adam moments); training changes them at the next step. :meth:`HostStager.stage` takes the
snapshot that a background write needs:

* it pickles the object graph the way ``torch.save`` does, except that every tensor storage is copied
  into a host buffer and the pickle refers to the copy (non-tensor objects, such as DeepSpeed's loss
  scaler or a data loader position, are frozen by the pickling itself);
* storages are copied whole and once, keyed as ``torch.save`` keys them, so views and tied weights keep
  sharing one storage and the file written later is byte for byte what a synchronous save writes
  (only the location tag differs for CUDA tensors, which are staged to the CPU);
* buffers are allocated once and reused by the next save when the sizes match (the same engine stages
  the same storages in the same order every time); CUDA sources go to pinned buffers with
  ``non_blocking`` copies, and :meth:`HostStager.synchronize` waits for them once, at the end;
* the first save need not pay for the allocation either: inside :meth:`HostStager.planning` a dry run of the
  save records the buffers it would need without copying anything, and a background thread then allocates
  them and touches every page (the first-touch page faults cost ~0.7 s/GB on the machines measured, on the
  training thread otherwise); the next :meth:`HostStager.stage` waits for that thread, if still running.
* nor the copy, when the caller can say when the state changes next: inside :meth:`HostStager.deferring` the
  copies of CPU storages are queued and :meth:`HostStager.start_copies` runs them on a background thread
  (CUDA copies are asynchronous already; an event marks their end), while the next step's forward and backward
  run; the caller calls :meth:`HostStager.wait_copied` before anything changes the staged state (the
  optimizer step), as torchtitan waits for its staging before ``optimizers.step()``.

:meth:`StagedFile.materialize` rebuilds the object on the staged buffers (no copy) for ``torch.save``.
Nothing here knows about DeepSpeed: any engine that can hand over "file name + object" pairs can stage.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from seo_dist.checkpoint import faults

log = logging.getLogger(__name__)

_PROTOCOL = pickle.HIGHEST_PROTOCOL  # private to the snapshot: torch.save re-pickles with its own


@dataclass
class StagedFile:
    """One file of a checkpoint, staged: the pickled object graph plus the host copies of its storages."""

    relpath: str
    pickled: bytes
    storages: dict[int, torch.UntypedStorage] = field(repr=False)
    nbytes: int
    """Bytes of tensor data copied (the file is this plus a little pickle and zip overhead)."""

    def materialize(self) -> Any:
        """The object as it was when staged, its tensors viewing the staged buffers."""
        storages = self.storages

        class _Unpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                key, dtype = pid
                if dtype is None:
                    return storages[key]
                return torch.storage.TypedStorage(wrap_storage=storages[key], dtype=dtype, _internal=True)

        return _Unpickler(io.BytesIO(self.pickled)).load()


class HostStager:
    """Copies checkpoint state into reusable host buffers; one per manager, used by one save at a time.

    Args:
        pin_memory: pinned host buffers for CUDA tensors (default: when CUDA is available). CPU tensors
            always go to ordinary memory: pinning buys nothing for a memcpy.
    """

    def __init__(self, *, pin_memory: bool | None = None) -> None:
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._pool: dict[tuple[str, int], torch.UntypedStorage] = {}
        self._pending_cuda = False
        self.allocated_bytes = 0
        """Bytes of host buffers allocated over the stager's life (a reused buffer is not counted again)."""
        self.prewarmed_bytes = 0
        """Bytes of those allocated and touched ahead of a save, off the training thread (:meth:`planning`)."""
        self._plan: dict[tuple[str, int], tuple[int, bool]] | None = None
        self._prewarm: threading.Thread | None = None
        self._prewarm_error: BaseException | None = None
        self._defer = False
        self._queued: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._copier: threading.Thread | None = None
        self._copy_error: BaseException | None = None
        self._cuda_done: Any = None  # a torch.cuda.Event after the queued device-to-host copies
        self.copy_s = 0.0
        """How long the last background copy took (:meth:`start_copies`)."""

    @property
    def pool_bytes(self) -> int:
        """Bytes held in staging buffers now."""
        return sum(s.nbytes() for s in self._pool.values())

    @property
    def pinned_bytes(self) -> int:
        """Bytes of those buffers that are pinned (page-locked, for fast device-to-host copies)."""
        return sum(s.nbytes() for s in self._pool.values() if s.is_pinned())

    @contextmanager
    def planning(self) -> Iterator[None]:
        """Within the block :meth:`stage` copies nothing and records the buffers that a save of the same objects
        needs; after it a background thread allocates them and touches every page. Run a save's staging
        inside it once before the first real save (``SavePipeline.prewarm``)."""
        self.wait_prewarmed()
        self._plan = {}
        try:
            yield
        finally:
            plan, self._plan = self._plan, None
        needed = {k: v for k, v in plan.items() if not self._fits(self._pool.get(k), *v)}
        if needed:
            self._prewarm = threading.Thread(
                target=self._allocate_planned, args=(needed,), name="seo-dist-ckpt-prewarm", daemon=True
            )
            self._prewarm.start()

    @contextmanager
    def deferring(self, defer: bool = True) -> Iterator[None]:
        """Within the block (when ``defer``) :meth:`stage` queues the copies of CPU storages instead of making
        them; :meth:`start_copies` then runs them in the background."""
        self._defer = defer
        try:
            yield
        except BaseException:
            self._queued.clear()  # a failed staging: nothing of it is to be copied (nor kept alive)
            raise
        finally:
            self._defer = False

    def start_copies(self) -> None:
        """Run the queued copies on a background thread (and mark the end of the CUDA copies issued so far);
        returns at once. :meth:`wait_copied` waits for both."""
        self.copy_s = 0.0  # the host-side copy time of this save (CUDA copies run on the stream, not counted)
        if self._pending_cuda:
            self._cuda_done = torch.cuda.Event()
            self._cuda_done.record()
            self._pending_cuda = False
        queued, self._queued = self._queued, []
        if not queued:
            return

        def copy() -> None:
            start = time.perf_counter()
            try:
                faults.delay_before_copy()
                for dst, src in queued:
                    dst.copy_(src)
            except BaseException as e:  # noqa: BLE001 - reported by the writer, which fails the save
                self._copy_error = e
            finally:
                self.copy_s = time.perf_counter() - start

        self._copier = threading.Thread(target=copy, name="seo-dist-ckpt-copy", daemon=True)
        self._copier.start()

    @property
    def copying(self) -> bool:
        """True while a background copy (:meth:`start_copies`) is running."""
        return self._copier is not None and self._copier.is_alive()

    def wait_copied(self, *, device: bool = False) -> float:
        """Wait for the background copy (a no-op when none runs); seconds waited. ``device``: also wait on the
        host for the CUDA copies (the writer needs the bytes; the training thread needs only stream order,
        which :meth:`order_device_work` gives without blocking)."""
        start = time.perf_counter()
        copier = self._copier
        if copier is not None:
            copier.join()
        if device and self._cuda_done is not None:
            self._cuda_done.synchronize()
        return time.perf_counter() - start

    def order_device_work(self) -> None:
        """Make the current CUDA stream wait for the staging copies (nothing blocks on the host)."""
        if self._cuda_done is not None:
            torch.cuda.current_stream().wait_event(self._cuda_done)

    def take_copy_error(self) -> BaseException | None:
        """The error of the last background copy, once."""
        error, self._copy_error = self._copy_error, None
        return error

    def wait_prewarmed(self) -> None:
        """Wait for the buffers :meth:`planning` is allocating (a no-op when none are)."""
        if self._prewarm is not None:
            self._prewarm.join()
            self._prewarm = None
        if self._prewarm_error is not None:
            error, self._prewarm_error = self._prewarm_error, None
            log.warning("checkpoint staging buffers were not allocated ahead (the save allocates them): %s", error)

    def _allocate_planned(self, plan: dict[tuple[str, int], tuple[int, bool]]) -> None:
        try:
            for key, (nbytes, pinned) in plan.items():
                buffer = self._allocate(nbytes, pinned)
                if not buffer.is_pinned():  # pinned memory is resident already; pageable pages are faulted in now
                    torch.empty(0, dtype=torch.uint8).set_(buffer).zero_()
                self._pool[key] = buffer
                self.allocated_bytes += nbytes
                self.prewarmed_bytes += nbytes
        except BaseException as e:  # noqa: BLE001 - e.g. out of memory: the save allocates what is missing
            self._prewarm_error = e

    def stage(self, relpath: str, obj: Any) -> StagedFile:
        """Snapshot ``obj`` (what would be saved as ``relpath``); returns before CUDA copies finish (see
        :meth:`synchronize`). Inside :meth:`planning`, records what it would copy and copies nothing."""
        if self._plan is None:  # the buffers of the previous save are about to be reused
            self.wait_prewarmed()
            self.wait_copied()
        staged: dict[int, torch.UntypedStorage] = {}
        keys: dict[int, int] = {}  # source storage (torch.save's key: the C++ storage) -> staged key
        copied = 0
        stager = self

        class _Pickler(pickle.Pickler):
            def persistent_id(self, o: Any) -> Any:
                nonlocal copied
                if isinstance(o, torch.storage.TypedStorage):
                    source, dtype = o._untyped_storage, o.dtype
                elif torch.is_storage(o):
                    source, dtype = o, None
                else:
                    return None
                key = keys.get(source._cdata)
                if key is None:
                    key = keys[source._cdata] = len(keys)
                    staged[key] = stager._copy(relpath, key, source)
                    copied += source.nbytes()
                return (key, dtype)

        buf = io.BytesIO()
        _Pickler(buf, protocol=_PROTOCOL).dump(obj)
        self._drop_unused(relpath, len(keys))
        return StagedFile(relpath, buf.getvalue(), staged, copied)

    def synchronize(self) -> None:
        """Wait for the non-blocking device-to-host copies issued since the last call."""
        if self._pending_cuda:
            torch.cuda.synchronize()
            self._pending_cuda = False

    def release(self) -> None:
        """Free every buffer (the next save allocates again)."""
        self.wait_prewarmed()
        self.wait_copied(device=True)
        self.synchronize()
        self._pool.clear()

    @staticmethod
    def _fits(target: torch.UntypedStorage | None, nbytes: int, pinned: bool) -> bool:
        return target is not None and target.nbytes() == nbytes and (target.is_pinned() or not pinned)

    def _copy(self, relpath: str, key: int, source: torch.UntypedStorage) -> torch.UntypedStorage:
        if source.device.type == "meta":
            return source  # nothing to copy; torch.save writes no bytes for it either
        nbytes = source.nbytes()
        on_cuda = source.device.type == "cuda"
        pinned = self.pin_memory and on_cuda
        if self._plan is not None:  # a dry run (planning): what this save needs, nothing copied
            self._plan[(relpath, key)] = (nbytes, pinned)
            return source
        target = self._pool.get((relpath, key))
        if target is None or not self._fits(target, nbytes, pinned):
            target = self._allocate(nbytes, pinned)
            pinned = pinned and target.is_pinned()
            self._pool[(relpath, key)] = target
            self.allocated_bytes += nbytes
        if nbytes:
            dst = torch.empty(0, dtype=torch.uint8).set_(target)
            src = torch.empty(0, dtype=torch.uint8, device=source.device).set_(source)
            if self._defer and not on_cuda:
                self._queued.append((dst, src))  # src keeps the source storage alive until copied
            else:
                dst.copy_(src, non_blocking=pinned)
                self._pending_cuda = self._pending_cuda or on_cuda
        return target

    def _allocate(self, nbytes: int, pinned: bool) -> torch.UntypedStorage:
        if pinned:
            try:
                return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).untyped_storage()
            except RuntimeError as e:  # e.g. a locked-memory limit: slower copies, but the save goes on
                log.warning("cannot pin %.2f GB for checkpoint staging, using pageable memory: %s", nbytes / 1e9, e)
                self.pin_memory = False
        return torch.empty(nbytes, dtype=torch.uint8).untyped_storage()

    def _drop_unused(self, relpath: str, used: int) -> None:
        if self._plan is not None:
            return
        for key in [k for k in self._pool if k[0] == relpath and k[1] >= used]:
            del self._pool[key]
