"""Chaos on input: random mutations of the shipped configs (hypothesis) never give a traceback.

Each example takes a shipped YAML config (its DeepSpeed JSON sometimes inlined so that mutations reach
inside it), applies one to three random mutations (a value replaced by anything YAML can hold, a key
deleted, an unknown key added, a key misspelt, a section replaced) and must get either a valid
``JobConfig`` (which then resolves for DeepSpeed, hashes and serialises) or a ``ConfigError``/``UserError``.
Rejected inputs also go through ``python -m seo_dist.train``'s ``main``: exit 2 and one line. In-process and
derandomised: CI runs a fixed sample, ``pytest -m chaos`` many more.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from chaos_scorecard import record
from conftest import CONFIGS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seo_dist.config import JobConfig, build_config, load_config
from seo_dist.engine.ds_config import resolve_deepspeed
from seo_dist.errors import UserError

SHIPPED = sorted(CONFIGS.glob("*.yaml"))

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "null",
            "../up",
            "/",
            ".",
            "1e-3",
            "3e-4",
            "stop",
            "skip",
            "none",
            "xxh3_128",
            "val/loss",
            "deepspeed/zero3.json",
            "no_such.json",
            "gpt2",
            "llama",
        ]
    ),  # fmt: skip
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3), st.booleans()), inner, max_size=3),
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    return out


def _parent(raw: dict, path: tuple) -> dict:
    node = raw
    for part in path[:-1]:
        node = node[part]
    return node


def mutate(raw: dict, data: st.DataObject) -> list[str]:
    """Apply 1-3 random mutations in place; returns what was done (shown when an example fails)."""
    done = []
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(raw)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = _parent(raw, path)
        op = data.draw(st.sampled_from(["set", "set", "set", "delete", "add", "misspell"]))
        if op == "set":
            parent[path[-1]] = data.draw(VALUES)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add":
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
            target[data.draw(st.text(min_size=1, max_size=10))] = data.draw(VALUES)
        else:
            value = parent.pop(path[-1])
            parent[f"{path[-1]}_" if isinstance(path[-1], str) else str(path[-1])] = value
        done.append(f"{op} {'.'.join(map(str, path))}")
    return done


def base_config(data: st.DataObject) -> dict:
    path = data.draw(st.sampled_from(SHIPPED))
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw.get("deepspeed"), str) and data.draw(st.booleans()):
        raw["deepspeed"] = json.loads((CONFIGS / raw["deepspeed"]).read_text())  # mutations reach inside
    return copy.deepcopy(raw)


def check_valid(job: JobConfig) -> None:
    """A config that loads is usable: DeepSpeed section resolves (or is rejected with a ConfigError), it hashes
    and it serialises to the YAML the tracker writes."""
    assert isinstance(job, JobConfig)
    try:
        ds = resolve_deepspeed(job, world_size=2)
        json.dumps(ds, default=str)
    except UserError:
        pass
    assert len(job.config_hash()) == 64
    yaml.safe_dump(job.to_dict(), sort_keys=False)
    for section in ("train", "data", "checkpoint", "profiling", "experiment"):
        for key, value in dataclasses.asdict(getattr(job, section)).items():
            if isinstance(value, float):
                assert math.isfinite(value), f"{section}.{key}={value} accepted"


def check_main_rejects(raw: dict, tmp: Path, capsys) -> None:
    """The entry point turns a rejected config into one line and exit code 2 (never a traceback)."""
    from seo_dist.train import main

    config = tmp / "fuzzed.yaml"
    try:
        config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    except yaml.YAMLError:
        return  # not representable as YAML: nothing a user could write
    try:
        load_config(config)
    except UserError:
        pass
    else:
        return  # the YAML round trip made it valid: main would train
    capsys.readouterr()
    assert main(["--config", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seo_dist")]
    assert len(err) == 1 and err[0].startswith("seo_dist: error: "), err


def fuzz_configs(data: st.DataObject, tmp: Path, capsys) -> None:
    raw = base_config(data)
    done = mutate(raw, data)
    try:
        job = build_config(raw, base=CONFIGS)
    except UserError as e:
        assert str(e) and "\n" not in str(e).strip(), (done, str(e))
        check_main_rejects(raw, tmp, capsys)
        return
    except Exception as e:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"mutations {done} raised {type(e).__name__}: {e}") from e
    check_valid(job)


KEYS = ["train.lr", "train.max_steps", "train.on_nan", "train.seq_len", "checkpoint.keep_last", "checkpoint.pinned",
        "checkpoint.verify_on_load", "experiment.experiment_id", "experiment.base_dir", "experiment.wandb",
        "model.config.n_layer", "model.arch", "data.vocab_size", "data.val_fraction", "deepspeed",
        "deepspeed.zero_optimization", "deepspeed.zero_optimization.stage", "deepspeed.bf16.enabled",
        "profiling.peak_tflops", "train", "nope.key", "train..lr", ".", ""]  # fmt: skip
OVERRIDES = st.lists(
    st.builds(
        lambda k, v, eq: f"{k}{eq}{v}",
        st.one_of(st.sampled_from(KEYS), st.text(max_size=10)),
        st.one_of(
            st.sampled_from(
                [
                    "1",
                    "-1",
                    "0",
                    "1e9",
                    "nan",
                    ".inf",
                    "[1, 2]",
                    "{a: 1}",
                    "null",
                    "true",
                    "'x'",
                    "[",
                    "{",
                    "\x00",
                    "stop",
                ]
            ),
            st.text(max_size=8),
        ),
        st.sampled_from(["=", "=", ""]),
    ),  # fmt: skip
    min_size=1,
    max_size=3,
)


def fuzz_overrides(path: Path, overrides: list[str], capsys) -> None:
    from seo_dist.train import main

    try:
        job = load_config(path, overrides)
    except UserError:
        capsys.readouterr()
        try:
            rc = main(["--config", str(path), "--set", *overrides])
        except SystemExit as e:  # argparse's usage error: an override that looks like an option ("-x=1")
            rc = e.code
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("seo_dist")]) <= 1, err
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"--set {overrides} raised {type(e).__name__}: {e}") from e
    check_valid(job)


CI = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(CI, max_examples=3000, derandomize=False)


def run_config_fuzz(profile: settings, tmp: Path, capsys) -> None:
    @profile
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        fuzz_configs(data, tmp, capsys)

    one()
    record("Config fuzzing: mutated shipped configs (hypothesis)",
           "a valid config, or ConfigError with one line and exit 2; never a traceback",
           trials=profile.max_examples)  # fmt: skip


def run_override_fuzz(profile: settings, capsys) -> None:
    @profile
    @given(path=st.sampled_from(SHIPPED), overrides=OVERRIDES)
    def one(path: Path, overrides: list[str]) -> None:
        fuzz_overrides(path, overrides, capsys)

    one()
    record("Config fuzzing: random --set overrides (hypothesis)",
           "a valid config, or ConfigError with one line and exit 2; never a traceback",
           trials=profile.max_examples)  # fmt: skip


def test_mutated_shipped_configs_never_give_a_traceback(tmp_path, capsys):
    run_config_fuzz(CI, tmp_path, capsys)


def test_fuzzed_overrides_never_give_a_traceback(capsys):
    run_override_fuzz(CI, capsys)


@pytest.mark.chaos
def test_mutated_shipped_configs_long(tmp_path, capsys):
    run_config_fuzz(LONG, tmp_path, capsys)


@pytest.mark.chaos
def test_fuzzed_overrides_long(capsys):
    run_override_fuzz(LONG, capsys)
