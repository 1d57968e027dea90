"""Mean reward of each guidance method over unguided sampling, with the tiny random models of the test suite.

    PYTHONPATH=src python benchmarks/tiny_guidance_check.py

The reward model is a random BERT classifier initialised 4x larger (at the default initialisation it is nearly
flat). Same prompts and seeds for every method; K=4, L=8, T=8, M=3, eta=0.5, tau=0.7, top_p=0.95.
"""

import json

import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model, tiny_wordpiece_tokenizer

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea", "why"]


def main(seeds=range(8)):
    tokenizer = tiny_wordpiece_tokenizer()
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    reward_model = tiny_reward_model(len(tokenizer))
    means = {}
    for guidance in ("none", "expectation", "aps", "entrgi"):
        rewards = [
            pipe(
                PROMPTS,
                reward_model=reward_model,
                guidance=guidance,
                gen_length=8,
                num_inference_steps=8,
                num_samples_per_prompt=4,
                generator=torch.Generator().manual_seed(s),
            ).rewards
            for s in seeds
        ]
        means[guidance] = torch.stack(rewards)
    base = means["none"].mean()
    report = {
        g: {
            "mean_reward": round(float(r.mean()), 5),
            "gain_over_unguided": round(float(r.mean() - base), 5),
            "seeds_better": int((r.mean((1, 2)) > means["none"].mean((1, 2))).sum()),
        }
        for g, r in means.items()
    }
    print(json.dumps({"seeds": len(list(seeds)), "results": report}, indent=1))


if __name__ == "__main__":
    main()
