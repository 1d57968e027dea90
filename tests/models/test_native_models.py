"""Native Dream and LLaDA: published-format checkpoints load by their own names, without remote code, and match a
reference forward pass; padding, dtypes, saving, the Hub cache and guided generation through the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, Qwen2TokenizerFast

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM, use_repository_code
from entrgi_pipelines.pipelines.entrgi.pipeline_entrgi import detect_logits_shift
from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache
from entrgi_pipelines.testing import BPE_CHAT_TEMPLATE, tiny_bpe_tokenizer, tiny_reward_model

from . import official

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["the cat sat", "a man and a woman walked to the old city by the sea"]


@dataclass(frozen=True)
class Family:
    name: str
    native: type
    config: Callable[..., dict]
    tensors: Callable[..., dict]
    reference: Callable[..., torch.Tensor]
    repo_id: str
    shift: bool


FAMILIES = {
    "dream": Family(
        name="dream",
        native=DreamModel,
        config=official.dream_config,
        tensors=official.dream_tensors,
        reference=official.reference_dream_logits,
        repo_id="Dream-org/Dream-tiny-test",
        shift=True,
    ),
    "llada": Family(
        name="llada",
        native=LLaDAModelLM,
        config=official.llada_config,
        tensors=official.llada_tensors,
        reference=official.reference_llada_logits,
        repo_id="GSAI-ML/LLaDA-tiny-test",
        shift=False,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture
def checkpoint(family, chat_tokenizer, tmp_path):
    """A published-format checkpoint folder of the family, its config dict and its tensors."""
    config = family.config(len(chat_tokenizer), chat_tokenizer.mask_token_id, chat_tokenizer.pad_token_id)
    tensors = family.tensors(config)
    folder = official.write_checkpoint(tmp_path / family.name, config, tensors)
    return folder, config, tensors


def load(folder, dtype=torch.float32, cls=AutoModel, **kwargs):
    return cls.from_pretrained(folder, dtype=dtype, **kwargs).eval()


def left_padded(tokenizer, prompts, extra_masks: int = 3):
    """The pipeline's layout: left-padded prompt ids followed by mask tokens, and the padding mask."""
    rows = [ids + [tokenizer.mask_token_id] * extra_masks for ids in tokenizer(prompts)["input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, rows


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline, for this process (huggingface_hub's constants) and its subprocesses (env)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --------------------------------------------------------------------------------------------------------------------
# Loading the published format
# --------------------------------------------------------------------------------------------------------------------


def test_auto_model_loads_the_published_names_and_matches_the_reference(family, checkpoint, chat_tokenizer):
    folder, config, tensors = checkpoint
    model, info = AutoModel.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert type(model) is family.native
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert sorted(state) == sorted(tensors)  # the checkpoint's names, no more, no fewer
    assert all(torch.equal(state[k], tensors[k].float()) for k in tensors)
    assert type(AutoModelForMaskedLM.from_pretrained(folder, dtype=torch.float32)) is family.native

    ids = torch.tensor(chat_tokenizer(PROMPTS[1:])["input_ids"])
    with torch.no_grad():
        logits = model.eval()(ids).logits
    expected = family.reference(config, tensors, ids)
    assert logits.shape == (1, ids.shape[1], config["vocab_size"]) and logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), expected, atol=1e-4, rtol=0)


def unscaled_rope_form(config: dict, form: str) -> dict:
    """`config` with its unscaled RoPE written another way: as transformers 5 saves the published config class
    (`rope_parameters` next to `rope_theta`, no `rope_scaling`), with `rope_parameters` only (the one `rope_theta`
    is there), or with a legacy `rope_scaling` of type "default"."""
    theta = config["rope_theta"]
    rest = {k: v for k, v in config.items() if k != "rope_scaling"}
    if form == "saved_by_transformers_5":
        return {
            **rest,
            "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
            "transformers_version": "5.25.0",
        }
    if form == "rope_parameters_only":
        rest.pop("rope_theta")
        return {**rest, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    return {**config, "rope_scaling": {"type": "default"}}


@pytest.mark.parametrize("form", ["saved_by_transformers_5", "rope_parameters_only", "legacy_rope_scaling"])
def test_unscaled_rope_parameters_load_with_the_logits_of_rope_theta(
    family, checkpoint, chat_tokenizer, tmp_path, form
):
    folder, config, tensors = checkpoint
    ids = torch.tensor(chat_tokenizer(PROMPTS[1:])["input_ids"])
    with torch.no_grad():
        expected = load(folder)(ids).logits
        variant = load(official.write_checkpoint(tmp_path / form, unscaled_rope_form(config, form), tensors))
        assert torch.equal(variant(ids).logits, expected)
        # the base matters at this length: the config fields' default one (10000) gives other logits
        default_base = {**config, "rope_theta": 10000.0}
        other = load(official.write_checkpoint(tmp_path / "default_base", default_base, tensors))(ids).logits
    assert not torch.allclose(other, expected, atol=1e-3)
    variant.save_pretrained(tmp_path / "saved")  # and it saves in a form that loads the same
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "saved")(ids).logits, expected)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
        {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
    ],
    ids=["rope_scaling_linear", "rope_parameters_yarn", "rope_parameters_partial"],
)
def test_scaled_rope_is_refused_with_the_setting_named(family, checkpoint, tmp_path, rope):
    folder, config, _ = checkpoint
    rope = {name: {**value, "rope_theta": config["rope_theta"]} for name, value in rope.items()}
    (tmp_path / "scaled").mkdir()
    (tmp_path / "scaled" / "config.json").write_text(json.dumps({**config, **rope}))
    rope_type = next(iter(rope.values()))["rope_type"]
    with pytest.raises(ValueError, match=rf"RoPE scaling .*{rope_type}.* not supported by the native"):
        AutoModel.from_config(AutoConfig.from_pretrained(tmp_path / "scaled"))


