"""Tiny Dream and LLaDA checkpoints in the published format, and a reference forward pass, written independently of
the native classes (nothing here imports `entrgi_pipelines.models`), so that a renaming or an architecture mistake
in those classes shows up as a mismatch.

The config fields, tensor names and shapes follow the published checkpoints (Dream-org/Dream-v0-Instruct-7B,
GSAI-ML/LLaDA-8B-Instruct: see docs/models.md, "Verified against"), at toy width. The weights are stored in bfloat16
and sharded with a `model.safetensors.index.json`, as the published ones are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file


def dream_config(vocab_size: int, mask_token_id: int, pad_token_id: int, **overrides) -> dict:
    """Dream-v0-Instruct-7B's config.json fields, at toy size (GQA: 4 query heads, 2 key/value heads)."""
    config = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": pad_token_id,
        "eos_token_id": pad_token_id,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "mask_token_id": mask_token_id,
        "max_position_embeddings": 256,
        "max_window_layers": 28,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": pad_token_id,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    return {**config, **overrides}


def llada_config(vocab_size: int, mask_token_id: int, pad_token_id: int, **overrides) -> dict:
    """LLaDA-8B-Instruct's config.json fields (every one of them), at toy size."""
    config = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 32,
        "embedding_dropout": 0.0,
        "embedding_size": vocab_size,
        "eos_token_id": pad_token_id,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": mask_token_id,
        "max_sequence_length": 256,
        "mlp_hidden_size": 64,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "pad_token_id": pad_token_id,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": vocab_size,
        "weight_tying": False,
    }
    return {**config, **overrides}


def _random(generator: torch.Generator, *shape: int, std: float = 0.2, mean: float = 0.0) -> torch.Tensor:
    return (mean + std * torch.randn(*shape, generator=generator)).to(torch.bfloat16)


def dream_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Dream's tensor names, shaped from the config (q/k/v with bias, o_proj without)."""
    g = torch.Generator().manual_seed(seed)
    d, ff, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * d // config["num_attention_heads"]
    tensors = {"model.embed_tokens.weight": _random(g, vocab, d, std=1.0), "model.norm.weight": _random(g, d, mean=1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": _random(g, d, std=0.1, mean=1),
            p + "self_attn.q_proj.weight": _random(g, d, d),
            p + "self_attn.q_proj.bias": _random(g, d),
            p + "self_attn.k_proj.weight": _random(g, kv, d),
            p + "self_attn.k_proj.bias": _random(g, kv),
            p + "self_attn.v_proj.weight": _random(g, kv, d),
            p + "self_attn.v_proj.bias": _random(g, kv),
            p + "self_attn.o_proj.weight": _random(g, d, d),
            p + "post_attention_layernorm.weight": _random(g, d, std=0.1, mean=1),
            p + "mlp.gate_proj.weight": _random(g, ff, d),
            p + "mlp.up_proj.weight": _random(g, ff, d),
            p + "mlp.down_proj.weight": _random(g, d, ff),
        }
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = _random(g, vocab, d)
    return tensors


def llada_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's tensor names, shaped from the config ("llama" block, no biases)."""
    g = torch.Generator().manual_seed(seed)
    d, ff, rows = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
    kv = (config["n_kv_heads"] or config["n_heads"]) * d // config["n_heads"]
    tensors = {
        "model.transformer.wte.weight": _random(g, rows, d, std=1.0),
        "model.transformer.ln_f.weight": _random(g, d, std=0.1, mean=1),
    }
    for i in range(config["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        tensors |= {
            p + "attn_norm.weight": _random(g, d, std=0.1, mean=1),
            p + "q_proj.weight": _random(g, d, d),
            p + "k_proj.weight": _random(g, kv, d),
            p + "v_proj.weight": _random(g, kv, d),
            p + "attn_out.weight": _random(g, d, d),
            p + "ff_norm.weight": _random(g, d, std=0.1, mean=1),
            p + "ff_proj.weight": _random(g, ff, d),
            p + "up_proj.weight": _random(g, ff, d),
            p + "ff_out.weight": _random(g, d, ff),
        }
    if not config["weight_tying"]:
        tensors["model.transformer.ff_out.weight"] = _random(g, rows, d)
    return tensors


def write_checkpoint(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """`config.json`, two safetensors shards and `model.safetensors.index.json`, as the published repos lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map |= {k: file for k in keys}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


# --------------------------------------------------------------------------------------------------------------------
# Reference forward passes, in float64, from the architecture descriptions
# --------------------------------------------------------------------------------------------------------------------


def _rms(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, positions, theta):
    """Rotates each (x[j], x[j + D/2]) pair by position * theta^(-2j/D); x is (B, H, S, D), positions (B, S)."""
    dim = x.shape[-1]
    freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angle = positions.double()[:, None, :, None] * freq
    a, b = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat((a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()), dim=-1)


def _attention(q, k, v, key_mask):
    """Softmax attention of every query over the keys that `key_mask` (B, S) keeps; no causal mask."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def _heads(x, n):
    batch, seq, width = x.shape
    return x.view(batch, seq, n, width // n).transpose(1, 2)


def _merge(x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def reference_dream_logits(config: dict, tensors: dict, input_ids, key_mask=None, positions=None) -> torch.Tensor:
    w = {k: v.double() for k, v in tensors.items()}
    key_mask = torch.ones_like(input_ids, dtype=torch.bool) if key_mask is None else key_mask.bool()
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids) if positions is None else positions
    eps, theta = config["rms_norm_eps"], config["rope_theta"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    x = w["model.embed_tokens.weight"][input_ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q, k, v = (
            _heads(h @ w[p + f"self_attn.{n}_proj.weight"].T + w[p + f"self_attn.{n}_proj.bias"], c)
            for n, c in (("q", heads), ("k", kv_heads), ("v", kv_heads))
        )
        attn = _attention(_rope(q, positions, theta), _rope(k, positions, theta), v, key_mask)
        x = x + _merge(attn) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if config["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def reference_llada_logits(config: dict, tensors: dict, input_ids, key_mask=None, positions=None) -> torch.Tensor:
    w = {k: v.double() for k, v in tensors.items()}
    key_mask = torch.ones_like(input_ids, dtype=torch.bool) if key_mask is None else key_mask.bool()
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids) if positions is None else positions
    eps, theta = config["rms_norm_eps"], config["rope_theta"]
    heads, kv_heads = config["n_heads"], config["n_kv_heads"] or config["n_heads"]
    x = w["model.transformer.wte.weight"][input_ids]
    for i in range(config["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q, k, v = (
            _heads(h @ w[p + f"{n}_proj.weight"].T, c) for n, c in (("q", heads), ("k", kv_heads), ("v", kv_heads))
        )
        attn = _attention(_rope(q, positions, theta), _rope(k, positions, theta), v, key_mask)
        x = x + _merge(attn) @ w[p + "attn_out.weight"].T
        h = _rms(x, w[p + "ff_norm.weight"], eps)
        gate = torch.nn.functional.silu(h @ w[p + "ff_proj.weight"].T)  # LLaDA's gate is ff_proj, up is up_proj
        x = x + (gate * (h @ w[p + "up_proj.weight"].T)) @ w[p + "ff_out.weight"].T
    x = _rms(x, w["model.transformer.ln_f.weight"], eps)
    head = w["model.transformer.wte.weight"] if config["weight_tying"] else w["model.transformer.ff_out.weight"]
    return x @ head.T
