"""The causal LM: built from ``model.arch`` + ``model.config``, or loaded from a local directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seo_dist.config import ModelConfig
from seo_dist.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Names of the "maximum sequence length" field across architectures.
_MAX_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx")


def build_hf_config(cfg: ModelConfig, tokenizer: Any, seq_len: int) -> PretrainedConfig:
    """The Hugging Face config: vocabulary and special tokens from the tokenizer unless set explicitly."""
    from transformers import AutoConfig

    fields = dict(cfg.config)
    fields.setdefault("vocab_size", len(tokenizer))
    fields.setdefault("bos_token_id", tokenizer.bos_token_id)
    fields.setdefault("eos_token_id", tokenizer.eos_token_id)
    fields.setdefault("pad_token_id", tokenizer.pad_token_id)
    hf_config = AutoConfig.for_model(cfg.arch, **fields)
    if hf_config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"model.config.vocab_size={hf_config.vocab_size} is smaller than the tokenizer's "
            f"{len(tokenizer)} tokens; remove it (it is derived) or raise it"
        )
    check_max_positions(hf_config, seq_len)
    return hf_config


def check_max_positions(hf_config: PretrainedConfig, seq_len: int) -> None:
    for name in _MAX_POSITION_FIELDS:
        limit = getattr(hf_config, name, None)
        if isinstance(limit, int) and limit < seq_len:
            raise ConfigError(
                f"train.seq_len={seq_len} exceeds the model's {name}={limit}; "
                f"lower train.seq_len or set model.config.{name}"
            )


def build_model(cfg: ModelConfig, tokenizer: Any, seq_len: int) -> PreTrainedModel:
    """A freshly initialised causal LM (fp32; DeepSpeed's bf16 section decides training precision)."""
    from transformers import AutoModelForCausalLM

    if cfg.pretrained is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.pretrained, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"model.pretrained {cfg.pretrained!r} cannot be loaded: {str(e).splitlines()[0]}"
            ) from None
        check_max_positions(model.config, seq_len)
        if model.config.vocab_size < len(tokenizer):
            raise ConfigError(
                f"model.pretrained has vocab_size {model.config.vocab_size} < the tokenizer's "
                f"{len(tokenizer)}; use the model's own tokenizer (data.tokenizer)"
            )
    else:
        model = AutoModelForCausalLM.from_config(build_hf_config(cfg, tokenizer, seq_len))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def count_parameters(model: Any) -> int:
    """Parameters of the model, counting tied weights once (ZeRO-3 partitioned params by ds_numel)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", p.numel()))
    return total
