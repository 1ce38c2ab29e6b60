"""Where ranks publish their heartbeats and read each other's: the launcher's c10d store.

The store is not the training process group, so a rank can still tell who is stuck where while the
group is wedged in a collective. Under torchrun it is the agent's store, which outlives a frozen worker;
with other launchers it is the one rank 0 serves. Every attempt of a job (``torchrun --max-restarts``)
uses its own key prefix. The monitor opens its own client connection: its calls never queue behind the
process group's.

World size 1 uses :class:`LocalBoard` (no store, nothing to reach).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Protocol

HANG_KEY = "hang"
"""Set once, by the first rank that finds a hang; every rank acts on that one verdict."""
RECORDED_KEY = "hang_recorded"
"""Set by the rank that recorded the hang; the others wait for it (briefly) before exiting."""


class Board(Protocol):
    def publish(self, rank: int, record: dict[str, Any]) -> None: ...
    def read(self, ranks: range) -> dict[int, dict[str, Any]]: ...
    def claim_hang(self, verdict: dict[str, Any]) -> dict[str, Any]: ...
    def hang(self) -> dict[str, Any] | None: ...
    def mark_recorded(self) -> None: ...
    def recorded(self) -> bool: ...


class LocalBoard:
    """One process: the board is a dict."""

    def __init__(self) -> None:
        self._records: dict[int, dict[str, Any]] = {}
        self._hang: dict[str, Any] | None = None
        self._recorded = False

    def publish(self, rank: int, record: dict[str, Any]) -> None:
        self._records[rank] = record

    def read(self, ranks: range) -> dict[int, dict[str, Any]]:
        return {r: self._records[r] for r in ranks if r in self._records}

    def claim_hang(self, verdict: dict[str, Any]) -> dict[str, Any]:
        if self._hang is None:
            self._hang = verdict
        return self._hang

    def hang(self) -> dict[str, Any] | None:
        return self._hang

    def mark_recorded(self) -> None:
        self._recorded = True

    def recorded(self) -> bool:
        return self._recorded


class StoreBoard:
    """Heartbeats as JSON values under ``seo_dist/monitor/attempt_<n>/`` in a c10d store."""

    def __init__(self, store: Any, attempt: int) -> None:
        import torch.distributed as tdist

        self._store = tdist.PrefixStore(f"seo_dist/monitor/attempt_{attempt}", store)

    @classmethod
    def connect(cls, attempt: int, timeout_s: float = 30.0) -> StoreBoard | None:
        """A client of the store at ``MASTER_ADDR:MASTER_PORT``; None when there is none to reach."""
        import torch.distributed as tdist

        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not addr or not port:
            return None
        store = tdist.TCPStore(addr, int(port), is_master=False, wait_for_workers=False,
                               timeout=datetime.timedelta(seconds=timeout_s))  # fmt: skip
        return cls(store, attempt)

    def publish(self, rank: int, record: dict[str, Any]) -> None:
        self._store.set(f"rank_{rank}", json.dumps(record))

    def read(self, ranks: range) -> dict[int, dict[str, Any]]:
        keys = [f"rank_{r}" for r in ranks]
        present = [r for r, key in zip(ranks, keys, strict=True) if self._store.check([key])]
        if not present:
            return {}
        values = self._store.multi_get([f"rank_{r}" for r in present])
        return {r: json.loads(v) for r, v in zip(present, values, strict=True)}

    def claim_hang(self, verdict: dict[str, Any]) -> dict[str, Any]:
        """Record ``verdict`` unless another rank recorded one first; the verdict that holds either way."""
        won = self._store.compare_set(HANG_KEY, "", json.dumps(verdict))
        return json.loads(won)

    def hang(self) -> dict[str, Any] | None:
        if not self._store.check([HANG_KEY]):
            return None
        return json.loads(self._store.get(HANG_KEY))

    def mark_recorded(self) -> None:
        self._store.set(RECORDED_KEY, "1")

    def recorded(self) -> bool:
        return bool(self._store.check([RECORDED_KEY]))
