"""EntRGiPipeline: reward-guided generation with masked discrete diffusion language models."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput, replace_example_docstring

from ...guidance.entrgi import ENTROPY_WEIGHTS, GUIDANCE_METHODS
from ...guidance.resampling import ParticleResampler, check_resampling_arguments
from ...guidance.reward_guidance import RewardGuidance
from ...guidance.rewards import visible_before_eos
from ...models import BlockKVCache, FullAttentionKVCache
from ...models.modeling_base import BidirectionalLM
from ...pipelines.hub_utils import HubPipelineMixin
from ...schedulers.scheduling_masked_diffusion import (
    MaskedDiffusionScheduler,
    check_decoding_arguments,
    device_generator,
)
from ...validation import (
    ArgumentTypeError,
    check_choice,
    check_instance,
    check_integer,
    check_number,
    check_text_list,
)

# What the reward model sees with blocks: every masked position ("response") or the response up to the current
# block's end, only the current block guided ("block").
GUIDANCE_SCOPES = ("block", "response")
# `kv_cache=`: "auto" (the exact prefix cache for block-causal models, none for full-attention ones), "prefix" and
# "dual" (Fast-dLLM's approximate caches for full-attention models), None (no cache).
KV_CACHE_MODES = ("auto", "prefix", "dual")
# Model types decoded block by block against an exact key/value cache (native classes in `models/`).
BLOCK_CAUSAL_MODEL_TYPES = ("sdar", "Fast_dLLM_Qwen")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification
        >>> from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
        >>> from entrgi_pipelines.testing import tiny_wordpiece_tokenizer

        >>> tokenizer = tiny_wordpiece_tokenizer()
        >>> config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...               intermediate_size=64)
        >>> dllm = BertForMaskedLM(BertConfig(**config)).eval()
        >>> reward_model = BertForSequenceClassification(BertConfig(num_labels=1, **config)).eval()
        >>> pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
        >>> out = pipe(["the cat", "a dog sat on"], reward_model=reward_model, guidance="entrgi", gen_length=8,
        ...            num_inference_steps=4, num_samples_per_prompt=2, generator=torch.Generator().manual_seed(0))
        >>> len(out.texts), out.rewards.shape, out.sequences.shape
        (2, torch.Size([2, 2]), torch.Size([2, 2, 8]))
        ```
"""


@dataclass
class EntRGiPipelineOutput(BaseOutput):
    """
    Output of [`EntRGiPipeline`].

    Args:
        texts (`list[str]`): for each prompt, the sample with the highest reward (the first sample without reward).
        all_texts (`list[list[str]]`): every sample, `B x K`.
        rewards (`torch.Tensor` of shape `(B, K)` or `None`): the reward of each sample on its discrete tokens.
        sequences (`torch.LongTensor` of shape `(B, K, gen_length)`): the generated token ids (no mask token left).
        trajectory (`torch.LongTensor` of shape `(nfe, B, K, gen_length)` or `None`): the response tokens after
            each denoising step, mask ids included (the last step equals `sequences`, except that end-of-sequence
            filling may follow it with blocks); only with `output_trajectory=True`.
        nfe (`int`): the number of forward calls of the diffusion model that the call made (fewer than
            `num_inference_steps` when threshold decoding ends blocks early or every response has ended).
        row_nfe (`torch.LongTensor` of shape `(B, K)` or `None`): for block-causal models, whose rows advance on
            their own, the dLLM forward calls each sample took part in (its prefill, steps and block commits).
        resample_steps (`list[int]` or `None`): with `resample="smc"`, the steps at which the samples were weighed,
            as counts of denoising steps taken (1 = after the first); the last entry is the end of the call.
        ess (`torch.Tensor` of shape `(len(resample_steps), B)` or `None`): each prompt's effective sample size
            `(sum w)^2 / sum w^2` at each of those steps, before resampling (K: equal weights, 1: one sample holds
            them all, 0: no sample has a finite potential).
        resampled (`list[list[bool]]` or `None`): `len(resample_steps) x B`, whether each prompt resampled there.
        ancestry (`torch.LongTensor` of shape `(B, K)` or `None`): the sample (0 .. K-1, numbered as at the start)
            that each final sample descends from; `arange(K)` in every row when no prompt resampled, one value
            repeated when all K samples descend from one.
    """

    texts: list[str]
    all_texts: list[list[str]]
    rewards: torch.Tensor | None
    sequences: torch.LongTensor
    trajectory: torch.LongTensor | None = None
    nfe: int | None = None
    row_nfe: torch.LongTensor | None = None
    resample_steps: list[int] | None = None
    ess: torch.Tensor | None = None
    resampled: list[list[bool]] | None = None
    ancestry: torch.LongTensor | None = None


def detect_logits_shift(config: Any) -> bool:
    """Whether a diffusion LM predicts token `i` at position `i - 1` (Dream-style) rather than at `i` (LLaDA, BERT).

    Read from `config.logits_shift` when the config states it, else from the model type (`dream`).
    """
    explicit = getattr(config, "logits_shift", None)
    if explicit is not None:
        return bool(explicit)
    return "dream" in str(getattr(config, "model_type", "")).lower()


def _find_callbacks(callback: Any, kind: type) -> list:
    if isinstance(callback, MultiPipelineCallbacks):
        return [c for inner in callback.callbacks for c in _find_callbacks(inner, kind)]
    if isinstance(callback, _ThenCall):
        return _find_callbacks(callback.first, kind)
    return [callback] if isinstance(callback, kind) else []


def _guidance_first(guidance: PipelineCallback, callback: Any, tensor_inputs: list[str]):
    """One callback that runs `guidance`, then the user's `callback` (if any) on the guided tensors."""
    if callback is None:
        return guidance
    if isinstance(callback, MultiPipelineCallbacks):
        return MultiPipelineCallbacks([guidance, *callback.callbacks])
    if isinstance(callback, PipelineCallback):
        return MultiPipelineCallbacks([guidance, callback])
    return _ThenCall(guidance, callback, tensor_inputs)


