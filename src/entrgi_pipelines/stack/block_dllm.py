"""dLLM v3's shipped form: SmolLM2-135M-Instruct plus a LoRA adapter and a mask vector, rebuilt as a Fast-dLLM v2
``from_pretrained`` folder (Qwen2's tensor names, zero q/k/v biases, ``bd_size``, shifted logits) that the native
`Fast_dLLM_QwenForCausalLM` loads. The training is in `train_block_dllm`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MASK_ID = 16
"""``<empty_output>``, a reserved SmolLM2 token, serves as the mask."""


def merge_adapter(base_state: dict[str, torch.Tensor], adapter_folder: str | Path) -> dict[str, torch.Tensor]:
    """The base `LlamaForCausalLM` state dict with the adapter merged: ``W + scale * B @ A``, mask vector in row 16."""
    adapter_folder = Path(adapter_folder)
    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_folder / "adapter.safetensors"))
    scale = config["alpha"] / config["rank"]
    state = {k: v.clone() for k, v in base_state.items()}
    for key in [k for k in tensors if k.endswith(".lora_a")]:
        name = key[: -len(".lora_a")]
        weight = f"{name}.weight"
        if weight not in state:
            raise ValueError(f"merge_adapter: the adapter's {name} is not in the base state dict; wrong base model.")
        delta = scale * tensors[f"{name}.lora_b"].float() @ tensors[key].float()
        state[weight] = (state[weight].float() + delta).to(state[weight].dtype)
    embed = "model.embed_tokens.weight"
    state[embed][config["mask_token_id"]] = tensors["mask_embedding"].to(state[embed].dtype)
    if "lm_head.weight" in state:  # tied: one matrix
        state["lm_head.weight"] = state[embed]
    return state


def fast_dllm_config(llama_config, block_size: int, mask_token_id: int = MASK_ID) -> dict:
    """Fast-dLLM v2's config for a Llama geometry: Qwen2's fields (zero q/k/v biases), ``bd_size``, the mask id."""
    c = llama_config
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.head_dim != c.hidden_size // c.num_attention_heads:
        raise ValueError("fast_dllm_config: Qwen2 needs head_dim == hidden_size / num_attention_heads.")
    if getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False):
        raise ValueError("fast_dllm_config: a Llama with attention or MLP biases has no Qwen2 equivalent.")
    return {
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "model_type": "Fast_dLLM_Qwen",
        "bd_size": block_size,
        "mask_token_id": mask_token_id,
        "logits_shift": True,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": rope["rope_theta"],
        "rope_parameters": dict(rope),
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": c.num_hidden_layers,
        "attention_dropout": 0.0,
        "initializer_range": c.initializer_range,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def build_fast_dllm_folder(base_folder: str | Path, adapter_folder: str | Path, out_folder: str | Path) -> Path:
    """
    A `from_pretrained` folder in Fast-dLLM v2's format from the SmolLM2 folder and the adapter.

    Llama's tensor names are Qwen2's; Qwen2's q/k/v biases are written as zeros; the tied ``lm_head`` is left out;
    the tokenizer files are copied. Written into a temporary folder and renamed, so a folder is whole or absent.
    """
    from transformers import AutoConfig

    base_folder, out_folder = Path(base_folder), Path(out_folder)
    adapter = json.loads((Path(adapter_folder) / "adapter_config.json").read_text())
    state = merge_adapter(load_file(str(base_folder / "model.safetensors")), adapter_folder)
    state.pop("lm_head.weight", None)
    for key in [
        k
        for k in state
        if k.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"))
    ]:
        state[key[: -len("weight")] + "bias"] = torch.zeros(state[key].shape[0], dtype=state[key].dtype)
    config = fast_dllm_config(AutoConfig.from_pretrained(base_folder), adapter["block_size"], adapter["mask_token_id"])
    temporary = out_folder.with_name(f".{out_folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(temporary / "model.safetensors"), metadata={"format": "pt"}
    )
    (temporary / "config.json").write_text(json.dumps(config, indent=1))
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        if (base_folder / name).exists():
            shutil.copy(base_folder / name, temporary / name)
    shutil.rmtree(out_folder, ignore_errors=True)
    os.replace(temporary, out_folder)
    return out_folder


def qwen2_from_folder(folder: str | Path):
    """
    transformers' `Qwen2ForCausalLM` holding a Fast-dLLM v2 folder's tensors (same names): its causal logits are the
    folder's block-of-one-token (autoregressive) logits, a check that needs no block-diffusion class.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    model = Qwen2ForCausalLM(Qwen2Config(**fields)).eval()
    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise ValueError(f"{folder} does not hold Qwen2's tensors: missing {missing}, unexpected {unexpected}.")
    model.tie_weights()
    return model
