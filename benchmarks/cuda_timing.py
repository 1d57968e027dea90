"""Times one denoising step on CUDA (bf16 models, float32 logit ascent), guided vs unguided, as ratios in one run.

Models are random, Dream/LLaDA-sized in vocabulary (152k) but small in depth, so the vocabulary-wide work that
guidance adds (softmax, entropy, top-p, sampling, soft embeddings over V) dominates as it does at full scale.
"""

import json
import time

import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.testing import tiny_wordpiece_tokenizer


def main():
    assert torch.cuda.is_available(), "needs CUDA"
    torch.manual_seed(0)
    tokenizer = tiny_wordpiece_tokenizer()
    vocab = 152_064  # Dream's vocabulary size: token ids above the tokenizer's are simply never prompted
    config = dict(
        vocab_size=vocab,
        hidden_size=1024,
        num_hidden_layers=4,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
    )
    dllm = BertForMaskedLM(BertConfig(**config)).to("cuda", torch.bfloat16).eval()
    rm = BertForSequenceClassification(BertConfig(num_labels=1, **config)).to("cuda", torch.bfloat16).eval()
    pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    pipe.set_progress_bar_config(disable=True)
    prompts = ["the cat sat on the", "a man walked to the sea", "why", "the king said"]
    results = {}
    for guidance in ("none", "expectation", "aps", "entrgi"):
        kwargs = dict(
            reward_model=rm,
            guidance=guidance,
            gen_length=128,
            num_inference_steps=16,
            num_samples_per_prompt=4,
            generator=torch.Generator("cuda").manual_seed(0),
        )
        pipe(prompts, **{**kwargs, "num_inference_steps": 2})  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        pipe(prompts, **kwargs)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / 16
        results[guidance] = {"seconds_per_step": seconds, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    for r in results.values():
        r["time_vs_unguided"] = r["seconds_per_step"] / results["none"]["seconds_per_step"]
    print(
        json.dumps(
            {"device": torch.cuda.get_device_name(), "B*K": 16, "L": 128, "V": vocab, "M": 3, "results": results},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