def test_grouped_query_and_tied_variants_match_the_reference(family, chat_tokenizer, tmp_path):
    vocab, mask, pad = len(chat_tokenizer), chat_tokenizer.mask_token_id, chat_tokenizer.pad_token_id
    if family.name == "dream":
        config = family.config(vocab, mask, pad, num_key_value_heads=1, tie_word_embeddings=True)
    else:
        config = family.config(vocab, mask, pad, n_kv_heads=2, weight_tying=True)
    tensors = family.tensors(config, seed=3)
    model = load(official.write_checkpoint(tmp_path / "variant", config, tensors))
    ids = torch.tensor(chat_tokenizer(PROMPTS[:1])["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits.double(), family.reference(config, tensors, ids), atol=1e-4, rtol=0)


def test_import_of_the_package_registers_the_classes_in_a_fresh_process(family, checkpoint):
    folder = checkpoint[0]
    script = textwrap.dedent(
        f"""
        import entrgi_pipelines
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r})
        print(type(model).__module__, type(model).__name__)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [family.native.__module__, family.native.__name__]


def test_trust_remote_code_still_selects_the_repository_code(family, checkpoint):
    """With `trust_remote_code=True` transformers runs the files named in `auto_map`, not the native class."""
    folder, config, _ = checkpoint
    config_module, config_class = config["auto_map"]["AutoConfig"].split(".")
    model_module, model_class = config["auto_map"]["AutoModel"].split(".")
    (folder / f"{config_module}.py").write_text(
        "from transformers import PretrainedConfig\n\n\n"
        f"class {config_class}(PretrainedConfig):\n    model_type = {config['model_type']!r}\n"
    )
    (folder / f"{model_module}.py").write_text(
        "import torch\nfrom transformers import PreTrainedModel\n\n"
        f"from .{config_module} import {config_class}\n\n\n"
        f"class {model_class}(PreTrainedModel):\n"
        f"    config_class = {config_class}\n\n"
        "    def __init__(self, config):\n"
        "        super().__init__(config)\n"
        "        self.marker = torch.nn.Linear(1, 1)\n"
        "        self.post_init()\n"
    )
    with use_repository_code():
        remote = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(remote).__name__ == model_class and type(remote).__module__.startswith("transformers_modules")
    assert type(AutoModel.from_pretrained(folder)) is family.native  # the registration is back
    # Outside the block, transformers 4 still follows `trust_remote_code=True`; transformers 5 prefers the class
    # registered in this process (its rule for any explicitly registered class).
    plain = AutoModel.from_pretrained(folder, trust_remote_code=True)
    transformers_4 = int(transformers.__version__.split(".")[0]) < 5
    assert (type(plain).__module__.startswith("transformers_modules")) is transformers_4


def test_loads_by_repo_id_from_a_hub_cache_without_remote_code(family, checkpoint, hub_cache, chat_tokenizer):
    folder, config, tensors = checkpoint
    commit = add_to_hub_cache(folder, family.repo_id)
    # cache_dir as well: transformers 4 reads the cache location once, when it is imported
    model = load(family.repo_id, cache_dir=hub_cache)
    assert type(model) is family.native
    assert AutoConfig.from_pretrained(family.repo_id, cache_dir=hub_cache).model_type == config["model_type"]
    assert type(load(family.repo_id, revision=commit, cache_dir=hub_cache)) is family.native
    ids = torch.tensor(chat_tokenizer(PROMPTS[:1])["input_ids"])
    with torch.no_grad():
        logits = model(ids).logits
    torch.testing.assert_close(logits.double(), family.reference(config, tensors, ids), atol=1e-4, rtol=0)


def test_full_size_parameter_counts_match_the_published_checkpoints():
    """Dream-v0-7B and LLaDA-8B built from their published dimensions (on the meta device: no memory): the counts
    docs/models.md states, and for LLaDA-8B the index's total_size (16,031,162,368 bytes of bf16) / 2."""
    dream_dims = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28)
    dream = official.dream_config(152064, 151666, 151643, num_key_value_heads=4, **dream_dims)
    llada_dims = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288)
    llada = official.llada_config(126464, 126336, 126081, max_sequence_length=4096, **llada_dims)
    with torch.device("meta"):
        dream_model = DreamModel(DreamConfig(**dream))
        llada_model = LLaDAModelLM(LLaDAConfig(**llada))
    assert sum(p.numel() for p in dream_model.parameters()) == 7_615_616_512
    assert sum(p.numel() for p in llada_model.parameters()) == 8_015_581_184 == 16_031_162_368 // 2
    # by the published tensor names: the tiny helpers' names at the full depth
    tiny_llada = official.llada_tensors(official.llada_config(8, 7, 0, n_layers=32))
    tiny_dream = official.dream_tensors(official.dream_config(8, 7, 0, num_hidden_layers=28))
    assert sorted(llada_model.state_dict()) == sorted(tiny_llada)
    assert sorted(dream_model.state_dict()) == sorted(tiny_dream)


# --------------------------------------------------------------------------------------------------------------------
# Padding, gradients, dtypes
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ["2d", "pairwise"])
def test_left_padding_is_invisible_with_the_pipelines_inputs(family, checkpoint, chat_tokenizer, mask_kind):
    folder, config, tensors = checkpoint
    model = load(folder)
    ids, mask, rows = left_padded(chat_tokenizer, PROMPTS)
    pipe = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler())
    inputs = pipe.model_inputs(mask)  # what the pipeline passes: Dream gets the pairwise mask, LLaDA the 2D one
    assert inputs["attention_mask"].dim() == (4 if family.shift else 2)
    if mask_kind == "2d":
        inputs["attention_mask"] = mask
    else:
        valid = mask.bool()
        inputs["attention_mask"] = valid[:, None, :, None] & valid[:, None, None, :]
    with torch.no_grad():
        padded = model(ids, **inputs).logits
        assert padded.isfinite().all()
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row])).logits[0]
            torch.testing.assert_close(padded[i, -len(row) :], alone, atol=1e-5, rtol=0)
    # the reference agrees on the real positions
    expected = family.reference(config, tensors, ids, key_mask=mask, positions=inputs["position_ids"])
    real = mask.bool()
    torch.testing.assert_close(padded[real].double(), expected[real], atol=1e-4, rtol=0)


