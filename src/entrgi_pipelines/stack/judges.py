"""Held-out judges on SmolLM2-135M-Instruct, on discrete text only (never used for guidance).

Two judges read the decoded text of a response with SmolLM2's own tokenizer and chat template (whose default
system turn, "You are a helpful AI assistant named SmolLM, trained by Hugging Face", is part of every conversation):

- **Fluency**: the perplexity of the response given the prompt. The conversation is
  ``[user: prompt, assistant: response]``; the ids are those of the chat template up to and including the assistant
  header (``...<|im_start|>assistant\\n``) followed by ``tokenizer(response, add_special_tokens=False)``, so the
  response tokens are exactly the response's own tokenization, and no end-of-turn token is scored (the benchmark
  truncates responses at L tokens, so an end token would penalise truncation rather than disfluency). With
  ``r_1 .. r_n`` the response tokens and ``c`` everything before them::

      perplexity = exp( -(1/n) * sum_i log p(r_i | c, r_1 .. r_{i-1}) )

  and ``nan`` for an empty response (n = 0).
- **Topicality**: the probability of the target among candidate topic descriptions. For a text and each candidate
  description ``d`` the judge scores the conversation
  ``[user: "Read this text and name its topic.\\n\\n{text}", assistant: "The topic is {d}"]`` by the summed
  log-probability of ``d``'s tokens (the likelihood of the description, no end-of-turn token). SmolLM2-135M favours
  a few descriptions (e.g. "science and nature") whatever the text, so the likelihoods are *calibrated* by those
  under a content-free text (the empty string), and the judge returns the softmax over the candidates::

      P(d | text) = softmax_d( log p(d | text) - log p(d | "") )

  which sums to 1 over the candidates and is uniform for the empty text. Measured with
  `studies/judge_accuracy.py` (texts cut to 24 words, 10 candidates): calibration raises the share of texts
  whose own topic comes first from 0.10 to 0.49 on 383 held-out corpus passages (balanced over topics: 0.32 to
  0.45) and from 0.40 to 0.80 on 20 SmolLM2-written texts; the MiniLM topic classifier scores 0.81 (0.75) and 0.90.
  The guidance reward asks a different question (the mean log-probability of the target after "What is the
  following text about? ... This text is about"), so the judge is not the reward it checks.

Both judges run batched: padding with an attention mask, one forward per batch, no loop over tokens. The topic judge
encodes each text's conversation once and scores all candidates from its key-value cache.

The guidance reward never judges its own results: :func:`held_out_judge` names the topic judge that is held out for
a reward (the MiniLM topic classifier for the LM-judge reward, this LM judge for the similarity reward).

Example::

    >>> from entrgi_pipelines.stack.judges import load_smollm_judges
    >>> judges = load_smollm_judges()
    >>> ppl = judges.perplexity(["Tell me about bread."], ["Bread is baked from flour, water and yeast."])
    >>> probs = judges.topic_probabilities(["The striker scored twice and the team won the cup."])
    >>> judges.candidates[int(probs.argmax())]
    'sports and games'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

import torch
import torch.nn.functional as F

TOPIC_QUESTION = "Read this text and name its topic.\n\n{text}"
TOPIC_ANSWER = "The topic is"
# The text whose description likelihoods calibrate the topic judge's (its prior over the descriptions).
CONTENT_FREE_TEXT = ""
# Which topic judge is held out for each guidance reward: never the one that guided.
HELD_OUT_JUDGES = {"similarity": "lm", "lm-judge": "minilm"}


def held_out_judge(reward: str) -> str:
    """The topic judge held out for the guidance reward ``reward``: ``"minilm"`` or ``"lm"``.

    The LM-judge reward (SmolLM2) is judged by the MiniLM topic classifier; the similarity reward (MiniLM embeddings)
    by the SmolLM2 topic judge.

    Example::

        >>> held_out_judge("lm-judge"), held_out_judge("similarity")
        ('minilm', 'lm')
    """
    if reward not in HELD_OUT_JUDGES:
        raise ValueError(f"reward must be one of {sorted(HELD_OUT_JUDGES)}, got {reward!r}.")
    return HELD_OUT_JUDGES[reward]


def default_topic_descriptions() -> list[str]:
    """The benchmark's target descriptions (the distinct targets of the bundled prompts, in order of appearance)."""
    text = resources.files("entrgi_pipelines.stack").joinpath("data/prompts.jsonl").read_text()
    targets = [json.loads(line).get("target") for line in text.splitlines() if line.strip()]
    return list(dict.fromkeys(t for t in targets if t))


def _check_texts(name: str, values, allow_empty: bool = True) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a list of strings, got {type(values).__name__}.")
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"`{name}` must hold only strings.")
    if not allow_empty and not all(v.strip() for v in values):
        raise ValueError(f"`{name}` must not hold empty strings.")
    return list(values)


def _chat_prefix(tokenizer, user: str, assistant_start: str = "") -> str:
    """The chat template text up to the assistant's turn header, followed by ``assistant_start``."""
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + assistant_start


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of ragged id lists padded to the longest, on the left or the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # one copy per row to build the batch, not a loop over the model's work
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


