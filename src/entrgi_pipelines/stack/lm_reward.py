"""The LM-judge reward of the embedded stack: SmolLM2-135M-Instruct asked what the response is about.

The response goes inside the user turn of SmolLM2's chat template, and the reward is the mean log-probability of the
target description's tokens as the assistant's answer::

    <|im_start|>system ...<|im_end|>
    <|im_start|>user
    What is the following text about?
    Text: {response}<|im_end|>
    <|im_start|>assistant
    This text is about {target}              <- scored: mean log p(target tokens | everything before)

A decoder that never saw soft inputs, a chat template, another tokenizer than the dLLM's (byte-level BPE against the
dLLM's WordPiece, bridged by `VocabularyMap`): the kind of reward model the EntRGi paper is about.

The wording was measured (`studies/lm_judge_templates.py`: 20 held-out corpus passages, 2 per topic, cut to 20
words, x the 10 target descriptions of the bundled prompts). What guidance needs is that, for one target, on-topic
responses outscore off-topic ones: the probability of that (AUC, averaged over targets) is 0.82 for this wording,
0.79 with the text before the question, 0.80 for "The topic is {target}", and 0.49 (chance) for the yes/no question
"Is this text about {target}?" scored by log p(Yes) - log p(No). Across targets the raw likelihood favours a-priori
likely descriptions (the right one ranks first for 30% of passages; yes/no: 5%), which does not matter to guidance,
where the target is fixed per prompt.
"""

from __future__ import annotations

from pathlib import Path

from ..guidance.likelihood import CausalLMReward
from ..guidance.templates import RewardTemplate
from .smollm import load_smollm

LM_JUDGE_TEMPLATE = RewardTemplate(
    messages=[
        {"role": "user", "content": "What is the following text about?\nText: {response}"},
        {"role": "assistant", "content": "This text is about {target}"},
    ],
    score="target",
)
"""The LM-judge reward's conversation: the response inside the user turn, the target description scored as the
assistant's answer after "This text is about" (the wording measured best, see the module docstring)."""


def load_lm_judge_reward(cache_dir: str | Path | None = None, template: RewardTemplate = LM_JUDGE_TEMPLATE):
    """`(reward, tokenizer)` of the LM-judge reward: SmolLM2-135M-Instruct (float32, offline) in a [`CausalLMReward`].

    The reward carries its template (`reward.reward_template`), so `pipe(..., reward_model=reward,
    reward_tokenizer=tokenizer, reward_prompt=target)` places the response and the target as above; the prefix
    before the response is computed once per call (prefix cache).

    Args:
        cache_dir (`str` or `Path`, *optional*): the SmolLM2 `from_pretrained` folder, built there on first use
            (default `$ENTRGI_CACHE/smollm2-<hash>`).
        template ([`RewardTemplate`], defaults to `LM_JUDGE_TEMPLATE`): the conversation and the scored slot.

    Examples:
        ```py
        >>> import torch
        >>> from entrgi_pipelines.stack import load_embedded_stack, load_lm_judge_reward

        >>> stack = load_embedded_stack()
        >>> reward, reward_tokenizer = load_lm_judge_reward()
        >>> out = stack.pipe("there was a", reward_model=reward, reward_tokenizer=reward_tokenizer,
        ...                  reward_prompt="food and eating", num_inference_steps=4, gen_length=8,
        ...                  num_samples_per_prompt=2, guidance_steps=1, generator=torch.Generator().manual_seed(0))
        >>> out.rewards.shape  # mean log-probabilities of "food and eating" (nats, <= 0)
        torch.Size([1, 2])
        ```
    """
    model, tokenizer = load_smollm(cache_dir)
    return CausalLMReward(model, template).eval(), tokenizer
