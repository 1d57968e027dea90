"""The embedded offline stack: a small trained diffusion LM and two MiniLM reward models, loaded without a hub.

- the diffusion LM: a BERT masked LM initialised from all-MiniLM-L6-v2 and trained with the MDLM objective, shipped
  as a float16 delta over MiniLM's weights: v1 on Debian's English text, v2 (the default) continued from v1 on
  SmolLM2-135M-Instruct's answers to requests (`distill.py`) with some of that text (see `train_dllm.py`);
- the guidance reward: cosine similarity of MiniLM sentence embeddings of a target description and the response;
- the held-out judge: a topic classifier head on MiniLM embeddings, never used for guidance;
- the LM-judge reward (`load_lm_judge_reward`): SmolLM2-135M-Instruct's log-probability of the target description
  after the response (a decoder reward with a chat template and another tokenizer, see `lm_reward.py`);
- held-out SmolLM2 judges on discrete text (`load_smollm_judges`, see `judges.py`): the perplexity of a response
  given its prompt, and an LM topic judge (the probability of the target among the topic descriptions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pipelines.entrgi import EntRGiPipeline
from ..schedulers import MaskedDiffusionScheduler
from .judges import SmolLMJudges, held_out_judge, load_smollm_judges
from .lm_reward import LM_JUDGE_TEMPLATE, load_lm_judge_reward


@dataclass
class EmbeddedStack:
    """The pipeline on the embedded dLLM, the guidance reward and the judge, with their tokenizers."""

    pipe: EntRGiPipeline
    reward_model: Any
    reward_tokenizer: Any
    judge: Any
    judge_tokenizer: Any


def load_embedded_stack(cache_dir: str | None = None, dllm_version: str | None = None) -> EmbeddedStack:
    """Loads (building on first use, offline) the embedded dLLM pipeline, the similarity reward and the judge.

    `dllm_version` chooses the embedded diffusion LM (`"v1"` or `"v2"`; default: the newest shipped).
    """
    from pathlib import Path

    from .dllm import load_embedded_dllm
    from .reward_models import load_similarity_reward_model, load_topic_judge

    sub = (lambda name: Path(cache_dir) / name) if cache_dir else (lambda name: None)
    model, tokenizer = load_embedded_dllm(sub("dllm"), version=dllm_version)
    reward_model, reward_tokenizer = load_similarity_reward_model(sub("similarity"))
    judge, judge_tokenizer = load_topic_judge(sub("judge"))
    pipe = EntRGiPipeline(model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    return EmbeddedStack(pipe, reward_model, reward_tokenizer, judge, judge_tokenizer)


__all__ = [
    "LM_JUDGE_TEMPLATE",
    "EmbeddedStack",
    "SmolLMJudges",
    "held_out_judge",
    "load_embedded_stack",
    "load_lm_judge_reward",
    "load_smollm_judges",
]