@torch.no_grad()
def response_perplexity(
    model, tokenizer, prompts: list[str], responses: list[str], batch_size: int = 16
) -> torch.Tensor:
    """SmolLM2 perplexity of each response given its prompt (see the module docstring for the exact definition).

    Args:
        model: A causal LM (``load_smollm()[0]``).
        tokenizer: Its tokenizer, with a chat template.
        prompts: One user prompt per response.
        responses: The responses (decoded text); an empty one gets ``nan``.
        batch_size: Conversations per forward pass (right-padded; padding never reaches a real token).

    Returns:
        ``torch.Tensor`` of shape ``(len(responses),)``, float32.
    """
    prompts, responses = _check_texts("prompts", prompts), _check_texts("responses", responses)
    if len(prompts) != len(responses):
        raise ValueError(f"`prompts` ({len(prompts)}) and `responses` ({len(responses)}) must have the same length.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    device = model.device
    prefixes = tokenizer([_chat_prefix(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    answers = tokenizer(responses, add_special_tokens=False)["input_ids"]
    out = torch.full((len(responses),), float("nan"))
    for start in range(0, len(responses), batch_size):
        rows = range(start, min(start + batch_size, len(responses)))
        ids, mask = _pad([prefixes[i] + answers[i] for i in rows], tokenizer.pad_token_id or 0, left=False)
        # Labels: the response tokens only; -100 (ignored) for the prompt's conversation and the padding.
        labels = torch.full_like(ids, -100)
        is_answer = torch.zeros_like(mask, dtype=torch.bool)
        for j, i in enumerate(rows):
            is_answer[j, len(prefixes[i]) : len(prefixes[i]) + len(answers[i])] = True
        labels[is_answer] = ids[is_answer]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device), reduction="none")
        counts = is_answer[:, 1:].sum(dim=1).to(device)
        ppl = (nll.sum(dim=1) / counts).exp()
        out[list(rows)] = torch.where(counts > 0, ppl, torch.nan).cpu()
    return out


@torch.no_grad()
def topic_log_likelihoods(
    model, tokenizer, texts: list[str], candidates: list[str], batch_size: int = 16
) -> torch.Tensor:
    """Summed log-probability of each candidate description as the answer to the topic question about each text.

    Each text's conversation (up to "The topic is") is run once, left-padded with position ids that skip the
    padding; its key-value cache is repeated for the candidates, whose tokens (`` {description}``, right-padded) are
    scored in one more forward pass.

    Args:
        model: A causal LM (``load_smollm()[0]``).
        tokenizer: Its tokenizer, with a chat template.
        texts: Texts to judge.
        candidates: Topic descriptions (non-empty strings).
        batch_size: Texts per forward pass (each expands to ``len(candidates)`` rows in the second pass).

    Returns:
        ``torch.Tensor`` of shape ``(len(texts), len(candidates))``, float32 log-likelihoods (nats).
    """
    texts = _check_texts("texts", texts)
    candidates = _check_texts("candidates", candidates, allow_empty=False)
    if not candidates:
        raise ValueError("`candidates` must hold at least one topic description.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    device, pad_id, num = model.device, tokenizer.pad_token_id or 0, len(candidates)
    prefixes = tokenizer(
        [_chat_prefix(tokenizer, TOPIC_QUESTION.format(text=t), TOPIC_ANSWER) for t in texts],
        add_special_tokens=False,
    )["input_ids"]
    # The leading space belongs to the description: "The topic is" + " religion and god" tokenizes as the whole.
    cand_ids, cand_mask = _pad(
        tokenizer([" " + c for c in candidates], add_special_tokens=False)["input_ids"], pad_id, False
    )
    cand_ids, cand_mask = cand_ids.to(device), cand_mask.to(device)
    out = torch.empty(len(texts), num)
    for start in range(0, len(texts), batch_size):
        rows = list(range(start, min(start + batch_size, len(texts))))
        ids, mask = _pad([prefixes[i] for i in rows], pad_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        # Log-probability of each candidate's first token, from the last prefix position: (n, num).
        total = first.logits[:, -1].float().log_softmax(dim=-1)[:, cand_ids[:, 0]]
        if cand_ids.shape[1] > 1:
            n = len(rows)
            cache = first.cache
            cache.batch_repeat_interleave(num)  # row r * num + c: text r, candidate c
            inputs = cand_ids[:, :-1].repeat(n, 1)
            step_mask = torch.cat([mask.repeat_interleave(num, dim=0), cand_mask[:, :-1].repeat(n, 1)], dim=1)
            step_positions = (
                positions[:, -1:].repeat_interleave(num, dim=0) + 1 + torch.arange(inputs.shape[1], device=device)
            )
            logits = model(
                input_ids=inputs, attention_mask=step_mask, position_ids=step_positions, cache=cache
            ).logits.float()
            targets = cand_ids[:, 1:].repeat(n, 1)
            token_lp = logits.log_softmax(dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            token_lp = token_lp * cand_mask[:, 1:].repeat(n, 1)  # padding after a short description counts 0
            total = total + token_lp.sum(dim=1).view(n, num)
        out[rows] = total.cpu()
    return out


def topic_probabilities(
    model, tokenizer, texts: list[str], candidates: list[str], batch_size: int = 16, calibrate: bool = True
) -> torch.Tensor:
    """``(len(texts), len(candidates))`` probabilities of each candidate description, each row summing to 1.

    The softmax over candidates of their log-likelihoods (:func:`topic_log_likelihoods`), minus those under the
    content-free text when ``calibrate`` (the default; see the module docstring).
    """
    scores = topic_log_likelihoods(model, tokenizer, texts, candidates, batch_size)
    if calibrate:
        scores = scores - topic_log_likelihoods(model, tokenizer, [CONTENT_FREE_TEXT], candidates)
    return scores.softmax(dim=-1)


class SmolLMJudges:
    """The held-out SmolLM2 judges with a fixed set of candidate topic descriptions.

    Args:
        model: SmolLM2 (``load_smollm()[0]``), or any causal LM with a chat-template tokenizer.
        tokenizer: Its tokenizer.
        candidates: The topic descriptions a target is chosen among (default: the benchmark's 10 targets).
        batch_size: Rows per forward pass.
    """

    def __init__(self, model, tokenizer, candidates: list[str] | None = None, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        candidates = default_topic_descriptions() if candidates is None else _check_texts("candidates", candidates)
        self.candidates = list(dict.fromkeys(candidates))
        if len(self.candidates) < 2:
            raise ValueError(f"`candidates` needs at least two distinct topic descriptions, got {self.candidates}.")

    def perplexity(self, prompts: list[str], responses: list[str]) -> list[float]:
        """SmolLM2 perplexity of each response given its prompt (``nan`` for an empty response)."""
        return response_perplexity(self.model, self.tokenizer, prompts, responses, self.batch_size).tolist()

    def topic_probabilities(self, texts: list[str]) -> torch.Tensor:
        """``(len(texts), len(self.candidates))`` probabilities, each row summing to 1."""
        return topic_probabilities(self.model, self.tokenizer, texts, self.candidates, self.batch_size)

    def topic_score(self, texts: list[str], targets: list[str]) -> list[float]:
        """The probability of each text's target among the candidates (the LM judge's score in the benchmark)."""
        targets = _check_texts("targets", targets)
        if len(targets) != len(texts):
            raise ValueError(f"`texts` ({len(texts)}) and `targets` ({len(targets)}) must have the same length.")
        unknown = sorted(set(targets) - set(self.candidates))
        if unknown:
            raise ValueError(f"targets {unknown} are not among the candidates; pass them in `candidates`.")
        index = torch.tensor([self.candidates.index(t) for t in targets], dtype=torch.long)
        return self.topic_probabilities(texts).gather(1, index[:, None]).squeeze(1).tolist()

    def record_fields(
        self, prompts: list[str], targets: list[str], texts: list[str], minilm_scores: list[float], reward: str
    ) -> list[dict]:
        """The benchmark's judge fields for a batch of best samples, one dict per text.

        ``judge_lm`` (this topic judge), ``judge_minilm`` (``minilm_scores``, the MiniLM topic classifier's),
        ``judge`` (whichever of the two is held out for ``reward``, see :func:`held_out_judge`), ``held_out_judge``
        (its name) and ``perplexity_smollm`` (SmolLM2 perplexity of the text given its prompt).
        """
        held_out = held_out_judge(reward)
        if len(minilm_scores) != len(texts):
            raise ValueError(f"`minilm_scores` ({len(minilm_scores)}) must have one score per text ({len(texts)}).")
        lm_scores = self.topic_score(texts, targets)
        perplexities = self.perplexity(prompts, texts)
        return [
            {
                "judge": lm if held_out == "lm" else minilm,
                "judge_minilm": minilm,
                "judge_lm": lm,
                "held_out_judge": held_out,
                "perplexity_smollm": ppl,
            }
            for lm, minilm, ppl in zip(lm_scores, minilm_scores, perplexities)
        ]


def load_smollm_judges(
    candidates: list[str] | None = None, cache_dir: str | None = None, batch_size: int = 16
) -> SmolLMJudges:
    """The SmolLM2 fluency and topic judges, loaded offline (the model is converted and cached on first use).

    Args:
        candidates: Topic descriptions for the topic judge (default: the benchmark's 10 target descriptions).
        cache_dir: Folder of the cached SmolLM2 model (default: ``$ENTRGI_CACHE/smollm2-<hash>``).
        batch_size: Rows per forward pass.

    Example::

        >>> from entrgi_pipelines.stack import load_smollm_judges
        >>> judges = load_smollm_judges()
        >>> judges.topic_score(["I baked bread and made soup for dinner."], ["food and eating"])[0] > 0.5
        True
    """
    from .smollm import load_smollm

    model, tokenizer = load_smollm(cache_dir)
    return SmolLMJudges(model, tokenizer, candidates, batch_size)
