"""The shipped dLLM v3 (issue 23): SmolLM2-135M-Instruct plus the shipped adapter, rebuilt as a Fast-dLLM v2 folder and
loaded as the native block-diffusion class, end to end (SmolLM2 is built once per machine, then cached)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.models import Fast_dLLM_QwenForCausalLM
from entrgi_pipelines.stack.dllm import DLLM_VERSIONS, default_dllm_version, embedded_dllm_path, load_embedded_dllm
from entrgi_pipelines.stack.train_block_dllm import MASK_ID, qwen2_from_folder

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def v3():
    model, tokenizer = load_embedded_dllm(version="v3")
    return model, tokenizer


def test_the_shipped_folder_is_small_and_loads_as_the_native_block_diffusion_class(v3):
    model, tokenizer = v3
    shipped = sum(p.stat().st_size for p in DLLM_VERSIONS["v3"].iterdir())
    assert shipped < 12e6  # an adapter, not the 270 MB base
    assert isinstance(model, Fast_dLLM_QwenForCausalLM)
    assert model.config.block_size == 4 and model.config.mask_token_id == MASK_ID
    assert tokenizer.convert_ids_to_tokens(MASK_ID) == "<empty_output>" and tokenizer.eos_token == "<|im_end|>"
    config = json.loads((embedded_dllm_path(version="v3") / "config.json").read_text())
    assert config["model_type"] == "Fast_dLLM_Qwen" and config["bd_size"] == 4


def test_a_block_of_one_token_is_the_folders_qwen2_causal_model(v3):
    model, tokenizer = v3
    ids = torch.tensor([tokenizer("The quiet Sunday afternoon was warm and still.")["input_ids"]])
    model.config.block_size = 1
    try:
        with torch.no_grad():
            ours = model(ids).logits[0]
    finally:
        model.config.block_size = 4
    qwen = qwen2_from_folder(embedded_dllm_path(version="v3"))
    with torch.no_grad():
        reference = qwen(ids).logits[0]
    keep = torch.arange(ours.shape[-1]) != MASK_ID
    torch.testing.assert_close(ours[:, keep], reference[:, keep], atol=1e-3, rtol=1e-4)


def test_a_greedy_answer_starts_with_readable_words(v3):
    model, tokenizer = v3
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "Describe a quiet Sunday afternoon.",
        gen_length=16,
        num_inference_steps=16,
        num_samples_per_prompt=1,
        temperature=0,
    )
    words = out.texts[0].split()[:4]
    assert len(words) == 4 and all(re.fullmatch(r"[A-Za-z][a-z]*[,.;:!']?", w) for w in words), out.texts[0]
    assert out.nfe > 0 and MASK_ID not in out.sequences.flatten().tolist()


def test_v3_is_chosen_by_name_until_it_is_the_default():
    assert "v3" in DLLM_VERSIONS and default_dllm_version() in DLLM_VERSIONS
