"""EntRGi on the embedded offline stack, with the pipeline API directly.

    HF_HUB_OFFLINE=1 python examples/guide_toward_target.py

Samples two prompts with and without guidance toward a target description, and prints the best sample of each
with its reward (MiniLM similarity to the target) and the held-out judge's score.
"""

import torch

from entrgi_pipelines.runs import judge_scores
from entrgi_pipelines.stack import load_embedded_stack

stack = load_embedded_stack()
prompts = ["there was a", "my friend told me"]
targets = ["food and eating", "sports and games"]
for guidance in ("none", "entrgi"):
    out = stack.pipe(
        prompts,
        reward_model=stack.reward_model,
        reward_tokenizer=stack.reward_tokenizer,
        reward_prompt=targets,  # the target description fills the reward model's prompt slot
        guidance=guidance,
        num_inference_steps=32,
        gen_length=32,
        num_samples_per_prompt=4,
        generator=torch.Generator().manual_seed(0),
    )
    judged = judge_scores(stack.judge, stack.judge_tokenizer, targets, out.texts)
    for prompt, target, text, rewards, score in zip(prompts, targets, out.texts, out.rewards, judged):
        print(f"[{guidance:>6}] {prompt!r} -> {target!r}: reward {rewards.max():+.3f}, judge {score:.2f}\n    {text}")
