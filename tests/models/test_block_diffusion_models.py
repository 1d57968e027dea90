"""Native block-diffusion models (SDAR / TraDo, Fast-dLLM v2) and their key/value cache: published-format checkpoints
load by the Auto classes, the uncached forward matches an independent block-causal reference, the cached path gives
the uncached logits, rows at different lengths advance on their own, and bad settings are refused clearly.

The checkpoints are written here (config.json fields and tensor names as published, toy sizes, random weights); the
reference forward pass is written from the architecture descriptions in float64 and imports nothing of the package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache

from entrgi_pipelines.models import (
    BlockKVCache,
    Fast_dLLM_QwenConfig,
    Fast_dLLM_QwenForCausalLM,
    SDARConfig,
    SDARForCausalLM,
    use_repository_code,
)
from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache

ROOT = Path(__file__).resolve().parents[2]
VOCAB, MASK = 64, 63


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


# --------------------------------------------------------------------------------------------------------------------
# Published-format checkpoints
# --------------------------------------------------------------------------------------------------------------------


def sdar_config(**overrides) -> dict:
    """JetLM/SDAR-1.7B-Chat's config.json fields (every one of them), at toy size (4 query, 2 key/value heads)."""
    config = {
        "architectures": ["SDARForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_implementation": "flex_attention",
        "bos_token_id": 0,
        "debug": False,
        "eos_token_id": 0,
        "block_size": 4,
        "mask_token_id": MASK,
        "ep_size": 1,
        "fuse_cross_entropy": True,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 256,
        "max_window_layers": 28,
        "micro_forward": False,
        "model_type": "sdar",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "skip_checkpoint": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.52.4",
        "use_cache": False,
        "use_deepep": False,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    return {**config, **overrides}


def fast_dllm_config(**overrides) -> dict:
    """Fast_dLLM_v2_1.5B's config.json: Qwen2.5-1.5B-Instruct's fields plus `bd_size` and `layer_types`, toy size
    (6 query heads, 2 key/value heads: head counts that are not powers of two, tied embeddings)."""
    config = {
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
            "AutoModel": "modeling.Fast_dLLM_QwenModel",
            "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
        },
        "attention_dropout": 0.0,
        "bd_size": 4,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_act": "silu",
        "hidden_size": 48,
        "initializer_range": 0.02,
        "intermediate_size": 96,
        "layer_types": ["full_attention", "full_attention"],
        "max_position_embeddings": 256,
        "max_window_layers": 21,
        "model_type": "Fast_dLLM_Qwen",
        "num_attention_heads": 6,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": 256,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.53.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    return {**config, **overrides}


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def make_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the published tensor names (SDAR: Qwen3's, with q/k norms; Fast-dLLM: Qwen2's, with
    q/k/v biases), large enough that attention is far from uniform."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.3, mean=0.0):
        return torch.randn(*shape, generator=gen) * std + mean

    sdar = config["model_type"] == "sdar"
    hidden, inter, head = config["hidden_size"], config["intermediate_size"], _head_dim(config)
    q_width, kv_width = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    # the embedding is also the output projection when tied: std 0.3 keeps the logits of a few units
    tensors = {"model.embed_tokens.weight": rand(VOCAB, hidden), "model.norm.weight": rand(hidden, std=0.1, mean=1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": rand(hidden, std=0.1, mean=1),
            p + "post_attention_layernorm.weight": rand(hidden, std=0.1, mean=1),
            p + "self_attn.q_proj.weight": rand(q_width, hidden),
            p + "self_attn.k_proj.weight": rand(kv_width, hidden),
            p + "self_attn.v_proj.weight": rand(kv_width, hidden),
            p + "self_attn.o_proj.weight": rand(hidden, q_width, std=0.2),
            p + "mlp.gate_proj.weight": rand(inter, hidden, std=0.2),
            p + "mlp.up_proj.weight": rand(inter, hidden, std=0.2),
            p + "mlp.down_proj.weight": rand(hidden, inter, std=0.2),
        }
        if sdar:
            tensors[p + "self_attn.q_norm.weight"] = rand(head, std=0.1, mean=1)
            tensors[p + "self_attn.k_norm.weight"] = rand(head, std=0.1, mean=1)
        else:
            for name, width in (("q", q_width), ("k", kv_width), ("v", kv_width)):
                tensors[p + f"self_attn.{name}_proj.bias"] = rand(width, std=0.1)
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = rand(VOCAB, hidden, std=0.5)
    return tensors


def write_checkpoint(folder: Path, config: dict, tensors: dict, dtype=torch.bfloat16) -> Path:
    """config.json, two safetensors shards and their index, as the published repositories lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    names = sorted(tensors)
    weight_map = {}
    for n, keys in enumerate((names[::2], names[1::2]), start=1):
        file = f"model-0000{n}-of-00002.safetensors"
        save_file({k: tensors[k].to(dtype).contiguous() for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map |= {k: file for k in keys}
    index = {"metadata": {"total_size": sum(t.numel() * 2 for t in tensors.values())}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


FAMILIES = {
    "sdar": (sdar_config, SDARForCausalLM),
    "fast_dllm": (fast_dllm_config, Fast_dLLM_QwenForCausalLM),
}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture
def checkpoint(family, tmp_path):
    """A float32 checkpoint in the family's published format: (folder, config dict, tensors)."""
    config = FAMILIES[family][0]()
    tensors = make_tensors(config)
    return write_checkpoint(tmp_path / family, config, tensors, dtype=torch.float32), config, tensors


def load(folder, cls=AutoModelForCausalLM, dtype=torch.float32, **kwargs):
    return cls.from_pretrained(folder, dtype=dtype, **kwargs).eval()


# --------------------------------------------------------------------------------------------------------------------
# The reference: float64, an explicit block-causal mask, from the architecture description
# --------------------------------------------------------------------------------------------------------------------


def _rms(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, positions, theta):
    dim = x.shape[-1]
    angle = positions.double()[:, None, :, None] * theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    a, b = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], dim=-1)


def reference_logits(config: dict, tensors: dict, ids, positions=None, key_mask=None) -> torch.Tensor:
    """Logits under "query i sees key j iff block(j) <= block(i)" (blocks of positions from 0), keys hidden by
    `key_mask`, each query seeing at least itself."""
    t = {k: v.double() for k, v in tensors.items()}
    batch, seq = ids.shape
    positions = torch.arange(seq).expand(batch, seq) if positions is None else positions
    key_mask = torch.ones(batch, seq, dtype=torch.bool) if key_mask is None else key_mask.bool()
    block = config.get("block_size") or config.get("bd_size")
    allowed = (positions[:, None, :] // block <= positions[:, :, None] // block) & key_mask[:, None, :]
    allowed = (allowed | torch.eye(seq, dtype=torch.bool))[:, None]
    heads, kv_heads, head = config["num_attention_heads"], config["num_key_value_heads"], _head_dim(config)
    eps = config["rms_norm_eps"]
    sdar = config["model_type"] == "sdar"

    def proj(x, name, i, n):
        w = t[f"model.layers.{i}.self_attn.{name}_proj.weight"]
        y = x @ w.T + t.get(f"model.layers.{i}.self_attn.{name}_proj.bias", 0)
        return y.view(batch, seq, n, head).transpose(1, 2)

    x = t["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, t[p + "input_layernorm.weight"], eps)
        q, k, v = proj(h, "q", i, heads), proj(h, "k", i, kv_heads), proj(h, "v", i, kv_heads)
        if sdar:
            q, k = _rms(q, t[p + "self_attn.q_norm.weight"], eps), _rms(k, t[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, positions, config["rope_theta"]), _rope(k, positions, config["rope_theta"])
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = (q @ k.transpose(-1, -2) / head**0.5).masked_fill(~allowed, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, heads * head)
        x = x + out @ t[p + "self_attn.o_proj.weight"].T
        h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ t[p + "mlp.gate_proj.weight"].T, h @ t[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ t[p + "mlp.down_proj.weight"].T
    x = _rms(x, t["model.norm.weight"], eps)
    return x @ t.get("lm_head.weight", t["model.embed_tokens.weight"]).T


def random_ids(batch: int, seq: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, MASK, (batch, seq), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_auto_classes_load_the_published_format_by_its_own_names(family, tied, tmp_path):
    config = FAMILIES[family][0](tie_word_embeddings=tied)
    tensors = make_tensors(config)
    folder = write_checkpoint(tmp_path / "ckpt", config, tensors)  # bf16, sharded, as published
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert type(model) is FAMILIES[family][1]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert set(state) - set(tensors) == ({"lm_head.weight"} if tied else set())  # the tied head is the embedding
    assert all(torch.equal(state[k], tensors[k].to(torch.bfloat16).float()) for k in tensors)
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert type(AutoModel.from_pretrained(folder)) is FAMILIES[family][1]
    assert type(AutoConfig.from_pretrained(folder)) is FAMILIES[family][1].config_class
    assert model.config._attn_implementation == "sdpa"  # the published flex_attention is not honoured on CPU


def test_config_exposes_block_size_logits_shift_and_mask_token(checkpoint, family):
    folder, config, _ = checkpoint
    loaded = AutoConfig.from_pretrained(folder)
    assert loaded.block_size == 4 and loaded.logits_shift is (family == "fast_dllm")
    assert loaded.mask_token_id == (MASK if family == "sdar" else None)  # the Fast-dLLM config names none
    if family == "fast_dllm":
        loaded.block_size = 8  # one name for every block-diffusion model, the published field underneath
        assert loaded.bd_size == 8 and "block_size" not in loaded.to_dict()


def test_loads_by_repo_id_from_a_hub_cache(checkpoint, family, tmp_path, monkeypatch):
    folder = checkpoint[0]
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id = {"sdar": "JetLM/SDAR-tiny-test", "fast_dllm": "Efficient-Large-Model/Fast_dLLM-tiny-test"}[family]
    add_to_hub_cache(folder, repo_id, cache_dir=cache)
    model = load(repo_id, cache_dir=cache)
    assert type(model) is FAMILIES[family][1]
    ids = random_ids(1, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, load(folder)(ids).logits, atol=0, rtol=0)


def test_import_registers_the_classes_in_a_fresh_process(tmp_path):
    folders = {}
    for name, (config_fn, _) in FAMILIES.items():
        config = config_fn()
        folders[name] = str(write_checkpoint(tmp_path / name, config, make_tensors(config)))
    script = textwrap.dedent(
        f"""
        import entrgi_pipelines
        from transformers import AutoModel, AutoModelForCausalLM
        for folder in {list(folders.values())!r}:
            for auto in (AutoModel, AutoModelForCausalLM):
                print(type(auto.from_pretrained(folder)).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["SDARForCausalLM"] * 2 + ["Fast_dLLM_QwenForCausalLM"] * 2


def test_use_repository_code_lifts_the_registration_for_the_block_models(checkpoint, family):
    folder = checkpoint[0]
    with use_repository_code():
        with pytest.raises(ValueError):  # no class for the model type, and no repository code in the folder
            AutoConfig.from_pretrained(folder)
    assert type(AutoConfig.from_pretrained(folder)) is FAMILIES[family][1].config_class  # registered again


def test_save_pretrained_writes_the_published_names_back(checkpoint, family, tmp_path):
    folder, config, tensors = checkpoint
    model = load(folder)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == config["model_type"] and "auto_map" not in saved
    assert saved.get("block_size", saved.get("bd_size")) == 4
    # RoPE as published (transformers 4 reads only these; transformers 5 adds `rope_parameters`)
    assert saved["rope_theta"] == config["rope_theta"] and saved["rope_scaling"] is None
    again = load(tmp_path / "saved")
    assert sorted(again.state_dict()) == sorted(model.state_dict())
    ids = random_ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# The uncached forward: block-causal from position 0
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [4, 11])
def test_uncached_forward_matches_the_block_causal_reference(checkpoint, seq):
    folder, config, tensors = checkpoint
    model = load(folder)
    ids = random_ids(2, seq)
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, seq, VOCAB) and logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), reference_logits(config, tensors, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("base", ["qwen3", "llama"])
def test_blocks_of_one_token_are_transformers_autoregressive_base_model(base):
    """With `block_size=1` the block-causal mask is the causal mask: SDAR is then Qwen3ForCausalLM, and a Llama
    (SmolLM2's geometry: 9 query and 3 key/value heads, eps 1e-5, tied) stored as Fast-dLLM with zero q/k/v biases is
    LlamaForCausalLM, logit for logit."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2, rope_theta=100000.0)
    torch.manual_seed(0)
    if base == "qwen3":
        shape |= dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        reference = Qwen3ForCausalLM(Qwen3Config(**shape)).eval()
        native = SDARForCausalLM(SDARConfig(block_size=1, **shape)).eval()
        state = reference.state_dict()
    else:
        shape |= dict(hidden_size=36, num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5)
        reference = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **shape)).eval()
        native = Fast_dLLM_QwenForCausalLM(Fast_dLLM_QwenConfig(bd_size=1, tie_word_embeddings=True, **shape)).eval()
        state = dict(reference.state_dict())
        for name, param in native.state_dict().items():
            if name.endswith("_proj.bias"):
                state[name] = torch.zeros_like(param)
    assert not native.load_state_dict(state, strict=False).missing_keys
    ids = random_ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, reference(ids).logits, atol=1e-5, rtol=0)


def test_the_mask_is_block_causal_not_causal_nor_bidirectional(checkpoint):
    """A token changes the logits of every position of its own block and of later blocks, never of earlier ones."""
    model = load(checkpoint[0])
    ids = random_ids(1, 12)
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % MASK  # position 5: block 1 of 3
    with torch.no_grad():
        diff = (model(ids).logits - model(changed).logits).abs().amax(-1)[0]
    assert torch.all(diff[:4] == 0)  # block 0 does not see block 1
    assert torch.all(diff[4:] > 1e-4)  # positions 4 and 5 (before and at the change, same block) and all later ones


def test_position_ids_align_the_blocks_of_left_padded_rows(checkpoint):
    folder, config, tensors = checkpoint
    model = load(folder)
    ids = random_ids(1, 7)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.tensor([[0, 0, 0] + [1] * 7])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(ids).logits
        logits = model(padded, attention_mask=mask, position_ids=positions).logits
    assert torch.isfinite(logits).all()  # padded queries see only themselves: no NaN
    torch.testing.assert_close(logits[:, 3:], alone, atol=1e-5, rtol=0)
    reference = reference_logits(config, tensors, padded, positions, mask)
    torch.testing.assert_close(logits[:, 3:].double(), reference[:, 3:], atol=1e-4, rtol=0)


def test_eager_attention_on_request_gives_the_sdpa_logits(checkpoint):
    folder = checkpoint[0]
    sdpa, eager = load(folder), load(folder, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    ids = random_ids(2, 10)
    mask = torch.tensor([[1] * 10, [0, 0] + [1] * 8])
    with torch.no_grad():
        a, b = sdpa(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # float32 summation order; logits of a few units


@pytest.mark.parametrize("implementation", ["flex_attention", "flash_attention_2"])
def test_kernels_that_need_a_block_mask_object_or_flash_attn_are_refused_on_request(checkpoint, implementation):
    with pytest.raises((ValueError, ImportError)):
        load(checkpoint[0], attn_implementation=implementation)


def test_inputs_embeds_are_differentiable_through_the_cache(checkpoint):
    model = load(checkpoint[0])
    ids = random_ids(1, 12)
    cache = BlockKVCache()
    with torch.no_grad():
        model(ids[:, :8], past_key_values=cache, store_kv=True)
    embeds = model.get_input_embeddings()(ids[:, 8:]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=torch.arange(8, 12)[None], past_key_values=cache).logits
    logits.logsumexp(-1).sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert not any(k.requires_grad for k in cache.key_cache + cache.value_cache)


def test_bf16_forward_runs_with_and_without_the_cache(checkpoint, family, tmp_path):
    _, config, tensors = checkpoint
    folder = write_checkpoint(tmp_path / "bf16", config, tensors, dtype=torch.bfloat16)
    model = load(folder, dtype=torch.bfloat16)
    reference = load(folder, dtype=torch.float32)
    ids = random_ids(2, 12)
    cache = BlockKVCache()
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :8], past_key_values=cache, store_kv=True)
        block = model(ids[:, 8:], position_ids=torch.arange(8, 12).expand(2, 4), past_key_values=cache).logits
        exact = reference(ids).logits
    assert full.dtype == torch.bfloat16 and torch.isfinite(full).all() and cache.key_cache[0].dtype == torch.bfloat16
    scale = exact.abs().max()
    assert (full.float() - exact).abs().max() < 0.05 * scale
    assert (block.float() - exact[:, 8:]).abs().max() < 0.05 * scale


# --------------------------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------------------------


def _snapshot(cache: BlockKVCache):
    return [t.clone() for t in cache.key_cache + cache.value_cache], cache.lengths.clone(), cache.written.clone()


@pytest.mark.parametrize("max_length", [None, 40])
def test_cached_block_decoding_gives_the_uncached_logits(checkpoint, family, max_length):
    """Prefill the prompt's whole blocks, then per block: read (twice, the cache unchanged), fill the block, commit;
    each read equals the uncached forward over the sequence so far. A shifted model re-runs its last committed token."""
    model = load(checkpoint[0])
    block, prompt, total = 4, 6, 18
    ids = random_ids(2, total)
    shift = model.config.logits_shift
    cache = BlockKVCache(max_length=max_length)
    positions = torch.arange(total).expand(2, total)
    start = prompt // block * block  # the prompt's tail is part of the first decoded block
    with torch.no_grad():
        model(ids[:, :start], position_ids=positions[:, :start], past_key_values=cache, store_kv=True)
        assert cache.lengths.tolist() == [start, start]
        while start < total:
            end = min(start + block, total)
            first = start - 1 if shift else start
            x = ids[:, :end].clone()
            x[:, max(prompt, start) : end] = MASK  # the block being decoded
            before = _snapshot(cache)
            for _ in range(2):
                logits = model(
                    x[:, first:end], position_ids=positions[:, first:end], past_key_values=cache, store_kv=False
                ).logits
                after = _snapshot(cache)
                assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
                assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
            full = model(x).logits
            torch.testing.assert_close(logits, full[:, first:end], atol=1e-5, rtol=0)
            model(ids[:, start:end], position_ids=positions[:, start:end], past_key_values=cache, store_kv=True)
            assert cache.lengths.tolist() == [end, end]
            start = end
    assert cache.num_slots == (max_length or total)


def test_rows_at_different_lengths_get_what_they_get_alone(checkpoint):
    """Two rows with prompts of 5 and 9 tokens share one cache: each row's block sits at its own positions."""
    model = load(checkpoint[0])
    lengths = [5, 9]
    rows = [random_ids(1, n + 4, seed=n)[0] for n in lengths]
    width = max(lengths)
    prompts = torch.zeros(2, width, dtype=torch.long)
    valid = torch.zeros(2, width, dtype=torch.long)
    for r, n in enumerate(lengths):
        prompts[r, :n], valid[r, :n] = rows[r][:n], 1
    cache = BlockKVCache()
    with torch.no_grad():
        # commit each row's whole blocks (4 and 8 tokens); the rest is hidden and not written
        commit = valid * (torch.arange(width) < torch.tensor([4, 8])[:, None])
        model(prompts, attention_mask=commit, position_ids=torch.arange(width).expand(2, -1), past_key_values=cache,
              store_kv=True)  # fmt: skip
        assert cache.lengths.tolist() == [4, 8]
        positions = cache.lengths[:, None] + torch.arange(4)
        current = torch.stack([rows[r][positions[r]] for r in range(2)])
        logits = model(current, position_ids=positions, past_key_values=cache).logits
        for r in range(2):
            alone = model(rows[r][None, : positions[r, -1] + 1]).logits[0, -4:]
            torch.testing.assert_close(logits[r], alone, atol=1e-5, rtol=0)

        # commit the blocks; only row 1 goes on (select_rows), and still gets what it gets alone
        model(current, position_ids=positions, past_key_values=cache, store_kv=True)
        assert cache.lengths.tolist() == [8, 12]
        cache.select_rows(torch.tensor([1]))
        assert cache.lengths.tolist() == [12] and cache.key_cache[0].shape[0] == 1
        tail = torch.full((1, 1), MASK)
        logits = model(tail, position_ids=torch.tensor([[12]]), past_key_values=cache).logits
        expected = model(torch.cat([rows[1][None, :12], tail], dim=1)).logits[:, -1:]
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_padded_inputs_are_neither_seen_nor_written(checkpoint):
    model = load(checkpoint[0])
    ids = random_ids(2, 8)
    cache = BlockKVCache()
    mask = torch.tensor([[1] * 8, [1] * 4 + [0] * 4])
    with torch.no_grad():
        model(ids, attention_mask=mask, position_ids=torch.arange(8).expand(2, -1), past_key_values=cache,
              store_kv=True)  # fmt: skip
        assert cache.lengths.tolist() == [8, 4]
        assert cache.written[:, :8].tolist() == [[True] * 8, [True] * 4 + [False] * 4]
        assert not cache.written[:, -1].any()  # the scratch slot of the padded writes is never visible
        row1 = model(ids[1:, 4:8], position_ids=torch.arange(4, 8)[None], past_key_values=BlockKVCache()).logits
        fresh = BlockKVCache()
        model(ids[1:, :4], past_key_values=fresh, store_kv=True)
        expected = model(ids[1:, 4:8], position_ids=torch.arange(4, 8)[None], past_key_values=fresh).logits
        got = model(ids[:, 4:8], position_ids=torch.arange(4, 8).expand(2, -1), past_key_values=cache).logits
    torch.testing.assert_close(got[1:], expected, atol=1e-5, rtol=0)
    assert (row1 - expected).abs().max() > 1e-3  # the cached prefix matters: the comparison can fail

    # a row with no valid input at all (a finished row kept in the batch): finite logits, nothing written
    with torch.no_grad():
        logits = model(
            ids[:, 4:8],
            attention_mask=torch.tensor([[1] * 4, [0] * 4]),
            position_ids=torch.arange(8, 12).expand(2, -1),
            past_key_values=cache,
            store_kv=True,
        ).logits
    assert torch.isfinite(logits).all()
    assert cache.lengths.tolist() == [12, 4] and cache.written[1].tolist() == [True] * 4 + [False] * 9


def test_dynamic_cache_as_the_sdar_reference_uses_it(checkpoint):
    """`DynamicCache`: prefill with `store_kv=True`, read with `store_kv=False` (cropped back), commit."""
    model = load(checkpoint[0])
    ids = random_ids(1, 12)
    cache = DynamicCache()
    with torch.no_grad():
        full = model(ids).logits
        model(ids[:, :8], past_key_values=cache, use_cache=True, store_kv=True)
        read = model(ids[:, 8:], past_key_values=cache, use_cache=True, store_kv=False).logits
        assert cache.get_seq_length() == 8
        # the reference's own inputs: a float pairwise mask over cached + current tokens, and the position ids
        blocks = torch.tril(torch.ones(3, 3)).repeat_interleave(4, 0).repeat_interleave(4, 1)[None, None]
        explicit = model(
            ids[:, 8:],
            attention_mask=blocks[:, :, 8:12, :12],
            position_ids=torch.arange(8, 12)[None],
            past_key_values=cache,
            store_kv=False,
        ).logits
        model(ids[:, 8:], past_key_values=cache, use_cache=True, store_kv=True)
        assert cache.get_seq_length() == 12
    torch.testing.assert_close(read, full[:, 8:], atol=1e-5, rtol=0)
    torch.testing.assert_close(explicit, read, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------------------------


def test_a_config_without_block_size_loads_but_refuses_to_run_until_it_is_set(tmp_path):
    config = sdar_config()
    del config["block_size"]
    folder = write_checkpoint(tmp_path / "noblock", config, make_tensors(config))
    model = load(folder)
    ids = random_ids(1, 6)
    with pytest.raises(ValueError, match=r"config\.block_size.*model\.config\.block_size = 4"):
        model(ids)
    model.config.block_size = 4
    assert torch.isfinite(model(ids).logits).all()
    assert load(folder, block_size=4).config.block_size == 4  # or given to from_pretrained


def test_bad_settings_are_refused_with_the_argument_named(checkpoint):
    model = load(checkpoint[0])
    ids = random_ids(2, 4)
    with pytest.raises(ValueError, match="use_sliding_window"):
        SDARConfig(use_sliding_window=True, sliding_window=8, block_size=4)
    with pytest.raises(ValueError, match="use_sliding_window"):
        Fast_dLLM_QwenConfig(use_sliding_window=True, sliding_window=8)
    with pytest.raises(TypeError, match="past_key_values"):
        model(ids, past_key_values=object())
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.arange(3)[None])
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match="max_length"):
        BlockKVCache(max_length=0)
    with torch.no_grad(), pytest.raises(ValueError, match="max_length"):
        model(ids, past_key_values=BlockKVCache(max_length=3), store_kv=True)
    cache = BlockKVCache()
    with torch.no_grad():
        model(ids, past_key_values=cache, store_kv=True)
        with pytest.raises(ValueError, match="select_rows"):
            model(ids[:1], past_key_values=cache)
