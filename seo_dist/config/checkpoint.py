"""``CheckpointConfig`` (also named ``CheckpointStrategy``): when to save, what to keep, how to load.

The job's ``checkpoint`` section and the policy a :class:`~seo_dist.checkpoint.CheckpointManager` follows are
this one class. ``CheckpointStrategy``'s field names are accepted as keyword aliases of its fields:
``max_checkpoints`` is ``keep_last``, ``save_latest`` is ``save_final`` (save when training ends; ``latest``
is the pointer file), ``save_best=False`` is ``keep_best=0``. ``CheckpointStrategy(500)`` still means
``save_interval=500``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from annotated_types import Ge, MinLen

from seo_dist.config.scalars import STRICT_KEYS, Bool, Int, Str, range_problems
from seo_dist.errors import ConfigError

VAL_LOSS = "val/loss"
"""The metric validation reports."""
TRAIN_LOSS = "train/loss"
"""The training loss, logged and recorded with every checkpoint."""
DEFAULT_BEST_METRIC = VAL_LOSS
RECORDED_METRICS = (VAL_LOSS, TRAIN_LOSS)
"""Metrics the trainer records with every checkpoint it saves (``val/loss`` is measured for a save that lacks it)."""
SECTION = "checkpoint"

# alias keyword -> the field it sets
ALIASES = {"max_checkpoints": "keep_last", "save_latest": "save_final", "save_best": "keep_best"}
POSITIONAL = ("save_interval", "save_best", "save_latest", "best_metric", "max_checkpoints", "cleanup_old")
"""``CheckpointStrategy``'s positional order: ``CheckpointStrategy(500, True, True, "val/loss", 5)`` works."""


def _resolve_aliases(kwargs: dict[str, Any]) -> dict[str, str]:
    """Replace alias keywords in ``kwargs`` by their fields; returns ``{field: alias}`` for error messages."""
    spelled = {}
    for alias, name in ALIASES.items():
        if alias not in kwargs:
            continue
        given = kwargs.pop(alias)
        value = given
        if alias == "save_best":  # False: keep no best checkpoint; True: keep at least one
            value = max(kwargs.get(name, 1), 1) if given else 0
        if name in kwargs and kwargs[name] != value:
            raise ConfigError(
                f"{SECTION}.{alias}={given!r} conflicts with {SECTION}.{name}={kwargs[name]!r}; give one of them"
            )
        kwargs[name] = value
        spelled[name] = alias
    return spelled


def _accepts_aliases(cls: type[CheckpointConfig]) -> type[CheckpointConfig]:
    """Wrap the dataclass ``__init__``: alias keywords are mapped onto fields, then every range is checked.

    Loading a job config does not go through ``__init__`` (pydantic checks the same ranges and reports
    every problem at once), so aliases are a Python-API convenience, not config keys.
    """
    init: Callable[..., None] = cls.__init__

    @functools.wraps(init)
    def __init__(self: CheckpointConfig, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(POSITIONAL):
            raise TypeError(
                f"CheckpointStrategy takes at most {len(POSITIONAL)} positional arguments ({', '.join(POSITIONAL)})"
            )
        for name, value in zip(POSITIONAL, args):
            if name in kwargs:
                raise TypeError(f"CheckpointStrategy got multiple values for argument {name!r}")
            kwargs[name] = value
        spelled = _resolve_aliases(kwargs)
        init(self, **kwargs)
        problems = range_problems(self, SECTION, spelled)
        if problems:
            raise ConfigError("; ".join(problems))

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


@_accepts_aliases
@dataclass(slots=True)
class CheckpointConfig:
    """When to save, what to keep, how to load."""

    save_interval: Annotated[Int, Ge(0)] = 0
    """Save every N steps (0: only the final save, when ``save_final``)."""
    _: KW_ONLY
    save_final: Bool = True
    """Save (synchronously) when training ends or is interrupted."""
    async_save: Bool = True
    """Stage to host memory, write/hash/commit in the background."""
    copy_in_background: Bool = True
    """With ``async_save``: copy to host memory on a thread while the next step's forward and backward run (its optimizer step waits for the copy)."""
    keep_last: Annotated[Int, Ge(2)] = 3
    """Newest checkpoints always kept; a crash during a save must leave a committed one."""
    keep_best: Annotated[Int, Ge(0)] = 1
    """Best checkpoints by ``best_metric`` always kept."""
    best_metric: Annotated[Str, MinLen(1)] = DEFAULT_BEST_METRIC
    """Metric that ranks checkpoints for ``keep_best`` and ``load best``; a training job records ``val/loss``
    and ``train/loss`` with each checkpoint, so it accepts those two."""
    maximize: Bool = False
    """True when a larger ``best_metric`` is better."""
    pinned: list[Int] = field(default_factory=list)
    """Steps never deleted by retention."""
    cleanup_old: Bool = True
    """Delete checkpoints outside the kept set after each commit (false keeps every checkpoint)."""
    verify_on_load: Literal["full", "quick", "off"] = "full"
    """Before loading: re-hash every file, check sizes only, or trust the files."""
    hash_algorithm: Literal["xxh3_128", "blake3", "sha256"] = "xxh3_128"
    """Content hash written into each manifest (computed while writing); catches bit rot and torn writes. Under a
    signing key ``xxh3_128`` becomes ``blake3`` (collision resistant)."""
    signing_key_file: Str | None = None
    """File holding a secret key (>= 16 bytes): every manifest gets an HMAC-SHA256 and every load and
    ``seo-dist verify`` checks it first, so no file can be swapped without the key. Default: the file named by
    ``$SEO_DIST_SIGNING_KEY_FILE`` (or the key in ``$SEO_DIST_SIGNING_KEY``), else no signing."""
    allow_unsigned: Bool = False
    """With a signing key: whether checkpoints without a signature may still load (e.g. those saved before the
    key was set). Without a key nothing is checked."""
    on_error: Literal["raise", "warn"] = "raise"
    """A failed background save: stop training, or log an error event and go on."""
    export_final: Bool = True
    """After a completed run, consolidate the final checkpoint into ``artifacts/final_model`` (Hugging Face folder)."""
    export_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weight dtype of the exported model."""

    __pydantic_config__ = STRICT_KEYS
    KEY_ALIASES: ClassVar[dict[str, str]] = ALIASES

    def __post_init__(self) -> None:
        self.pinned = sorted({int(s) for s in self.pinned})

    @property
    def max_checkpoints(self) -> int:
        """Alias of ``keep_last``."""
        return self.keep_last

    @property
    def save_latest(self) -> bool:
        """Alias of ``save_final``."""
        return self.save_final

    @property
    def save_best(self) -> bool:
        """True when some best checkpoints are kept (``keep_best > 0``)."""
        return self.keep_best > 0

    @property
    def effective_keep_best(self) -> int:
        """How many best checkpoints retention keeps (``keep_best``; for compatibility)."""
        return self.keep_best

    def should_save(self, step: int, *, final: bool = False) -> bool:
        """True at every ``save_interval``-th step (step > 0), and at the final step when ``save_final``."""
        if final:
            return self.save_final
        return self.save_interval > 0 and step > 0 and step % self.save_interval == 0

    @classmethod
    def from_config(cls, cfg: CheckpointConfig) -> CheckpointConfig:
        """A copy of ``cfg`` (the config is the strategy; kept for compatibility)."""
        return dataclasses.replace(cfg)


CheckpointStrategy = CheckpointConfig
