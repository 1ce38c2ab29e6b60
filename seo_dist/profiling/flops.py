"""Model FLOPs per token and the peak FLOP rate of the device, the two halves of MFU.

MFU (model FLOPs utilisation, PaLM appendix B) counts the FLOPs the model *needs* per token,
not the ones the hardware happens to run: activation recomputation and padding are not
credited, so MFU is comparable across runs that differ only in such tricks.

    flops_per_token = 6 * N + 12 * L * H * Q * T

- ``6 * N``: each weight takes part in one multiply-add (2 FLOPs) per token in the forward
  pass and two in the backward pass (gradients w.r.t. inputs and weights).
- ``12 * L * H * Q * T``: the attention scores and the weighted sum (two matmuls of size
  ``T x Q`` per head per token), forward + backward (x3), multiply-add (x2). Like PaLM and
  torchtitan, the causal mask's saving of half of it is not taken into account.

``N`` here is the number of *matmul* parameters: every parameter except the input token and
position embeddings (lookups, no FLOPs), with the output projection (LM head) counted once
even when it is tied to the token embedding, because its ``d x V`` matmul runs for every
token. For GPT-2 124M this is 123.65 M, the same ``N`` nanoGPT's ``estimate_mfu`` uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Peak dense (no sparsity) bf16 tensor-core TFLOP/s of one device, from NVIDIA's datasheets.
# Matched in order against ``torch.cuda.get_device_name()`` (lower-cased); every substring of
# an entry must occur, and a more specific entry comes before a more general one.
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("gb200",), 2500.0),
    (("b200",), 2250.0),
    (("h200", "nvl"), 836.0),
    (("h200",), 989.0),
    (("h100", "nvl"), 835.0),
    (("h100", "pcie"), 756.0),
    (("h100",), 989.0),  # SXM / HBM3
    (("a100",), 312.0),
    (("a800",), 312.0),
)


def peak_tflops_for(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s for a device name such as ``'NVIDIA H100 80GB HBM3'``; None if unknown.

    Unknown devices (and the CPU) get None rather than a guess: MFU against a made-up peak
    would be reported as a fact, so the profiler leaves ``perf/mfu`` out instead.
    """
    name = device_name.lower()
    for parts, tflops in PEAK_BF16_TFLOPS:
        if all(part in name for part in parts):
            return tflops
    return None


def _hf_config_of(obj: Any) -> Any:
    """Accept a ``PretrainedConfig`` or a model that carries one in ``.config``."""
    if isinstance(obj, nn.Module):
        config = getattr(obj, "config", None)
        if config is None:
            raise TypeError("flops_per_token needs a Hugging Face config or a model with .config")
        return config
    return obj


def count_matmul_params(hf_config: Any) -> int:
    """Parameters that do matmul work per token (see the module docstring), counted exactly.

    The model is built on the ``meta`` device from its config, so no memory is allocated and
    every transformers architecture is covered without a per-architecture formula (Llama-3 8B
    takes a few milliseconds). Counting from the config rather than from the live model also
    works under ZeRO-3, where each rank holds only a shard of every parameter.
    """
    from transformers import AutoModelForCausalLM

    config = _hf_config_of(hf_config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embedding_params = {
        id(p): p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    input_embeddings = model.get_input_embeddings()
    if input_embeddings is not None:
        embedding_params.update({id(p): p.numel() for p in input_embeddings.parameters()})
    matmul = total - sum(embedding_params.values())
    head = model.get_output_embeddings()
    if head is not None and any(id(p) in embedding_params for p in head.parameters()):
        matmul += sum(p.numel() for p in head.parameters())  # tied head: its matmul still runs
    return matmul


def _attention_shape(config: Any) -> tuple[int, int, int]:
    """(layers, heads, head dim) through the standard HF attribute names (GPT-2's ``n_layer`` etc. map onto them)."""
    try:
        layers = int(config.num_hidden_layers)
        heads = int(config.num_attention_heads)
        hidden = int(config.hidden_size)
    except AttributeError as e:
        raise ValueError(
            f"flops_per_token: the model config lacks {e.name!r}; pass num_params= and attention=(layers, heads, head_dim)"
        ) from None
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, heads, int(head_dim)


def flops_per_token(
    hf_config: Any,
    seq_len: int,
    *,
    num_params: int | None = None,
    attention: tuple[int, int, int] | None = None,
) -> float:
    """Training FLOPs (forward + backward) per token: ``6 * N + 12 * L * H * Q * T``.

    Args:
        hf_config: a transformers ``PretrainedConfig`` (or a model with ``.config``); may be
            None when both ``num_params`` and ``attention`` are given.
        seq_len: ``T``, the sequence length the model trains at.
        num_params: ``N`` override, e.g. the *active* parameters of a mixture-of-experts model
            (the default counts every expert). Default: :func:`count_matmul_params`.
        attention: ``(L, H, Q)`` override for architectures without the standard config names.
    """
    if seq_len < 1:
        raise ValueError(f"flops_per_token: seq_len must be >= 1, got {seq_len}")
    config = _hf_config_of(hf_config) if hf_config is not None else None
    if config is None and (num_params is None or attention is None):
        raise ValueError("flops_per_token: without a model config, give both num_params= and attention=")
    n = count_matmul_params(config) if num_params is None else int(num_params)
    layers, heads, head_dim = attention if attention is not None else _attention_shape(config)
    return float(6 * n + 12 * layers * heads * head_dim * seq_len)
