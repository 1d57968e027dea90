"""Reward templates: where the prompt, the target and the response go in a reward model's input.

A [`RewardTemplate`] is a conversation (or a plain text) with named slots:

- `{prompt}`: the generation prompt, as text;
- `{target}`: what the reward judges the response against: the pipeline's `reward_prompt` (a target description,
  a question...), which defaults to the generation prompt;
- `{response}`: the response, exactly once.

It is rendered with the reward tokenizer's chat template and split at the response into a token prefix and suffix,
between which guidance feeds the response as embeddings. A template may name one slot after the response whose tokens
are *scored*: a causal LM reward (see [`CausalLMReward`]) returns their mean log-probability, and the input ends with
them (a causal model's log-probabilities of those tokens do not depend on what comes after).

The default template is today's convention: `[user: {target}, assistant: {response}]` with a chat template, or the
tokenizer's text pair `(target, response)` without one (e.g. `[CLS] target [SEP] response [SEP]`). Without a
`reward_prompt`, `{target}` is the prompt, so the default is the usual `[user: prompt, assistant: response]`.

Tokenisation follows the rendered text: a slot's value is tokenised together with the spaces that precede it, so
that `"Text: {response}"` gives `Text`, `:`, `Ġthe`... for a byte-level BPE tokenizer, as the whole text would.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SLOTS = ("prompt", "target", "response")
_SLOT_PATTERN = re.compile(r"\{(prompt|target|response)\}")
# Invisible separators mark the response and the scored slot in the rendered text; chat templates copy them through.
_RESPONSE_MARK = "\u2063entrgi-response\u2063"
_SCORE_START, _SCORE_END = "\u2063entrgi-score\u2063", "\u2063entrgi-score-end\u2063"


@dataclass(frozen=True)
class RewardTemplate:
    """
    Where the prompt, the target and the response go in the reward model's input (see the module docstring).

    Args:
        messages (`list[dict]`, *optional*): a conversation of `{"role": ..., "content": ...}` dicts whose contents
            hold the slots `{prompt}`, `{target}` and `{response}`; rendered with the reward tokenizer's chat
            template (`add_generation_prompt=False`).
        text (`str`, *optional*): a plain text with the same slots, for reward models without a chat template;
            tokenised without special tokens.
        score (`str`, *optional*): the slot (`"prompt"` or `"target"`) whose tokens a causal LM reward scores. It
            must come after the response and not directly after it; the input is cut after it. With neither
            `messages` nor `text`, the template is the default `[user: {target}, assistant: {response}]` (the text
            pair `(target, response)` when the tokenizer has no chat template).

    Examples:
        ```py
        >>> from entrgi_pipelines.guidance.templates import RewardTemplate
        >>> judge = RewardTemplate(
        ...     messages=[
        ...         {"role": "user", "content": "What is this text about?\\nText: {response}"},
        ...         {"role": "assistant", "content": "This text is about {target}"},
        ...     ],
        ...     score="target",
        ... )
        >>> judge.render({"prompt": "there was a", "target": "food", "response": "a feast"})[1]["content"]
        'This text is about food'
        ```
    """

    messages: tuple[Mapping[str, str], ...] | None = None
    text: str | None = None
    score: str | None = None

    def __post_init__(self):
        if self.messages is not None and self.text is not None:
            raise ValueError("A `RewardTemplate` takes `messages` or `text`, not both.")
        if self.messages is not None:
            if isinstance(self.messages, (str, Mapping)) or not all(
                isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in self.messages
            ):
                raise TypeError(
                    "`messages` must be a list of {'role': str, 'content': str} dicts, e.g. "
                    "[{'role': 'user', 'content': 'Text: {response}'}]."
                )
            object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"`text` must be a string with a {{response}} slot, got {type(self.text).__name__}.")
        parts = [m["content"] for m in self.messages] if self.messages is not None else [self.text or ""]
        slots = [s for part in parts for s in _SLOT_PATTERN.findall(part)]
        if not self.is_default and slots.count("response") != 1:
            raise ValueError(
                f"A reward template must hold `{{response}}` exactly once, found it {slots.count('response')} times."
            )
        if self.score is not None:
            if self.score not in ("prompt", "target"):
                raise ValueError(f"`score` must be 'prompt', 'target' or None, got {self.score!r}.")
            after = slots[slots.index("response") + 1 :] if "response" in slots else ()
            if self.score not in after:
                raise ValueError(f"`score={self.score!r}`: the template has no {{{self.score}}} after {{response}}.")

    @property
    def is_default(self) -> bool:
        """Whether this is the default layout (`[user: {target}, assistant: {response}]` or the text pair)."""
        return self.messages is None and self.text is None

    @classmethod
    def from_any(cls, template: RewardTemplate | Sequence[Mapping[str, str]] | str | None) -> RewardTemplate:
        """A template from a `RewardTemplate`, a list of messages, a plain text, or `None` (the default)."""
        if template is None:
            return cls()
        if isinstance(template, RewardTemplate):
            return template
        if isinstance(template, str):
            return cls(text=template)
        if isinstance(template, Sequence):
            return cls(messages=template)
        raise TypeError(
            "`reward_template` must be a RewardTemplate, a list of {'role', 'content'} messages, a string or None, "
            f"got {type(template).__name__}."
        )

    def render(self, values: Mapping[str, str]) -> list[dict[str, str]] | str:
        """The messages (or text) with every slot replaced by `values[slot]`, in one pass (values are not re-read)."""

        def fill(part: str) -> str:
            return _SLOT_PATTERN.sub(lambda m: values[m.group(1)], part)

        if self.messages is not None:
            return [{**m, "content": fill(m["content"])} for m in self.messages]
        return fill(self.text if self.text is not None else "")


@dataclass
class ResponseLayout:
    """
    The reward input around one response, as token ids.

    Args:
        prefix / prefix_types: ids (and token types) before the response.
        suffix / suffix_types: ids (and token types) after it.
        scored: for every suffix token, whether a causal LM reward scores it.
        lead: the spaces that precede the response in the rendered text: a response text is tokenised with them.
    """

    prefix: list[int]
    prefix_types: list[int]
    suffix: list[int]
    suffix_types: list[int]
    scored: list[bool]
    lead: str = ""


def _split_lead(text: str) -> tuple[str, str]:
    """`text` without its trailing spaces, and those spaces (they belong to the next token in most tokenizers)."""
    stripped = text.rstrip(" ")
    return stripped, text[len(stripped) :]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def layout_response(tokenizer, template: RewardTemplate, prompt: str, target: str) -> ResponseLayout:
    """Renders `template` for one (prompt, target) with `tokenizer` and splits it at the response.

    Raises:
        ValueError: the template needs a chat template the tokenizer lacks, or the tokenizer's chat template drops
            or repeats the response.
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template.is_default and not has_chat:
        return _text_pair_layout(tokenizer, target)
    if template.text is None and not has_chat:
        raise ValueError(
            "The reward template is a conversation but the reward tokenizer has no chat template: give the template "
            "as `RewardTemplate(text=...)`, or set `tokenizer.chat_template`."
        )
    values = {"prompt": prompt, "target": target, "response": _RESPONSE_MARK}
    if template.score is not None:
        values[template.score] = _SCORE_START + values[template.score] + _SCORE_END
    if template.is_default:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": target}, {"role": "assistant", "content": _RESPONSE_MARK}], tokenize=False
        )
    elif template.messages is not None:
        rendered = tokenizer.apply_chat_template(template.render(values), tokenize=False)
    else:
        rendered = template.render(values)
    if rendered.count(_RESPONSE_MARK) != 1:
        raise ValueError("The reward tokenizer's chat template must render the response exactly once.")
    before, after = rendered.split(_RESPONSE_MARK)
    # Only the first occurrence of the scored slot after the response is scored.
    before, lead = _split_lead(before.replace(_SCORE_START, "").replace(_SCORE_END, ""))
    prefix = _ids(tokenizer, before)
    if template.score is None:
        suffix, scored = _ids(tokenizer, after), None
    else:
        head, rest = after.split(_SCORE_START, 1)
        value = rest.split(_SCORE_END, 1)[0]  # what follows the scored slot is cut
        head, value_lead = _split_lead(head)
        head_ids, value_ids = _ids(tokenizer, head), _ids(tokenizer, value_lead + value)
        if not head_ids or not value_ids:
            raise ValueError(
                f"The scored slot {{{template.score}}} must be non-empty and separated from the response by some "
                "text (its first token is predicted from the token before it)."
            )
        suffix, scored = head_ids + value_ids, [False] * len(head_ids) + [True] * len(value_ids)
    return ResponseLayout(
        prefix=prefix,
        prefix_types=[0] * len(prefix),
        suffix=suffix,
        suffix_types=[0] * len(suffix),
        scored=scored or [False] * len(suffix),
        lead=lead,
    )


def _text_pair_layout(tokenizer, target: str) -> ResponseLayout:
    encoding = tokenizer(target, "x")
    sequence_ids = encoding.sequence_ids(0)
    start, end = sequence_ids.index(1), len(sequence_ids) - sequence_ids[::-1].index(1)
    ids = encoding["input_ids"]
    types = encoding.get("token_type_ids") or [0] * len(ids)
    return ResponseLayout(ids[:start], types[:start], ids[end:], types[end:], [False] * (len(ids) - end))