def _same_objects(a, b) -> bool:
    """Whether two nested tuples hold the very same objects (identity, not equality: a tokenizer or a template
    compared by value could be an edited copy)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_objects(x, y) for x, y in zip(a, b))
    return a is b


def _first_bad_step(first: torch.Tensor, bad: torch.Tensor, step_index: int) -> torch.Tensor:
    """`first` (a device scalar, -1 while none) becomes `step_index` at the first step where `bad` holds: a lazy
    check that costs no host sync inside the loop."""
    return torch.where((first < 0) & bad, step_index, first)


def _check_lazily(first_nonfinite: torch.Tensor, first_invalid: torch.Tensor, num_steps: int) -> None:
    """Stops a call whose diffusion model returned NaN or +inf logits, or whose callbacks left a masked position
    without a distribution, naming the first such step (one host sync, after the loop: the steps in between sample
    in-range tokens from such rows, which are thrown away)."""
    nonfinite, invalid = torch.stack([first_nonfinite, first_invalid]).tolist()
    if nonfinite >= 0:
        raise FloatingPointError(
            f"The diffusion model returned NaN or infinite logits at denoising step {nonfinite} of {num_steps}: "
            "check its weights and dtype (float16 overflows easily; try bfloat16 or float32)."
        )
    if invalid >= 0:
        raise ValueError(
            f"The logits had no valid distribution at a masked position at denoising step {invalid} of {num_steps} "
            "(NaN, +inf, or -inf everywhere but the mask token): check the callbacks that edit the logits."
        )


def _ends_call_cleanly(call: Callable) -> Callable:
    """Whatever stops a call (an error, KeyboardInterrupt in a callback or a reward model), no per-call state stays."""

    @functools.wraps(call)
    def wrapper(self, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        finally:
            self._sampling = {}

    return wrapper


class EntRGiPipeline(HubPipelineMixin, DiffusionPipeline):
    r"""
    Text generation with a masked discrete diffusion language model, optionally steered toward higher reward by
    EntRGi (entropy-aware reward guidance) or its baselines.

    The model may be Dream-style (logits shifted by one position), LLaDA-style or a BERT-style masked LM: the
    convention is read from the model config (see [`detect_logits_shift`]) unless `logits_shift` is given.

    Args:
        model: the diffusion LM; called as `model(input_ids, attention_mask=..., position_ids=...)` (each argument
            passed when its forward accepts it), returning `.logits` of shape `(batch, seq, vocab)`.
        tokenizer: its tokenizer (the chat template is used when it has one).
        scheduler ([`MaskedDiffusionScheduler`]): decides what is committed at each step.
        logits_shift (`bool`, *optional*): force the Dream-style shift on or off.
        mask_token_id (`int`, *optional*): the mask id, when the tokenizer does not define `mask_token`.
    """

    model_cpu_offload_seq = "model"
    _callback_tensor_inputs = [
        "logits",
        "response_tokens",
        "sequences",
        "attention_mask",
        "block_bounds",
        "masked_positions",
        "active_rows",
    ]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """[`DiffusionPipeline.from_pretrained`] with safetensors weights only (loading a pickle checkpoint can run
        code): a folder with `.bin` weights alone is refused unless `use_safetensors=False` is passed."""
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        scheduler: MaskedDiffusionScheduler,
        logits_shift: bool | None = None,
        mask_token_id: int | None = None,
    ):
        super().__init__()
        self.register_modules(model=model, tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(logits_shift=logits_shift, mask_token_id=mask_token_id)
        self._sampling: dict[str, Any] = {}
        self._num_timesteps = 0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def vocab_size(self) -> int:
        """Width of the model's logits."""
        size = getattr(self.model.config, "vocab_size", None)
        return int(size) if size is not None else len(self.tokenizer)

    @property
    def logits_shift(self) -> bool:
        shift = self.config.logits_shift
        return detect_logits_shift(self.model.config) if shift is None else bool(shift)

    @property
    def sampling_state(self) -> dict[str, Any]:
        """The running call's settings (mask and end-of-sequence ids, temperature, top-p/k, generator, guidance scope;
        `{}` outside a call): set once per call. Per-step state, such as each row's current block, reaches callbacks
        in their keyword arguments (`block_bounds`)."""
        return dict(self._sampling)

    def resolve_mask_token_id(self, mask_token_id: int | None = None) -> int | None:
        """The mask id: the call's, the pipeline's, the tokenizer's `mask_token_id`, else the model config's (a
        block-diffusion config names its mask token: dLLM v3's tokenizer, SmolLM2's, has none)."""
        candidates = (
            mask_token_id,
            self.config.mask_token_id,
            getattr(self.tokenizer, "mask_token_id", None),
            getattr(self.model.config, "mask_token_id", None) if self.block_causal else None,
        )
        for candidate in candidates:
            if candidate is not None:
                return int(candidate)
        return None

    @property
    def eos_token_id(self) -> int | None:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return eos if eos is not None else getattr(self.tokenizer, "sep_token_id", None)

    def check_inputs(
        self,
        *,
        prompt: str | list[str] | None,
        messages: list | None,
        input_ids: torch.Tensor | None,
        reward_model: Any,
        reward_tokenizer: Any,
        reward_prompt: str | list[str] | None,
        reward_template: Any,
        guidance: str | None,
        guidance_steps: int,
        guidance_lr: float,
        guidance_scope: str | None,
        entropy_weight: str,
        num_inference_steps: int,
        gen_length: int,
        num_samples_per_prompt: int,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        block_length: int | None,
        threshold: float | None,
        minimal_topk: int | None,
        mask_token_id: int | None,
        kv_cache: str | None,
        resample: str,
        resample_every: int,
        resample_ess: float,
        resample_temperature: float,
        potential: str,
        generator: torch.Generator | None,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: list[str] | None,
    ) -> None:
        """Refuses every bad argument of a call before the prompt is encoded or any model runs: a `TypeError` for a
        wrong type, a `ValueError` for a wrong value, each naming the argument and what is allowed."""
        given = [
            name
            for name, value in (("prompt", prompt), ("messages", messages), ("input_ids", input_ids))
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(f"Pass exactly one of `prompt`, `messages` or `input_ids`; got {given or 'none'}.")
        num_prompts = self._check_prompt_inputs(prompt, messages, input_ids)
        for name, value in (
            ("gen_length", gen_length),
            ("num_inference_steps", num_inference_steps),
            ("num_samples_per_prompt", num_samples_per_prompt),
        ):
            check_integer(name, value, minimum=1)
        check_choice("guidance", guidance, GUIDANCE_METHODS, none_ok=True)
        check_integer("guidance_steps", guidance_steps, minimum=0)
        check_number("guidance_lr", guidance_lr, low=0.0, low_open=True)
        check_choice("guidance_scope", guidance_scope, GUIDANCE_SCOPES, none_ok=True)
        check_instance("entropy_weight", entropy_weight, str, "one of " + str(ENTROPY_WEIGHTS))
        check_choice("entropy_weight", entropy_weight, ENTROPY_WEIGHTS)
        check_number("temperature", temperature, low=0.0)
        check_number("top_p", top_p, low=0.0, high=1.0, low_open=True, none_ok=True)
        check_integer("top_k", top_k, minimum=1, none_ok=True)
        check_integer("mask_token_id", mask_token_id, minimum=0, none_ok=True)
        config = self.scheduler.config
        check_decoding_arguments(
            block_length=config.block_length if block_length is None else block_length,
            # a block-causal model decodes whole blocks and cuts the response to `gen_length`
            gen_length=None if self.block_causal else gen_length,
            num_inference_steps=num_inference_steps,
            threshold=config.threshold if threshold is None else threshold,
            minimal_topk=config.minimal_topk if minimal_topk is None else minimal_topk,
            confidence=config.confidence,
        )
        self._check_cache_and_blocks(kv_cache, block_length, guidance_scope, resample, gen_length, num_inference_steps)
        mask_id = self.resolve_mask_token_id(mask_token_id)
        if mask_id is None:
            raise ValueError(
                "No mask token is known: the tokenizer has no `mask_token`; pass `mask_token_id=` to the pipeline "
                "or to this call."
            )
        if not 0 <= mask_id < self.vocab_size:
            raise ValueError(f"`mask_token_id` must be a token id in [0, {self.vocab_size}), got {mask_id}.")
        reward_prompts = check_text_list("reward_prompt", reward_prompt, none_ok=True, blank_ok=True)
        if isinstance(reward_prompt, list) and len(reward_prompts) != num_prompts:
            raise ValueError(
                f"`reward_prompt` has {len(reward_prompts)} entries for {num_prompts} prompts: give one each."
            )
        check_instance(
            "generator",
            generator,
            torch.Generator,
            "a `torch.Generator` (e.g. `torch.Generator().manual_seed(0)`)",
            none_ok=True,
        )
        if callback_on_step_end is not None and not (
            callable(callback_on_step_end) or isinstance(callback_on_step_end, MultiPipelineCallbacks)
        ):
            raise ArgumentTypeError(
                "`callback_on_step_end` must be a function, a PipelineCallback or MultiPipelineCallbacks, got "
                f"{type(callback_on_step_end).__name__}."
            )
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` must be among {self._callback_tensor_inputs}, got "
                f"{callback_on_step_end_tensor_inputs}."
            )
        guidances = _find_callbacks(callback_on_step_end, RewardGuidance)
        if reward_model is None:
            if guidance not in (None, "none"):
                raise ValueError(
                    f"`guidance={guidance!r}` needs a `reward_model` (or pass a `RewardGuidance` callback)."
                )
            if not guidances and (reward_prompt is not None or reward_tokenizer is not None):
                raise ValueError(
                    "`reward_prompt` and `reward_tokenizer` only apply with a reward: pass `reward_model=` (or a "
                    "`RewardGuidance` callback), or drop them."
                )
            if reward_template is not None:
                raise ValueError(
                    "`reward_template` applies with `reward_model=`; a `RewardGuidance` callback takes its own "
                    "`reward_template=`."
                )
        check_resampling_arguments(
            resample, resample_every, resample_ess, resample_temperature, potential, num_samples_per_prompt
        )
        if resample == "smc":
            if reward_model is None and not guidances:
                raise ValueError(
                    "`resample='smc'` weighs the samples by a reward: pass `reward_model=` (with `guidance='none'` "
                    "for resampling without gradients) or a `RewardGuidance` callback."
                )
            method, steps = guidance or "entrgi", guidance_steps
            if reward_model is None:
                method, steps = guidances[0].config.guidance, guidances[0].config.guidance_steps
            if potential == "guidance" and (method == "none" or steps == 0):
                raise ValueError(
                    "`potential='guidance'` reads the reward of the last Adam step, and this call takes none "
                    f"(guidance={method!r}, guidance_steps={steps}): pass `potential='hard'`, or guide."
                )

    def _check_cache_and_blocks(
        self, kv_cache, block_length, guidance_scope, resample, gen_length, num_inference_steps
    ) -> None:
        """`kv_cache` (the approximate caches need a model that takes a `FullAttentionKVCache`, and "dual" with
        several blocks has no logits for the response scope) and the settings a block-causal model constrains."""
        check_choice("kv_cache", kv_cache, KV_CACHE_MODES, none_ok=True)
        if not self.block_causal:
            if kv_cache not in ("prefix", "dual"):
                return
            if not isinstance(self.model, BidirectionalLM):
                raise ValueError(
                    f"`kv_cache={kv_cache!r}` (Fast-dLLM's approximate cache) needs a model that takes a "
                    "`FullAttentionKVCache`: the native `DreamModel` or `LLaDAModelLM`, not "
                    f"{type(self.model).__name__}; use `kv_cache='auto'` or None (no cache) with this model."
                )
            if kv_cache == "dual" and guidance_scope == "response" and self._num_blocks(block_length, gen_length) > 1:
                raise ValueError(
                    "`guidance_scope='response'` guides every masked position, and with `kv_cache='dual'` and several "
                    "blocks each step computes logits for the current block only: use `guidance_scope='block'` (the "
                    "default with 'dual'), or `kv_cache='prefix'`, which computes the block and everything after it."
                )
            return
        size = getattr(self.model.config, "block_size", None)
        if size is None:
            raise ValueError(
                "This block-diffusion model's config has no block size: set `pipe.model.config.block_size` (4 for "
                "SDAR and TraDo, 32 for Fast-dLLM v2)."
            )
        if kv_cache == "dual":
            raise ValueError(
                "`kv_cache='dual'` caches the masked suffix of a full-attention model; a block-causal model never "
                "attends to later blocks, so its exact cache is `kv_cache='auto'` (or 'prefix'); None turns it off."
            )
        block = self.scheduler.config.block_length if block_length is None else block_length
        if block is not None and block != size:
            raise ValueError(
                f"`block_length` ({block}) must be the model's block size ({size}), which it was trained with: drop "
                f"`block_length` (the model's is used) or pass {size}."
            )
        num_blocks = -(-gen_length // size)
        if num_inference_steps % num_blocks:
            raise ValueError(
                f"`num_inference_steps` ({num_inference_steps}) must be divisible by the number of blocks of "
                f"{size} tokens that `gen_length` ({gen_length}) needs ({num_blocks}): pass a multiple of {num_blocks}."
            )
        if guidance_scope == "response":
            raise ValueError(
                "`guidance_scope='response'` needs logits at every masked position, and a block-causal model has "
                "logits only for its current block: use `guidance_scope='block'` (its default) or None."
            )

    def _dual_blocks(self, kv_cache: str | None, block_length: int | None, gen_length: int) -> bool:
        """Whether a full-attention call runs the dual cache over several blocks (logits for the block only)."""
        return kv_cache == "dual" and self._num_blocks(block_length, gen_length) > 1

    def _num_blocks(self, block_length: int | None, gen_length: int) -> int:
        """The number of blocks a full-attention model decodes `gen_length` in (1 without blocks)."""
        block = self.scheduler.config.block_length if block_length is None else block_length
        return 1 if block is None else gen_length // block

    def _check_prompt_inputs(self, prompt, messages, input_ids) -> int:
        """Checks the one prompt input given; returns the number of prompts."""
        if prompt is not None:
            return len(check_text_list("prompt", prompt))
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise ValueError("`messages` must be a non-empty list of conversations (lists of role/content dicts).")
            conversations = [messages] if isinstance(messages[0], dict) else messages
            for conversation in conversations:
                if not isinstance(conversation, list) or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in conversation
                ):
                    raise ValueError(
                        "`messages` must be a conversation (a list of {'role': str, 'content': str} dicts) or a list "
                        f"of them, got {conversation!r:.80}."
                    )
                if not any(m["role"] == "user" for m in conversation):
                    raise ValueError("Every conversation in `messages` needs a message with role 'user' to answer.")
            return len(conversations)
        check_instance("input_ids", input_ids, torch.Tensor, "a 2D LongTensor `(batch, prompt_length)`")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise ArgumentTypeError(f"`input_ids` must hold integer token ids, got dtype {input_ids.dtype}.")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                "`input_ids` must be a non-empty 2D LongTensor `(batch, prompt_length)`, got shape "
                f"{tuple(input_ids.shape)}."
            )
        low, high = int(input_ids.min()), int(input_ids.max())  # the user's tensor, before any model work
        if not 0 <= low <= high < self.vocab_size:
            raise ValueError(
                f"`input_ids` must hold token ids in [0, {self.vocab_size}) (the model's vocabulary), got values in "
                f"[{low}, {high}]."
            )
        return input_ids.shape[0]

    @property
    def block_causal(self) -> bool:
        """Whether the model is a block-diffusion model (SDAR, TraDo, Fast-dLLM v2): attention full inside a block of
        `config.block_size` tokens and causal across blocks, so the committed prefix's keys and values are exact to
        cache."""
        return str(getattr(self.model.config, "model_type", "")) in BLOCK_CAUSAL_MODEL_TYPES

    @property
    def stop_token_ids(self) -> list[int]:
        """End-of-sequence ids: the tokenizer's and those of the model's `generation_config` (an id or a list)."""
        ids = [self.eos_token_id]
        generation = getattr(self.model, "generation_config", None)
        configured = getattr(generation, "eos_token_id", None)
        ids += configured if isinstance(configured, (list, tuple)) else [configured]
        return list(dict.fromkeys(int(i) for i in ids if i is not None))

    def _decode_block_causal(
        self,
        prompt_ids: list[list[int]],
        num_samples_per_prompt: int,
        gen_length: int,
        mask_token_id: int,
        *,
        num_inference_steps: int,
        kv_cache: str | None,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        threshold: float | None,
        generator: torch.Generator | None,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: list[str],
        frames: list | None,
        resampler: ParticleResampler | None = None,
        resample_every: int = 4,
        potential: str = "hard",
        scorer: RewardGuidance | None = None,
    ) -> tuple[torch.LongTensor, int, torch.LongTensor, list | None]:
        """Block-diffusion decoding as the models' references do it, every row on its own.

        Each row's blocks are aligned from its first token (the prompt's tail is the frozen head of its first block)
        and decoded left to right: the prompt's complete blocks are prefilled into a [`BlockKVCache`], each step runs
        only the rows' current blocks against it, and a finished block is committed with one forward that writes it.
        A row moves to its next block when its block is full and stops after the block that holds its first stop id
        (or its last block); finished rows leave the batch. Returns the responses `(N, gen_length)`, the number of
        dLLM forward calls, each row's, and the trajectory frames.

        With `resampler` (SMC), every `resample_every` steps each sample weighs the change of its potential: a row
        still decoding by the reward of its denoised estimate read up to its block's end (`"hard"`) or by guidance's
        last reward (`"guidance"`), a finished row by the reward of its response; a resampled row takes its source's
        tokens, block, step and cache rows (a copy of a finished sample is finished too).
        """
        device = self._execution_device
        scheduler = self.scheduler.block_causal_rules()
        b, shift = int(self.model.config.block_size), int(self.logits_shift)
        num_blocks = -(-gen_length // b)
        scheduler.set_timesteps(num_inference_steps, device=device, gen_length=num_blocks * b, block_length=b)
        self._num_timesteps = scheduler.steps_per_block * num_blocks
        K = num_samples_per_prompt
        lengths = torch.tensor([len(ids) for ids in prompt_ids]).repeat_interleave(K).to(device)
        ends = (lengths + gen_length + b - 1) // b * b  # whole blocks, cut to gen_length at the end
        width = int(ends.max())
        tokens = torch.full((len(lengths), width), mask_token_id, dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            tokens[row * K : (row + 1) * K, : len(ids)] = torch.tensor(ids)
        tokens = tokens.to(device)
        stops = torch.tensor(self.stop_token_ids, dtype=torch.long).to(device)
        offsets = torch.arange(b, device=device)
        window = torch.arange(b + shift, device=device) - shift  # a shifted model re-reads the last committed token

        start = lengths // b * b  # each row's current block
        step_in_block = torch.zeros_like(lengths)
        masked_at_start = (tokens.gather(1, start[:, None] + offsets) == mask_token_id).sum(-1)
        active = torch.arange(len(lengths), device=device)
        row_nfe = torch.zeros_like(lengths)
        nfe = 0
        cache = BlockKVCache(max_length=width) if kv_cache is not None else None
        # the prefill and the commits only write the cache: the decoder alone, without the vocabulary-wide head
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model
        if cache is not None and int(start.max()) > 0:  # prefill the prompts' complete blocks
            prefix = int(start.max())
            positions = torch.arange(prefix, device=device).expand(len(lengths), prefix)
            decoder(
                tokens[:, :prefix],
                position_ids=positions,
                attention_mask=(positions < start[:, None]).long(),
                past_key_values=cache,
                use_cache=True,
                store_kv=True,
            )
            nfe += 1
            row_nfe += start > 0

        def forward(rows: torch.LongTensor, commit: torch.BoolTensor | None = None) -> torch.Tensor:
            """Logits `(A, b, V)` of the rows' current blocks; with `commit`, the committing rows' blocks are
            written to the cache instead (nothing returned)."""
            if cache is None:  # the sequence up to the last current block's end (later blocks are never read)
                logits = self.model(tokens[rows, : int(start[rows].max()) + b]).logits
                index = (start[rows, None] + offsets - shift).clamp(min=0)
                return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
            positions = start[rows, None] + window
            valid = positions >= 0
            if commit is not None:
                valid = valid & commit[:, None]
            positions = positions.clamp(min=0)
            inputs = dict(position_ids=positions, attention_mask=valid.long(), past_key_values=cache, use_cache=True)
            if commit is not None:
                decoder(tokens[rows].gather(1, positions), store_kv=True, **inputs)
                return None
            return self.model(tokens[rows].gather(1, positions), **inputs).logits[:, :b]

        span = torch.arange(gen_length, device=device)
        potentials = torch.zeros(len(lengths), dtype=torch.float64, device=device)  # SMC's, per row
        is_active = torch.ones(len(lengths), dtype=torch.bool, device=device)
        step = 0
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            while active.numel():
                logits = forward(active)
                nfe += 1
                row_nfe[active] += 1
                logits[..., mask_token_id] = float("-inf")  # guidance and sampling never propose the mask
                columns = start[active, None] + offsets
                block = tokens[active].gather(1, columns)
                confidence_logits = logits
                if callback_on_step_end is not None:
                    response = lengths[active, None] + torch.arange(gen_length, device=device)
                    available = {
                        "logits": logits,
                        "response_tokens": tokens[active].gather(1, response.clamp(max=width - 1)),
                        "sequences": tokens[active],
                        "attention_mask": torch.ones_like(tokens[active]),
                        "block_bounds": torch.stack([start[active], start[active] + b], -1) - lengths[active, None],
                        "active_rows": active,  # the rows still decoding (finished ones have left the batch)
                    }
                    callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs if k in available}
                    outputs = callback_on_step_end(self, step, scheduler.timesteps[0], callback_kwargs)
                    logits = outputs.pop("logits", logits)
                step_output = scheduler.step_rows(
                    logits,
                    block,
                    step_in_block=step_in_block[active],
                    masked_at_start=masked_at_start[active],
                    mask_token_id=mask_token_id,
                    confidence_logits=confidence_logits,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    threshold=threshold,
                    generator=generator,
                )
                block = step_output.prev_sample
                tokens[active[:, None], columns] = block
                step_in_block[active] += 1
                check = resampler is not None and (step + 1) % resample_every == 0
                if check:  # the potentials of the rows still decoding, before any of them moves on or stops
                    if potential == "hard":  # the denoised estimate, read up to the end of each row's block
                        estimate = tokens[active].scatter(1, columns, step_output.sampled_tokens)
                        response = estimate.gather(1, (lengths[active, None] + span).clamp(max=width - 1))
                        end = columns[:, -1] + 1 - lengths[active]
                        value = scorer.reward_of_tokens(response, end=end, rows=active)
                    else:
                        value = scorer.guidance_reward
                    check = value is not None
                    if check:
                        potentials[active] = value.to(potentials.dtype)
                if frames is not None:
                    frames.append(tokens.gather(1, lengths[:, None] + torch.arange(gen_length, device=device)))
                full = (block != mask_token_id).all(-1)
                in_response = columns >= lengths[active, None]
                stopped = (torch.isin(block, stops) & in_response).any(-1) | (columns[:, -1] + 1 >= ends[active])
                done = full & stopped
                # the step's one host sync: which rows commit their block, and which of them are finished (a
                # finished row's last block is never read again: it is not committed)
                commit = full & ~done
                any_commit, any_full, any_done = torch.stack([commit.any(), full.any(), done.any()]).tolist()
                if any_commit and cache is not None:
                    forward(active, commit=commit)
                    nfe += 1
                    row_nfe[active[commit]] += 1
                if any_full:
                    moved = active[full & ~done]
                    start[moved] += b
                    step_in_block[moved] = 0
                    next_block = tokens[moved].gather(1, start[moved, None] + offsets)
                    masked_at_start[moved] = (next_block == mask_token_id).sum(-1)
                if any_done:
                    keep = ~done
                    if resampler is not None:  # a finished row's potential is its response's reward from now on
                        finished_rows = active[done]
                        final = tokens[finished_rows].gather(1, lengths[finished_rows, None] + span)
                        final = scorer.reward_of_tokens(final, rows=finished_rows)
                        potentials[finished_rows] = final.to(potentials.dtype)
                        is_active[finished_rows] = False
                    active = active[keep]
                    if cache is not None:
                        cache.select_rows(keep.nonzero().squeeze(1))
                step += 1
                progress_bar.update()
                if check and active.numel():  # the last step is left to the end of the call, as without blocks
                    index = resampler.check(potentials, nfe)
                    if index is not None:
                        # the cache row of each new active row is its source's (every source is still decoding)
                        cache_row = torch.full_like(lengths, -1)
                        cache_row[active] = torch.arange(active.numel(), device=device)
                        tokens, start, step_in_block = tokens[index], start[index], step_in_block[index]
                        masked_at_start, potentials = masked_at_start[index], potentials[index]
                        is_active = is_active[index]
                        active = is_active.nonzero().squeeze(1)  # one more sync, at a resampling only
                        if cache is not None:
                            cache.select_rows(cache_row[index[active]])
                        if frames is not None:
                            frames = [frame[index] for frame in frames]

        responses = tokens.gather(1, lengths[:, None] + torch.arange(gen_length, device=device))
        eos = self.eos_token_id
        if eos is not None:  # after a row's first stop id, end-of-sequence (nothing there was decoded)
            after = torch.isin(responses, stops).int().cumsum(-1) > 0
            first = torch.isin(responses, stops) & (after.int().cumsum(-1) == 1)
            responses = torch.where(after & ~first, eos, responses)
        return responses, nfe, row_nfe, frames

    def _reward_guidance(self, reward_model, reward_tokenizer, reward_template, **settings) -> RewardGuidance:
        """The [`RewardGuidance`] of a call with `reward_model=`: the previous call's when it had the same reward
        models, tokenizers and template (so that their vocabulary maps are not built again), with this call's
        settings. The pipeline keeps it, and with it the reward model, until a call with another reward."""
        models = tuple(reward_model) if isinstance(reward_model, (list, tuple)) else (reward_model,)
        tokenizers = tuple(reward_tokenizer) if isinstance(reward_tokenizer, (list, tuple)) else (reward_tokenizer,)
        key = (models, tokenizers, reward_template)
        cached = getattr(self, "_last_reward_guidance", None)
        if cached is not None and _same_objects(cached[0], key):
            cached[1].register_to_config(**settings)  # checked by `check_inputs` with the same rules
            return cached[1]
        guidance = RewardGuidance(reward_model, reward_tokenizer, reward_template=reward_template, **settings)
        self._last_reward_guidance = (key, guidance)
        return guidance

    def encode_prompt(self, prompt=None, messages=None, input_ids=None) -> tuple[list[list[int]], list[str]]:
        """Prompt token ids (chat template when the tokenizer has one) and the prompts as text."""
        if input_ids is not None:
            rows = [row.tolist() for row in input_ids]
            return rows, self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        if messages is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not getattr(self.tokenizer, "chat_template", None):
                return self.tokenizer(prompts)["input_ids"], prompts
            messages = [[{"role": "user", "content": p}] for p in prompts]
        else:
            messages = [messages] if isinstance(messages[0], dict) else messages
            prompts = [next(m["content"] for m in reversed(conv) if m["role"] == "user") for conv in messages]
        texts = [
            self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) for conv in messages
        ]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"], prompts

    def prepare_sequences(
        self, prompt_ids: list[list[int]], num_samples_per_prompt: int, gen_length: int, mask_token_id: int, device
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """`[left-padded prompt | gen_length masks]` for every sample, `(B*K, P + L)`, and its attention mask."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else mask_token_id
        width = max(len(ids) for ids in prompt_ids)
        prompts = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompts)
        for i, ids in enumerate(prompt_ids):
            prompts[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[i, width - len(ids) :] = 1
        sequences = torch.cat([prompts, torch.full((len(prompt_ids), gen_length), mask_token_id)], dim=1)
        attention_mask = torch.cat([prompt_mask, torch.ones(len(prompt_ids), gen_length, dtype=torch.long)], dim=1)
        return (
            sequences.repeat_interleave(num_samples_per_prompt, 0).to(device),
            attention_mask.repeat_interleave(num_samples_per_prompt, 0).to(device),
        )

    def model_inputs(self, attention_mask: torch.LongTensor) -> dict[str, torch.Tensor]:
        """Attention mask and position ids that make left padding invisible, for the arguments the model takes."""
        accepted = inspect.signature(self.model.forward).parameters
        inputs = {}
        if "attention_mask" in accepted and not bool(attention_mask.all()):
            if "dream" in str(getattr(self.model.config, "model_type", "")).lower():
                # Dream attends bidirectionally and expects the pairwise mask its own generate() builds.
                valid = attention_mask.bool()
                inputs["attention_mask"] = valid[:, None, :, None] & valid[:, None, None, :]
            else:
                inputs["attention_mask"] = attention_mask
        if "position_ids" in accepted:
            inputs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return inputs

    @_ends_call_cleanly
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *,
        messages: list | None = None,
        input_ids: torch.LongTensor | None = None,
        reward_model: Any = None,
        reward_tokenizer: Any = None,
        reward_prompt: str | list[str] | None = None,
        reward_template: Any = None,
        guidance: str | None = None,
        guidance_steps: int = 3,
        guidance_lr: float = 0.5,
        guidance_scope: str | None = None,
        entropy_weight: str = "fixed",
        num_inference_steps: int = 128,
        gen_length: int = 128,
        num_samples_per_prompt: int = 4,
        temperature: float = 0.7,
        top_p: float | None = 0.95,
        top_k: int | None = None,
        block_length: int | None = None,
        threshold: float | None = None,
        minimal_topk: int | None = None,
        mask_token_id: int | None = None,
        kv_cache: str | None = "auto",
        resample: str = "none",
        resample_every: int = 4,
        resample_ess: float = 0.5,
        resample_temperature: float = 0.1,
        potential: str = "hard",
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        output_trajectory: bool = False,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> EntRGiPipelineOutput | tuple:
        r"""
        Generates `num_samples_per_prompt` responses per prompt, guided toward higher reward when a reward model is
        given.

        Args:
            prompt (`str` or `list[str]`): the prompt(s). Alternatively `messages` or `input_ids`. Every other
                argument is keyword-only.
            messages (`list`, *optional*): a conversation (list of role/content dicts) or a list of them.
            input_ids (`torch.LongTensor`, *optional*): prompt token ids `(B, P)` (no padding).
            reward_model (*optional*): an HF `*ForSequenceClassification` with one label, a differentiable reward
                (`(inputs_embeds, attention_mask) -> (N,)` with `get_input_embeddings()`), or a list of them. With it,
                the output's `rewards` score every sample and `texts` keeps the best sample of each prompt. The
                pipeline keeps the [`RewardGuidance`] it builds and reuses it (and its vocabulary maps) in the next
                call with the same reward models, tokenizers and template.
            reward_tokenizer (*optional*): the reward model's tokenizer; defaults to `self.tokenizer`.
            reward_prompt (`str` or `list[str]`, *optional*): the text in the reward model's prompt slot, one per
                prompt (e.g. a target description); defaults to the prompts.
            reward_template ([`RewardTemplate`], *optional*): where the prompt (`{prompt}`), the reward prompt
                (`{target}`) and the response (`{response}`) go in the reward model's input, e.g. a judge that reads
                the response inside the user turn; defaults to the reward model's own `reward_template`, else
                `[user: {target}, assistant: {response}]`. See [`RewardGuidance`].
            guidance (`str`, *optional*): `"entrgi"` (default with a reward model), `"aps"`, `"expectation"` or
                `"none"` (unguided samples, best by reward: Best-of-N).
            guidance_steps (`int`, defaults to 3): Adam steps `M` on the logits per denoising step.
            guidance_lr (`float`, defaults to 0.5): Adam learning rate `eta`.
            guidance_scope (`str`, *optional*): with blocks, what the reward model sees: `"response"` (the default,
                chosen by measurement: docs/decoding.md) every masked position as the method's soft/hard mix, all of
                them guided; `"block"` the response up to the current block's end, only the current block's masked
                positions guided (cheaper). The same with one block.
            entropy_weight (`str`, defaults to `"fixed"`): with `guidance="entrgi"`, when `w = H / log V` is
                computed: `"fixed"` once per denoising step from the model's logits (this project's rule, which
                scored higher here), `"step"` from the optimised logits at every Adam step (the authors' scripts).
            num_inference_steps (`int`, defaults to 128): denoising steps `T` of the whole response, over all its
                blocks (with blocks, each block gets `T / num_blocks`). diffusers' `LLaDA2Pipeline` counts its
                `num_inference_steps` per block instead: its `num_inference_steps=S` with `block_length=b` and
                `gen_length=L` is `num_inference_steps=S * L // b` here.
            gen_length (`int`, defaults to 128): response length `L` in tokens.
            num_samples_per_prompt (`int`, defaults to 4): samples `K` per prompt.
            temperature (`float`, defaults to 0.7): sampling temperature `tau` (>= 0); 0 decodes greedily (the
                argmax; guidance then relaxes `softmax(phi)` and feeds the argmax as the hard token).
            top_p (`float`, *optional*, defaults to 0.95): nucleus sampling mass.
            top_k (`int`, *optional*): sample among the `top_k` most likely tokens.
            block_length (`int`, *optional*): decode the response in blocks of this many tokens, left to right
                (LLaDA's semi-autoregressive sampling); overrides the scheduler's `block_length` for this call. It
                must divide `gen_length`, and the number of blocks must divide `num_inference_steps`. With blocks the
                call stops once every response is committed up to its first end-of-sequence token, and the rest of
                each response is end-of-sequence.
            threshold (`float`, *optional*): threshold (parallel) decoding: commit every candidate of the current
                block whose confidence is at least this, in (0, 1]; overrides the scheduler's `threshold`.
                `num_inference_steps` stays the budget; `nfe` in the output counts the model calls made.
            minimal_topk (`int`, *optional*): with `threshold`, the fewest positions a step commits (the
                scheduler's `minimal_topk`, 1, by default).
            mask_token_id (`int`, *optional*): overrides the mask id.
            kv_cache (`str`, *optional*, defaults to `"auto"`): the dLLM's key/value cache. `"auto"`: the scheduler
                config's `kv_cache` (saved with the pipeline), whose default `"auto"` is the exact cache
                of a block-diffusion model, none for a full-attention one. `"prefix"` and `"dual"`: Fast-dLLM's
                approximate caches for the native full-attention models (`DreamModel`, `LLaDAModelLM`): at each
                block's first step one forward over the whole sequence fills the cache; the block's later steps run
                only the block and everything after it (`"prefix"`, attending to the cached keys and values before
                the block) or only the block (`"dual"`, attending to the cached ones before and after it). Faster,
                and not the same tokens as no cache. Without blocks the whole response is the block: both then cache
                the prompt only, and are the same. `"dual"` with several blocks has logits for the current block
                only, so its default `guidance_scope` is `"block"` and `"response"` is refused. None: no cache.
            resample (`str`, defaults to `"none"`): `"smc"` treats each prompt's K samples as particles of sequential
                Monte Carlo: every `resample_every` denoising steps, sample `k` weighs
                `w_k = exp((r_k(now) - r_k(before)) / resample_temperature)` (`r`: the `potential`, `before`: the
                prompt's last resampling, or the start), and when the effective sample size `(sum w)^2 / sum w^2`
                is below `resample_ess * K`, K samples are drawn by systematic resampling (from `generator`) and
                copied, partial responses and all. At the end of the call every sample weighs its accumulated
                weight by its reported reward, and the same rule may resample the finished samples (so `all_texts`
                can repeat a sample) before the best is chosen. A potential that is not finite gives its sample
                weight zero; a prompt without a sample of finite weight is not resampled (one warning per call).
                Needs a reward (`reward_model=`, any `guidance`, `"none"` included) and K >= 2. See
                docs/methods.md.
            resample_every (`int`, defaults to 4): weigh the samples after every this many denoising steps (counted
                as steps taken: with threshold decoding, model calls).
            resample_ess (`float`, defaults to 0.5): resample a prompt when its effective sample size is below this
                fraction of K, in (0, 1] (1: whenever the weights are not all equal).
            resample_temperature (`float`, defaults to 0.1): the potential's temperature (> 0): lower resamples
                more greedily, very large never resamples.
            potential (`str`, defaults to `"hard"`): `"hard"`: the reward of the step's denoised estimate (committed
                tokens plus the tokens this step sampled at the current block's masked positions, read up to the
                block's end), one more reward forward per check, no backward; `"guidance"`: the reward that the
                last Adam step of the step computed on the method's input (free; needs gradient guidance; steps
                without guidance are not checked).
            generator (`torch.Generator`, *optional*): makes generation reproducible.
            return_dict (`bool`, defaults to `True`): return an [`EntRGiPipelineOutput`] or a tuple.
            output_trajectory (`bool`, defaults to `False`): also return the response tokens after every step
                (`trajectory`, `(nfe, B, K, L)`, masks included), e.g. to animate the denoising. Off, nothing is kept.
            callback_on_step_end (*optional*): a function `(pipe, step, timestep, callback_kwargs) -> dict`, a
                `PipelineCallback` (such as [`RewardGuidance`]) or `MultiPipelineCallbacks`, called after the model's
                forward pass and before the scheduler step; returned tensors replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the tensors a function callback receives,
                among `logits` `(N, L, V)`, `response_tokens` `(N, L)`, `sequences` `(N, P + L)`, `attention_mask`,
                `block_bounds` `(N, 2)` (each row's current block, response positions `[start, end)`), and for
                block-causal models `active_rows` (the samples still decoding, in batch order).

        Examples:

        Returns:
            [`EntRGiPipelineOutput`] or `tuple` `(texts, all_texts, rewards, sequences)`, with `trajectory` appended
            to the tuple only when `output_trajectory=True`. With resampling, the trajectory follows each final
            sample's ancestors (its rows are reordered at every resampling).
        """
        # 1. Check inputs ("auto" defers to the scheduler's config, whose "auto" is the model's own cache)
        if isinstance(kv_cache, str) and kv_cache == "auto":
            kv_cache = self.scheduler.config.get("kv_cache", "auto")
        self.check_inputs(
            prompt=prompt,
            messages=messages,
            input_ids=input_ids,
            reward_model=reward_model,
            reward_tokenizer=reward_tokenizer,
            reward_prompt=reward_prompt,
            reward_template=reward_template,
            guidance=guidance,
            guidance_steps=guidance_steps,
            guidance_lr=guidance_lr,
            guidance_scope=guidance_scope,
            entropy_weight=entropy_weight,
            num_inference_steps=num_inference_steps,
            gen_length=gen_length,
            num_samples_per_prompt=num_samples_per_prompt,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            block_length=block_length,
            threshold=threshold,
            minimal_topk=minimal_topk,
            mask_token_id=mask_token_id,
            kv_cache=kv_cache,
            resample=resample,
            resample_every=resample_every,
            resample_ess=resample_ess,
            resample_temperature=resample_temperature,
            potential=potential,
            generator=generator,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        scorer = None
        if reward_model is not None:  # built here, so that a reward model guidance cannot feed is refused up front
            scorer = self._reward_guidance(
                reward_model,
                reward_tokenizer,
                reward_template,
                guidance=guidance or "entrgi",
                guidance_steps=guidance_steps,
                guidance_lr=float(guidance_lr),
                entropy_weight=entropy_weight,
            )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["logits", "response_tokens"]
        device = self._execution_device
        mask_token_id = self.resolve_mask_token_id(mask_token_id)
        K, L = num_samples_per_prompt, gen_length

        # 2. Encode prompts
        prompt_ids, prompt_texts = self.encode_prompt(prompt, messages, input_ids)
        reward_prompts = [reward_prompt] * len(prompt_ids) if isinstance(reward_prompt, str) else reward_prompt
        reward_prompts = reward_prompts or prompt_texts
        # The one check that needs the encoded lengths: still before any model work.
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(ids) for ids in prompt_ids) + L
        if max_positions is not None and longest > max_positions:
            raise ValueError(
                f"The longest prompt plus `gen_length` is {longest} tokens, more than the model's "
                f"{max_positions} positions: shorten the prompt or lower `gen_length`."
            )

        # 3. Prepare sequences, guidance and timesteps
        sequences, attention_mask = self.prepare_sequences(prompt_ids, K, L, mask_token_id, device)
        model_inputs = self.model_inputs(attention_mask)
        start = sequences.shape[1] - L
        # Random draws on the model's device: a generator elsewhere (a CPU one with a CUDA model) seeds one there.
        generator = device_generator(generator, device)
        self._sampling = {
            "mask_token_id": mask_token_id,
            "eos_token_id": self.eos_token_id,
            "temperature": float(temperature),
            "top_p": top_p,
            "top_k": top_k,
            "generator": generator,
            # only the current block has logits on a block-causal model, and with the dual cache and several blocks
            "guidance_scope": guidance_scope
            or ("block" if self.block_causal or self._dual_blocks(kv_cache, block_length, L) else "response"),
        }
        if scorer is not None:
            callback_on_step_end = _guidance_first(scorer, callback_on_step_end, callback_on_step_end_tensor_inputs)
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        guidances = _find_callbacks(callback_on_step_end, RewardGuidance)
        for callback in guidances:
            callback.prepare(
                self,
                [p for p in reward_prompts for _ in range(K)],
                prompts=[p for p in prompt_texts for _ in range(K)],
                settings=self._sampling,
            )
        scorer = scorer or (guidances[0] if guidances else None)
        B = len(prompt_ids)
        resampler = None
        if resample == "smc":
            resampler = ParticleResampler(
                B,
                K,
                ess_threshold=resample_ess,
                temperature=resample_temperature,
                generator=generator,
                device=sequences.device,
            )
        if self.block_causal:  # block by block against an exact key/value cache, every row on its own
            frames = [] if output_trajectory else None
            responses, nfe, row_nfe, frames = self._decode_block_causal(
                prompt_ids,
                K,
                L,
                mask_token_id,
                num_inference_steps=num_inference_steps,
                kv_cache=kv_cache,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                threshold=threshold,
                generator=generator,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                frames=frames,
                resampler=resampler,
                resample_every=resample_every,
                potential=potential,
                scorer=scorer,
            )
            return self._outputs(
                responses,
                nfe,
                frames,
                scorer,
                resampler,
                guidances,
                len(prompt_ids),
                K,
                L,
                return_dict,
                output_trajectory,
                row_nfe,
            )
        self.scheduler.set_timesteps(num_inference_steps, device=device, gen_length=L, block_length=block_length)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        blockwise = (block_length or self.scheduler.config.block_length) is not None
        eos_token_id = self.eos_token_id

        rows_on_their_own = (
            blockwise
            and (self.scheduler.config.threshold if threshold is None else threshold) is not None
            and resampler is None
            and kv_cache not in ("prefix", "dual")
            and not getattr(self, "_lockstep", False)
        )
        sampling = dict(
            mask_token_id=mask_token_id,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            eos_token_id=eos_token_id,
            threshold=threshold,
            minimal_topk=minimal_topk,
            generator=generator,
        )
        if rows_on_their_own:  # threshold decoding: a row whose block is full moves on without waiting
            sequences, nfe, frames, row_nfe = self._decode_rows(
                sequences,
                attention_mask,
                start,
                sampling,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                output_trajectory=output_trajectory,
            )
            if eos_token_id is not None:
                finished = self.scheduler.finished(sequences[:, start:], mask_token_id, eos_token_id)
                sequences[:, start:] = self.scheduler.fill_after_eos(sequences[:, start:], finished, eos_token_id)
            return self._outputs(
                sequences[:, start:],
                nfe,
                frames,
                scorer,
                None,
                guidances,
                B,
                K,
                L,
                return_dict,
                output_trajectory,
                row_nfe,
            )

        # 4. Denoising loop: the scheduler says which step comes next (it skips the rest of a block that is full).
        # One host sync per step (the `nonzero` of the masked positions, shared by guidance and the scheduler); the
        # NaN checks stay on the device until the loop ends.
        frames = [] if output_trajectory else None
        nfe, i = 0, 0
        # Fast-dLLM's approximate caches: filled by each block's first forward, read by the block's later steps
        cache = FullAttentionKVCache() if kv_cache in ("prefix", "dual") else None
        cached_block, buffer = None, None  # the block the cache was filled at; the (N, L, V) logits it gave
        first_nonfinite = first_invalid = torch.full((), -1, device=device)
        self.scheduler.set_begin_index(0)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            while i < len(timesteps):
                t = timesteps[i]
                # every row's current block, `(N, 2)` response positions [start, end), for the callbacks
                block_start, block_end = self.scheduler.block_bounds(i)
                block_bounds = torch.full((sequences.shape[0], 2), block_start, device=device)
                block_bounds[:, 1] = block_end  # filled on the device: no host-to-device copy
                block = i // self.scheduler.steps_per_block
                if cache is None or block != cached_block:  # the whole sequence (filling the cache, if any)
                    logits = self.model(
                        sequences, **model_inputs, **({} if cache is None else {"past_key_values": cache})
                    )
                    logits = logits.logits
                    logits = logits[:, start - 1 : start - 1 + L] if self.logits_shift else logits[:, start:]
                    fresh = buffer = logits
                    cached_block = block
                else:  # the block (and with "prefix" all after it); the other positions keep the fill's logits
                    end = L if kv_cache == "prefix" else block_end
                    fresh = self._read_cache(cache, sequences, model_inputs, buffer, start, block_start, end)
                    logits = buffer
                nfe += 1
                fresh[..., mask_token_id] = float("-inf")  # guidance and sampling never propose the mask
                first_nonfinite = _first_bad_step(first_nonfinite, ~fresh.amax(-1).isfinite().all(), i)
                response_tokens = sequences[:, start:]
                positions = self.scheduler.masked_positions(response_tokens, mask_token_id)
                available = {
                    "sequences": sequences,
                    "attention_mask": attention_mask,
                    "block_bounds": block_bounds,
                }  # every row decodes until the end here: no `active_rows`
                step_output = self._callbacks_then_step(
                    self.scheduler,
                    logits,
                    t,
                    i,
                    response_tokens,
                    positions,
                    available,
                    callback_on_step_end,
                    callback_on_step_end_tensor_inputs,
                    sampling,
                )
                first_invalid = _first_bad_step(first_invalid, step_output.invalid_rows > 0, i)
                response_tokens = step_output.prev_sample
                sequences = torch.cat([sequences[:, :start], response_tokens], dim=1)
                if frames is not None:
                    frames.append(response_tokens)  # a fresh tensor each step: nothing later writes into it
                progress_bar.update(self.scheduler.step_index - i)
                i = self.scheduler.step_index
                finished = None
                if blockwise and eos_token_id is not None:
                    finished = self.scheduler.finished(response_tokens, mask_token_id, eos_token_id)
                last = i >= len(timesteps) or (finished is not None and bool(finished.all()))
                # SMC: the last step is left to the end of the call, which weighs the finished samples
                if resampler is not None and not last and nfe % resample_every == 0:
                    if potential == "hard":  # the denoised estimate, read up to the end of the block just decoded
                        value = scorer.reward_of_tokens(step_output.sampled_tokens, end=block_bounds[:, 1])
                    else:
                        value = scorer.guidance_reward
                    index = resampler.check(value, nfe) if value is not None else None
                    if index is not None:
                        sequences, response_tokens = sequences[index], response_tokens[index]
                        if cache is not None:  # the cache's rows follow their samples
                            cache.reorder(index)
                            buffer = buffer[index]
                        frames = [frame[index] for frame in frames] if frames is not None else None
                        finished = finished[index] if finished is not None else None
                        last = finished is not None and bool(finished.all())
                if last:  # nothing left can change any text: no further model calls
                    break
        _check_lazily(first_nonfinite, first_invalid, len(timesteps))

        if blockwise and eos_token_id is not None:
            finished = self.scheduler.finished(sequences[:, start:], mask_token_id, eos_token_id)
            sequences[:, start:] = self.scheduler.fill_after_eos(sequences[:, start:], finished, eos_token_id)

        # 5. Decode and score on the discrete tokens
        return self._outputs(
            sequences[:, start:], nfe, frames, scorer, resampler, guidances, B, K, L, return_dict, output_trajectory
        )

    def _decode_rows(
        self,
        sequences: torch.LongTensor,
        attention_mask: torch.LongTensor,
        start: int,
        sampling: dict[str, Any],
        *,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: list[str],
        output_trajectory: bool,
    ) -> tuple[torch.LongTensor, int, list | None, torch.LongTensor]:
        """Threshold decoding of a full-attention model with blocks, every row on its own.

        Each row is at its own step of the scheduler's timesteps: a row whose block is full moves to its next
        block's first step at once (the rows of one call no longer wait for the slowest), and a row that is
        finished (its first end-of-sequence token committed with everything before it, or its last block full)
        leaves the batch, so it costs no further model or reward compute. Every step runs the whole sequence of
        the rows still decoding, with the scheduler's own rules per row (`step(row_steps=...)`). At
        `temperature=0` every row gets the tokens it gets alone. Returns the sequences, the number of model calls,
        the trajectory frames (or None) and each row's calls.
        """
        scheduler, device = self.scheduler, sequences.device
        total_steps, per_block = len(scheduler.timesteps), scheduler.steps_per_block
        model_inputs = self.model_inputs(attention_mask)
        shift = int(self.logits_shift)
        L = sequences.shape[1] - start
        mask_token_id, eos_token_id = sampling["mask_token_id"], sampling["eos_token_id"]
        row_steps = torch.zeros(sequences.shape[0], dtype=torch.long, device=device)
        row_nfe = torch.zeros_like(row_steps)
        active = torch.arange(sequences.shape[0], device=device)
        frames = [] if output_trajectory else None
        first_nonfinite = first_invalid = torch.full((), -1, device=device)
        nfe = 0
        with self.progress_bar(total=total_steps) as progress_bar:
            while active.numel():
                rows = sequences[active]
                inputs = {name: value[active] for name, value in model_inputs.items()}
                logits = self.model(rows, **inputs).logits[:, start - shift : start - shift + L]
                logits[..., mask_token_id] = float("-inf")  # guidance and sampling never propose the mask
                first_nonfinite = _first_bad_step(first_nonfinite, ~logits.amax(-1).isfinite().all(), nfe)
                steps = row_steps[active]
                response_tokens = rows[:, start:]
                # the step's host sync: the rows' candidates, shared by guidance and the scheduler
                positions = scheduler.masked_positions(response_tokens, mask_token_id, row_steps=steps)
                block_start = steps // per_block * scheduler.block_length
                available = {
                    "sequences": rows,
                    "attention_mask": attention_mask[active],
                    "block_bounds": torch.stack([block_start, block_start + scheduler.block_length], -1),
                    "active_rows": active,  # the rows still decoding (finished ones have left the batch)
                }
                step_output = self._callbacks_then_step(
                    scheduler,
                    logits,
                    scheduler.timesteps[0],
                    nfe,
                    response_tokens,
                    positions,
                    available,
                    callback_on_step_end,
                    callback_on_step_end_tensor_inputs,
                    sampling,
                    row_steps=steps,
                )
                first_invalid = _first_bad_step(first_invalid, step_output.invalid_rows > 0, nfe)
                response_tokens = step_output.prev_sample
                sequences[active, start:] = response_tokens
                nfe += 1
                row_nfe[active] += 1
                if frames is not None:
                    frames.append(sequences[:, start:].clone())
                block_full = ~scheduler.candidates(response_tokens, mask_token_id, steps).any(-1)
                steps = torch.where(block_full, (steps // per_block + 1) * per_block, steps + 1)
                row_steps[active] = steps
                done = steps >= total_steps
                if eos_token_id is not None:
                    done |= scheduler.finished(response_tokens, mask_token_id, eos_token_id)
                keep = ~done
                active = active[keep]  # the second host sync: which rows stay
                progress_bar.update()
        _check_lazily(first_nonfinite, first_invalid, total_steps)
        return sequences, nfe, frames, row_nfe

    def _callbacks_then_step(
        self,
        scheduler: MaskedDiffusionScheduler,
        logits: torch.Tensor,
        timestep,
        step_index: int,
        response_tokens: torch.LongTensor,
        positions: tuple[torch.LongTensor, torch.LongTensor] | None,
        available: dict[str, Any],
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: list[str],
        sampling: dict[str, Any],
        row_steps: torch.LongTensor | None = None,
    ):
        """One step of a full-attention loop after the forward: the callbacks (guidance first) may replace the
        logits, then the scheduler samples and commits. Returns the scheduler's output."""
        confidence_logits = logits
        if callback_on_step_end is not None:
            available = {
                "logits": logits,
                "response_tokens": response_tokens,
                "masked_positions": positions,
                **available,
            }
            callback_kwargs = {k: available[k] for k in callback_on_step_end_tensor_inputs if k in available}
            outputs = callback_on_step_end(self, step_index, timestep, callback_kwargs)
            logits = outputs.pop("logits", logits)
            # guidance that edited the logits in place hands the model's rows at `positions` for ranking
            confidence_logits = outputs.pop("confidence_logits", confidence_logits)
            edited = outputs.pop("response_tokens", response_tokens)
            if edited is not response_tokens:  # the positions are stale: the scheduler finds them again
                response_tokens, positions = edited, None
                confidence_logits = confidence_logits if confidence_logits.dim() == 3 else logits
        return scheduler.step(
            logits,
            timestep,
            response_tokens,
            confidence_logits=confidence_logits,
            masked_positions=positions,
            row_steps=row_steps,
            **sampling,
        )

    def _read_cache(
        self,
        cache: FullAttentionKVCache,
        sequences: torch.LongTensor,
        model_inputs: dict[str, torch.Tensor],
        logits: torch.Tensor,
        start: int,
        first: int,
        end: int,
    ) -> torch.Tensor:
        """One forward against Fast-dLLM's cache: runs the response positions `[first, end)` (a model with shifted
        logits from the token before them, whose logits score the first) and writes their logits into `logits`
        `(N, L, V)`; returns that slice. The other columns are read from the cache."""
        shift = int(self.logits_shift)
        lo, hi = start + first - shift, start + end
        inputs = {}
        for name, value in model_inputs.items():
            if name == "position_ids":
                value = value[:, lo:hi]
            elif value.dim() == 4:  # a pairwise mask: the input's query rows over every key
                value = value[:, :, lo:hi]
            inputs[name] = value  # a (N, S) padding mask covers every key as it is
        columns = torch.arange(lo, hi, device=sequences.device)
        out = self.model(sequences[:, lo:hi], past_key_values=cache, cache_position=columns, **inputs).logits
        logits[:, first:end] = out[:, : end - first]
        return logits[:, first:end]

    def _outputs(
        self,
        responses: torch.LongTensor,
        nfe: int,
        frames: list | None,
        scorer: RewardGuidance | None,
        resampler: ParticleResampler | None,
        guidances: list[RewardGuidance],
        B: int,
        K: int,
        L: int,
        return_dict: bool,
        output_trajectory: bool,
        row_nfe: torch.LongTensor | None = None,
    ) -> EntRGiPipelineOutput | tuple:
        """Step 5 of a call: decode the responses `(B*K, L)`, score them on their discrete tokens, pick the best."""
        mask_token_id = self._sampling["mask_token_id"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else mask_token_id
        visible = visible_before_eos(responses, self.eos_token_id)
        texts = [
            t.strip()
            for t in self.tokenizer.batch_decode(torch.where(visible, responses, pad), skip_special_tokens=True)
        ]
        rewards = best = None
        if scorer is not None:
            rewards = scorer.score_texts(texts)
        if resampler is not None:
            # The end: every sample weighs its accumulated weight, the final potential being its reported reward.
            index = resampler.check(rewards, nfe)
            if index is not None:
                responses, rewards = responses[index], rewards[index.to(rewards.device)]
                texts = [texts[j] for j in index.tolist()]
                frames = [frame[index] for frame in frames] if frames is not None else None
            resampler.warn_nonfinite()
        all_texts = [texts[b * K : (b + 1) * K] for b in range(B)]
        if rewards is not None:
            rewards = rewards.reshape(B, K)
            best = rewards.nan_to_num(nan=-math.inf).argmax(-1).tolist()  # a NaN reward is never the best
        best_texts = [all_texts[b][best[b] if best else 0] for b in range(B)]
        sequences_out = responses.reshape(B, K, L).cpu()
        trajectory = torch.stack(frames).reshape(len(frames), B, K, L).cpu() if frames is not None else None
        for callback in guidances:
            callback.finish()  # warns once if guidance fell back to the model's logits anywhere
        self._sampling = {}
        self.maybe_free_model_hooks()

        if not return_dict:
            # The tuple grows only on request, so existing 4-way unpacking keeps working.
            return (best_texts, all_texts, rewards, sequences_out) + ((trajectory,) if output_trajectory else ())
        return EntRGiPipelineOutput(
            texts=best_texts,
            all_texts=all_texts,
            rewards=rewards,
            sequences=sequences_out,
            trajectory=trajectory,
            nfe=nfe,
            row_nfe=row_nfe.reshape(B, K).cpu() if row_nfe is not None else None,
            resample_steps=resampler.steps if resampler is not None else None,
            ess=resampler.ess if resampler is not None else None,
            resampled=resampler.resampled if resampler is not None else None,
            ancestry=resampler.ancestry if resampler is not None else None,
        )


class _ThenCall:
    """Runs guidance, then a user's function callback, as one callback."""

    def __init__(self, first: PipelineCallback, then: Callable, then_inputs: list[str]):
        self.first, self.then, self.then_inputs = first, then, then_inputs

    @property
    def tensor_inputs(self) -> list[str]:
        return list(dict.fromkeys([*self.first.tensor_inputs, *self.then_inputs]))

    def __call__(self, pipeline, step_index, timestep, callback_kwargs):
        callback_kwargs = self.first(pipeline, step_index, timestep, callback_kwargs)
        outputs = self.then(pipeline, step_index, timestep, {k: callback_kwargs[k] for k in self.then_inputs})
        return {**callback_kwargs, **(outputs or {})}