class HostReads(TorchDispatchMode):
    """Records the ops that would make the host wait for a device: reading a value back (`.item()`, `bool()` of a
    tensor: `_local_scalar_dense`) and outputs sized by values (`nonzero`, `masked_select`, boolean indexing)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        boolean_index = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func in (aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default):
            self.seen.append(str(func))
        elif boolean_index:
            self.seen.append("boolean indexing")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mask_kind", ["none", "2d_no_padding", "2d", "pairwise", "additive"])
def test_the_forward_pass_never_waits_for_the_device(family, checkpoint, chat_tokenizer, mask_kind):
    """No host sync per forward pass, whatever the mask (an all-True mask is not dropped by reading it back)."""
    model = load(checkpoint[0])
    ids, mask, _ = left_padded(chat_tokenizer, PROMPTS)
    valid = mask.bool()
    pairwise = valid[:, None, :, None] & valid[:, None, None, :]
    masks = {
        "none": None,
        "2d_no_padding": torch.ones_like(mask),
        "2d": mask,
        "pairwise": pairwise,
        "additive": torch.zeros(pairwise.shape).masked_fill(~pairwise, torch.finfo(torch.float32).min),
    }
    with torch.no_grad(), HostReads() as reads:
        logits = model(ids, attention_mask=masks[mask_kind]).logits
    assert reads.seen == []
    assert logits.shape[:2] == ids.shape


def test_logits_are_differentiable_to_inputs_embeds_and_padding_gets_no_gradient(family, checkpoint, chat_tokenizer):
    model = load(checkpoint[0])
    ids, mask, _ = left_padded(chat_tokenizer, PROMPTS)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    inputs = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler()).model_inputs(
        mask
    )
    logits = model(inputs_embeds=embeds, **inputs).logits
    logits[mask.bool()].logsumexp(-1).sum().backward()
    grad = embeds.grad
    assert grad.isfinite().all()
    assert (grad[mask.bool()].abs().sum(-1) > 0).all()  # every real position matters
    assert (grad[~mask.bool()] == 0).all()  # padded positions are invisible to the real ones
    with torch.no_grad():
        torch.testing.assert_close(logits, model(ids, **inputs).logits)  # embeddings in = ids in


def test_bf16_forward_on_cpu(family, checkpoint, chat_tokenizer):
    folder, config, tensors = checkpoint
    model = load(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(model.state_dict()[k], tensors[k]) for k in tensors)  # bf16 weights load bit for bit
    ids, mask, _ = left_padded(chat_tokenizer, PROMPTS)
    inputs = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler()).model_inputs(
        mask
    )
    with torch.no_grad():
        logits = model(ids, **inputs).logits
    assert logits.dtype == torch.bfloat16 and logits.isfinite().all()
    expected = family.reference(config, tensors, ids, key_mask=mask, positions=inputs["position_ids"])
    real = mask.bool()
    error = (logits[real].double() - expected[real]).abs().max() / expected[real].abs().max()
    assert error < 0.05, f"bf16 logits are {error:.3f} (relative to the largest) away from the float64 reference"


# --------------------------------------------------------------------------------------------------------------------
# Saving and the pipeline
# --------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip_keeps_the_published_format(family, checkpoint, chat_tokenizer, tmp_path):
    folder, config, tensors = checkpoint
    model = load(folder)
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["model_type"] == config["model_type"] and "auto_map" not in saved  # no repository code is saved
    assert {k: saved[k] for k in config if k not in ("auto_map", "torch_dtype", "transformers_version")} == {
        k: v for k, v in config.items() if k not in ("auto_map", "torch_dtype", "transformers_version")
    }  # every published field is written back as it was read
    names = set()
    for file in (tmp_path / "saved").glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            names |= set(f.keys())
    assert names == set(tensors)
    again = load(tmp_path / "saved")
    ids = torch.tensor(chat_tokenizer(PROMPTS)["input_ids"][:1])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_dreams_shift_is_detected_and_llada_has_none(family, checkpoint, chat_tokenizer):
    model = load(checkpoint[0])
    pipe = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler())
    assert detect_logits_shift(model.config) is family.shift and pipe.logits_shift is family.shift


@pytest.mark.parametrize("guidance", ["entrgi", "aps", "expectation", "none"])
def test_guided_generation_through_the_pipeline(family, checkpoint, chat_tokenizer, guidance):
    model = load(checkpoint[0])
    pipe = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    seen = []
    model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    reward_model = tiny_reward_model(len(chat_tokenizer))
    run = dict(reward_model=reward_model, guidance=guidance, gen_length=6, num_inference_steps=3)
    run |= dict(num_samples_per_prompt=2, guidance_steps=2)
    out = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **run)
    again = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **run)
    assert out.sequences.shape == (2, 2, 6) and (out.sequences != chat_tokenizer.mask_token_id).all()
    assert out.rewards.shape == (2, 2) and out.rewards.isfinite().all()
    assert torch.equal(out.sequences, again.sequences) and out.texts == again.texts
    # every denoising step ran the native forward with the padding mask and the positions
    assert len(seen) == 2 * 3 and all({"attention_mask", "position_ids"} <= set(kwargs) for kwargs in seen)


def test_pipeline_with_a_native_model_saves_and_loads(family, checkpoint, chat_tokenizer, tmp_path):
    model = load(checkpoint[0])
    pipe = EntRGiPipeline(model=model, tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = EntRGiPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.model) is family.native and loaded.logits_shift is family.shift
    state = loaded.model.state_dict()
    assert sorted(state) == sorted(model.state_dict())
    assert all(torch.equal(state[k].float(), v) for k, v in model.state_dict().items())
    run = dict(gen_length=5, num_inference_steps=3, num_samples_per_prompt=2)
    a = pipe(PROMPTS, generator=torch.Generator().manual_seed(1), **run)
    b = loaded.to(dtype=torch.float32)(PROMPTS, generator=torch.Generator().manual_seed(1), **run)
    assert torch.equal(a.sequences, b.sequences)


# --------------------------------------------------------------------------------------------------------------------
# What the native classes refuse
# --------------------------------------------------------------------------------------------------------------------


def test_unsupported_architectures_and_arguments_are_refused(family, checkpoint, chat_tokenizer, tmp_path):
    folder, config, _ = checkpoint
    if family.name == "dream":
        bad = {**config, "num_key_value_heads": 3}
        field = "num_key_value_heads"
    else:
        bad = {**config, "block_type": "sequential"}
        field = "block_type"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=field):
        AutoModel.from_config(AutoConfig.from_pretrained(tmp_path / "bad"))
    model = load(folder)
    ids = torch.tensor(chat_tokenizer(PROMPTS[:1])["input_ids"])
    with pytest.raises(ValueError, match="past_key_values"):
        model(ids, past_key_values=[(ids, ids)])
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(1, ids.shape[1] + 1))
    with pytest.raises(TypeError, match="no_such_argument"):
        model(ids, no_such_argument=1)
    assert model(ids, use_cache=False, output_attentions=False).logits.shape[1] == ids.shape[1]


def test_qwen2_tokenizer_reads_a_dream_tokenizer_folder_without_remote_code(tmp_path):
    """README loads Dream's tokenizer with transformers' Qwen2TokenizerFast: DreamTokenizer (remote code) is a
    byte-level BPE over `vocab.json` and `merges.txt`; its `tokenizer_config.json` names the remote class."""
    bpe = tiny_bpe_tokenizer()
    bpe.backend_tokenizer.model.save(str(tmp_path))  # vocab.json, merges.txt
    mask_id = bpe.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    special = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    config = {
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "added_tokens_decoder": {str(mask_id): {"content": "<|mask|>", **special}},
        "mask_token": "<|mask|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": BPE_CHAT_TEMPLATE,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Qwen2TokenizerFast.from_pretrained(tmp_path)
    assert tokenizer.mask_token_id == mask_id
    assert tokenizer("a lovely day")["input_ids"] == bpe("a lovely day")["input_ids"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
