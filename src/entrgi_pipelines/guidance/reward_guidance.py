"""`RewardGuidance`: EntRGi (and its baselines) as a diffusers step-end callback."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.callbacks import PipelineCallback

from ..validation import check_integer, check_number
from .entrgi import ENTROPY_WEIGHTS, GUIDANCE_METHODS, entrgi_embeddings, optimize_logits
from .prefix_cache import BlockCache
from .rewards import RewardTerm, as_differentiable_reward, visible_before_eos
from .templates import RewardTemplate
from .vocab import UNMAPPED_POLICIES, VocabularyMap

logger = logging.getLogger(__name__)


def _visible_until(visible: torch.BoolTensor, end: int | torch.LongTensor | None) -> torch.BoolTensor:
    """`visible` with the positions from `end` on hidden (`end`: one position for all rows, or one per row)."""
    if end is None:
        return visible
    positions = torch.arange(visible.shape[1], device=visible.device)
    end = torch.as_tensor(end, device=visible.device)
    return visible & (positions < end.reshape(-1, 1))


class RewardGuidance(PipelineCallback):
    """
    Steers a masked diffusion LM toward higher reward by gradient ascent on the logits of its masked positions.

    At every denoising step, after the model's forward pass and before the scheduler samples, the logits `phi` of
    the masked response positions are optimised by `guidance_steps` steps of a fresh Adam optimiser (learning rate
    `guidance_lr`) on the summed reward. The reward model sees, at each masked position, the embedding
    `soft + stopgrad(w * (hard - soft))`, where `soft` is the expected embedding under `softmax(phi / tau)`, `hard`
    the embedding of a token sampled from `softmax(top_p(phi / tau))`, and `w` depends on `guidance`:

        - `"entrgi"`: `w = H(softmax(phi)) / log V`, the normalised entropy of the untempered logits;
        - `"aps"`: `w = 1` (straight-through estimator);
        - `"expectation"`: `w = 0` (continuous relaxation);
        - `"none"`: no guidance (the callback passes the logits through).

    Committed response tokens enter as their own embeddings; positions after a response's first end-of-sequence
    token are hidden from the reward model. Only the logits receive gradients: the diffusion and reward models are
    left exactly as they were.

    Args:
        reward_model: an HF `*ForSequenceClassification` with one label, any module or callable mapping
            `(inputs_embeds, attention_mask)` to one reward per row with `get_input_embeddings()`, or a list of them
            (their rewards are summed with `reward_weights`).
        reward_tokenizer (*optional*): the reward model's tokenizer (or one per reward model); defaults to the
            pipeline's tokenizer.
        guidance (`str`, defaults to `"entrgi"`): one of `"entrgi"`, `"aps"`, `"expectation"`, `"none"`.
        guidance_steps (`int`, defaults to 3): Adam steps `M` per denoising step.
        guidance_lr (`float`, defaults to 0.5): Adam's learning rate `eta`.
        reward_weights (`list[float]`, *optional*): weights of the reward models (all 1 when omitted).
        unmapped_tokens (`str` or `int`, defaults to `"auto"`): what diffusion tokens absent from a reward vocabulary
            become (see [`VocabularyMap.from_tokenizers`]; `"auto"`: the reward's unk token, else its pad token, else
            its eos token, which works for every pair); `vocab_coverage` reports the mapped fraction and what the
            rest became.
        padding_side (`str`, *optional*): overrides where reward inputs are padded (see `SequenceClassifierReward`).
        cutoff_step_ratio (`float`, defaults to 1.0): guide only the steps before this fraction of the schedule.
        cutoff_step_index (`int`, *optional*): guide only the steps before this index; pass it with
            `cutoff_step_ratio=None` (diffusers' `PipelineCallback` takes one of the two).
        keep_trace (`bool`, defaults to `False`): record, for every guidance step, the response tokens with the
            sampled hard tokens, the positions the reward model saw (`visible`), the reward it returned for them and
            the mixing weight `w` of each guided position (`self.trace`).
        reward_template ([`RewardTemplate`], list of messages, `str`, or a list of those, *optional*): where the
            prompt (`{prompt}`), the target (`{target}`: the pipeline's `reward_prompt`, by default the prompt) and
            the response (`{response}`) go in each reward model's input, one template or one per reward model.
            `None` uses the reward model's own `reward_template` when it has one (e.g. [`CausalLMReward`]), else
            `[user: {target}, assistant: {response}]` (a text pair for tokenizers without a chat template).
        prefix_cache (`bool`, *optional*): compute the keys and values of the conversation before the response once
            per call for causal reward models (default: wherever the model supports it; `False` turns it off).
        block_cache (`bool`, *optional*): with `guidance_scope="block"` (block-causal dLLMs, or `block_length`),
            compute the keys and values of the conversation before the response and of each row's committed blocks
            once per block for causal reward models, and feed only the current block and the text after the
            response at every Adam step (see [`RewardTerm.update_block_cache`]); the same rewards and gradients to
            float tolerance. Default: wherever the model supports it (decoder classifiers, [`CausalLMReward`]);
            `False` turns it off. Encoder rewards (BERT, MiniLM) read the whole input at every step.
        compile (`bool`, defaults to `False`): run the vocabulary-wide part of each Adam step through `torch.compile`
            (eager where compilation fails; see [`optimize_logits`] and `docs/performance.md` for when it pays off).
        entropy_weight (`str`, defaults to `"fixed"`): with `guidance="entrgi"`, when `w` is computed: `"fixed"`, once
            per denoising step from the model's logits (this project's rule); `"step"`, at every Adam step from the
            optimised logits, as the authors' scripts do (see `shared/design/method.md`).

    After each denoising step, `guidance_reward` holds the summed reward `(N,)` that the step's last Adam step
    computed on the method's input (`None` when the step was not guided): the pipeline's free `"guidance"` potential
    for SMC resampling; `reward_of_tokens` scores response tokens as committed tokens (its `"hard"` potential).

    Examples:
        ```py
        >>> import torch
        >>> from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification
        >>> from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
        >>> from entrgi_pipelines.testing import tiny_wordpiece_tokenizer

        >>> tokenizer = tiny_wordpiece_tokenizer()
        >>> config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...               intermediate_size=64)
        >>> dllm = BertForMaskedLM(BertConfig(**config)).eval()
        >>> reward_model = BertForSequenceClassification(BertConfig(num_labels=1, **config)).eval()
        >>> pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
        >>> guidance = RewardGuidance(reward_model, guidance="entrgi", guidance_steps=2)
        >>> out = pipe("the cat", callback_on_step_end=guidance, gen_length=8, num_inference_steps=4,
        ...            num_samples_per_prompt=2, generator=torch.Generator().manual_seed(0))
        >>> out.rewards.shape
        torch.Size([1, 2])
        ```
    """

    tensor_inputs = ["logits", "response_tokens", "block_bounds", "masked_positions", "active_rows"]

    def __init__(
        self,
        reward_model: Any,
        reward_tokenizer: Any = None,
        guidance: str = "entrgi",
        guidance_steps: int = 3,
        guidance_lr: float = 0.5,
        reward_weights: Sequence[float] | None = None,
        unmapped_tokens: str | int = "auto",
        padding_side: str | None = None,
        cutoff_step_ratio: float | None = 1.0,
        cutoff_step_index: int | None = None,
        keep_trace: bool = False,
        reward_template: Any = None,
        prefix_cache: bool | None = None,
        compile: bool = False,
        entropy_weight: str = "fixed",
        block_cache: bool | None = None,
    ):
        if cutoff_step_index is not None and cutoff_step_ratio == 1.0:
            cutoff_step_ratio = None  # an index alone is enough: the ratio's default must not clash with it
        if cutoff_step_ratio is not None and cutoff_step_index is not None:
            raise ValueError("Pass one of `cutoff_step_ratio` and `cutoff_step_index`, not both.")
        check_number("cutoff_step_ratio", cutoff_step_ratio, low=0.0, high=1.0, none_ok=True)
        check_integer("cutoff_step_index", cutoff_step_index, minimum=0, none_ok=True)
        cutoff_step_ratio = None if cutoff_step_ratio is None else float(cutoff_step_ratio)
        super().__init__(cutoff_step_ratio=cutoff_step_ratio, cutoff_step_index=cutoff_step_index)
        if guidance not in GUIDANCE_METHODS:
            raise ValueError(f"`guidance` must be one of {GUIDANCE_METHODS}, got {guidance!r}.")
        check_integer("guidance_steps", guidance_steps, minimum=0)
        check_number("guidance_lr", guidance_lr, low=0.0, low_open=True)
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"`padding_side` must be 'left', 'right' or None (detected), got {padding_side!r}.")
        if not (unmapped_tokens in UNMAPPED_POLICIES or isinstance(unmapped_tokens, int) and unmapped_tokens >= 0):
            raise ValueError(
                f"`unmapped_tokens` must be one of {UNMAPPED_POLICIES} or a token id, got {unmapped_tokens!r}."
            )
        models = list(reward_model) if isinstance(reward_model, (list, tuple)) else [reward_model]
        if not models or any(m is None for m in models):
            raise ValueError("`reward_model` is required for reward guidance (a model or a list of models).")
        for model in models:
            as_differentiable_reward(model, padding_side)  # refuses a model guidance cannot feed, before any work
        tokenizers = (
            reward_tokenizer if isinstance(reward_tokenizer, (list, tuple)) else [reward_tokenizer] * len(models)
        )
        weights = list(reward_weights) if reward_weights is not None else [1.0] * len(models)
        for weight in weights:
            check_number("reward_weights", weight)
        if len(tokenizers) != len(models) or len(weights) != len(models):
            raise ValueError(
                f"Got {len(models)} reward models, {len(tokenizers)} reward tokenizers and {len(weights)} "
                "`reward_weights`: give one tokenizer and one weight per reward model."
            )
        self.reward_models, self.reward_tokenizers, self.reward_weights = models, tokenizers, weights
        # One template per model: a list of templates (not a list of message dicts) gives one each.
        one_each = isinstance(reward_template, (list, tuple)) and not (
            reward_template and isinstance(reward_template[0], dict)
        )
        templates = list(reward_template) if one_each else [reward_template] * len(models)
        if len(templates) != len(models):
            raise ValueError(f"Got {len(templates)} `reward_template`s for {len(models)} reward models: give one each.")
        self.reward_templates = [None if t is None else RewardTemplate.from_any(t) for t in templates]
        if prefix_cache not in (None, True, False):
            raise ValueError(f"`prefix_cache` must be True, False or None (where supported), got {prefix_cache!r}.")
        if block_cache not in (None, True, False):
            raise ValueError(f"`block_cache` must be True, False or None (where supported), got {block_cache!r}.")
        if not isinstance(compile, bool):
            raise TypeError(f"`compile` must be True or False, got {compile!r}.")
        if not isinstance(entropy_weight, str):
            raise TypeError(f"`entropy_weight` must be one of {ENTROPY_WEIGHTS}, got {entropy_weight!r}.")
        if entropy_weight not in ENTROPY_WEIGHTS:
            raise ValueError(
                f"`entropy_weight` must be one of {ENTROPY_WEIGHTS} (once per denoising step, or at every Adam step "
                f"as the paper's scripts), got {entropy_weight!r}."
            )
        # Registered by hand: the models are not configuration (diffusers' decorator misaligns positional
        # arguments when the leading ones are ignored).
        self.register_to_config(
            guidance=guidance,
            guidance_steps=guidance_steps,
            guidance_lr=guidance_lr,
            reward_weights=weights,
            unmapped_tokens=unmapped_tokens,
            padding_side=padding_side,
            keep_trace=keep_trace,
            prefix_cache=prefix_cache,
            compile=compile,
            entropy_weight=entropy_weight,
            block_cache=block_cache,
        )
        self.terms: list[RewardTerm] = []
        self.trace: list[dict[str, torch.Tensor]] = []
        self._call: dict[str, Any] = {}
        self._fallbacks: list[torch.Tensor] = []  # per guided step: how many samples fell back (on device)
        # The guided step's block caches (one per term, or None) and rows, for `guided_reward`.
        self._step_caches: tuple[list | None, torch.Tensor | None] = (None, None)
        # The reward `(N,)` the last Adam step of the latest denoising step computed (None: that step was not guided).
        self.guidance_reward: torch.Tensor | None = None

    @property
    def vocab_coverage(self) -> list[float]:
        """For each reward model, the fraction of the diffusion vocabulary that maps onto its vocabulary.

        The rest became one reward token each, `terms[i].vocab_map.unmapped_token` (`unmapped_id`), also logged when
        the map is built: e.g. Qwen3's `<|endoftext|>` for Dream's `<|mask|>`, `<|beginoftext|>` and padded rows.
        """
        return [term.vocab_map.coverage for term in self.terms]

    def prepare(
        self,
        pipeline,
        reward_prompts: Sequence[str],
        prompts: Sequence[str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Binds the callback to a pipeline call: reward terms, one reward prompt (the `{target}` slot) and one
        generation prompt (`{prompt}`, defaults to the reward prompt) per sample, and the call's `settings` (mask and
        end-of-sequence ids, temperature, top-p/k, generator, guidance scope; by default `pipeline.sampling_state`).
        """
        if not self.terms or self._call.get("tokenizer") is not pipeline.tokenizer:
            vocab_size = pipeline.vocab_size
            self._call, self.terms = {}, []  # a failure below leaves nothing half-built: the next call rebuilds all
            for model, tokenizer, weight, template in zip(
                self.reward_models, self.reward_tokenizers, self.reward_weights, self.reward_templates
            ):
                tokenizer = tokenizer if tokenizer is not None else pipeline.tokenizer
                vocab_map = VocabularyMap.from_tokenizers(
                    pipeline.tokenizer, tokenizer, self.config.unmapped_tokens, source_size=vocab_size
                )
                term = RewardTerm(
                    model,
                    tokenizer,
                    weight,
                    vocab_map,
                    self.config.padding_side,
                    template,
                    self.config.prefix_cache,
                    self.config.block_cache,
                )
                if term.vocab_map.ids.max() >= term.embeddings.weight.shape[0]:
                    raise ValueError(
                        f"The diffusion vocabulary ({vocab_size} tokens) maps beyond the reward model's embedding "
                        f"matrix ({term.embeddings.weight.shape[0]} rows): pass its own `reward_tokenizer`."
                    )
                self.terms.append(term)
        for term in self.terms:
            term.prepare(reward_prompts, term.embeddings.weight.device, prompts)
        settings = pipeline.sampling_state if settings is None else settings
        self._call = {"tokenizer": pipeline.tokenizer, **settings}
        self.trace = []
        self._fallbacks = []
        self._step_caches = (None, None)

    def response_embeddings(
        self,
        term: RewardTerm,
        tokens: torch.LongTensor,
        masked: torch.BoolTensor,
        probs: torch.Tensor,
        hard: torch.LongTensor,
        weight: torch.Tensor,
        index: tuple[torch.LongTensor, torch.LongTensor] | None = None,
    ) -> torch.Tensor:
        """`(N, L, D)` reward-model input of the response: committed tokens as they are, masked ones mixed.

        `index` (`masked.nonzero(as_tuple=True)`, when the caller has it) places the mixed rows without a boolean
        scatter, whose backward selects by the mask: a host synchronisation on CUDA at every Adam step.
        """
        matrix = term.dllm_embedding_matrix()
        soft = probs.to(matrix.dtype) @ matrix
        mixed = entrgi_embeddings(soft, matrix[hard], weight)
        if index is None:
            return matrix[tokens].masked_scatter(masked[..., None], mixed)
        return matrix[tokens].index_put(index, mixed)

    def block_caches(
        self, tokens: torch.LongTensor, block_bounds: torch.LongTensor, rows: torch.LongTensor | None = None
    ) -> list[BlockCache | None]:
        """Each reward term's [`BlockCache`] of the responses' committed parts (before `block_bounds[:, 0]`), built
        when a row's committed part changed since the last step, else the last one; `None` for terms without one."""
        visible = visible_before_eos(tokens, self._call["eos_token_id"])
        return [
            term.update_block_cache(tokens, visible, block_bounds, rows) if term.block_cache else None
            for term in self.terms
        ]

    def guided_reward(self, tokens, masked, probs, hard, weight, index=None, end=None) -> torch.Tensor:
        """Summed reward `(N,)` of the responses whose masked positions are fed as EntRGi embeddings (`index`: see
        `response_embeddings`); with `end`, the responses are cut there (positions from `end` on are hidden).

        Inside a guided step, each term with a block cache (see `block_caches`) reads only the current block after
        it, and the rows are the step's `active_rows` (the prepared sample of each row; all, in order, without)."""
        blocks, rows = self._step_caches
        sampled = tokens.masked_scatter(masked, hard) if index is None else tokens.index_put(index, hard)
        visible = _visible_until(visible_before_eos(sampled, self._call["eos_token_id"]), end)
        total = 0.0
        for term, block in zip(self.terms, blocks or [None] * len(self.terms), strict=True):
            embeds = self.response_embeddings(term, tokens, masked, probs, hard, weight, index)
            reward = term.reward(embeds, visible.to(embeds.device), block, rows)
            total = total + term.weight * reward.to(probs.device)
        if self.config.keep_trace:
            self.trace.append(
                {"tokens": sampled, "visible": visible, "reward": total.detach(), "weight": weight.detach().reshape(-1)}
            )
        return total

    def callback_fn(self, pipeline, step_index: int, timestep, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if not self._call:
            raise RuntimeError("RewardGuidance must be prepared by the pipeline; pass it as `callback_on_step_end`.")
        self.guidance_reward = None
        cutoff_index = self.config.cutoff_step_index
        if cutoff_index is None:
            cutoff_index = int(pipeline.num_timesteps * self.config.cutoff_step_ratio)
        if self.config.guidance == "none" or self.config.guidance_steps == 0 or step_index >= cutoff_index:
            return callback_kwargs
        logits, tokens = callback_kwargs["logits"], callback_kwargs["response_tokens"]
        # With blocks and the "block" scope, the reward model reads each response up to its current block's end and
        # only that block is guided; later blocks stay masked, unseen.
        bounds = callback_kwargs.get("block_bounds")
        block_scope = self._call.get("guidance_scope", "response") == "block" and bounds is not None
        end = bounds[:, 1] if block_scope else None
        one_block = getattr(pipeline.scheduler, "num_blocks", 1) == 1
        # The guided rows: the pipeline's `masked_positions` (the step's one host sync, shared with the scheduler:
        # the current block's masked positions) when they are the rows guidance guides (one block, or the "block"
        # scope), else found here (one more sync).
        shared = callback_kwargs.get("masked_positions")
        logit_columns = None
        if logits.shape[1] != tokens.shape[1]:
            # A block-causal model's logits cover each row's current block only, at response positions
            # `bounds[:, 0] + j` (a first block may begin inside the prompt: negative positions, never masked).
            shared, end = None, bounds[:, 1]
            block = bounds[:, :1] + torch.arange(logits.shape[1], device=tokens.device)
            inside = (block >= 0) & (block < tokens.shape[1])
            masked = inside & (tokens.gather(1, block.clamp(0, tokens.shape[1] - 1)) == self._call["mask_token_id"])
            rows, logit_columns = masked.nonzero(as_tuple=True)
            columns = block[rows, logit_columns]
        elif shared is not None and (one_block or block_scope):
            rows, columns = shared
        else:
            shared = None
            masked = tokens == self._call["mask_token_id"]
            if block_scope:
                positions = torch.arange(tokens.shape[1], device=tokens.device)
                masked = masked & (positions >= bounds[:, :1]) & (positions < end[:, None])
            rows, columns = masked.nonzero(as_tuple=True)
        if rows.numel() == 0:  # the size is known on the host: no sync
            return callback_kwargs
        masked = torch.zeros_like(tokens, dtype=torch.bool).index_put_((rows, columns), torch.ones((), dtype=bool))
        latest = []
        # Rows of the batch by prepared sample (where the pipeline drops finished rows), and, in the "block" scope,
        # the keys and values of every row's prefix and committed blocks: built when they change, not per Adam step.
        samples = callback_kwargs.get("active_rows")
        blocks = self.block_caches(tokens, bounds, samples) if end is not None else None

        def reward_fn(probs, hard, weight):
            latest[:] = [self.guided_reward(tokens, masked, probs, hard, weight, (rows, columns), end)]
            return latest[0]

        self._step_caches = (blocks, samples)  # read by `guided_reward` (subclasses keep its signature)

        phi, fallback = optimize_logits(
            logits,
            reward_fn,
            method=self.config.guidance,
            num_steps=self.config.guidance_steps,
            lr=self.config.guidance_lr,
            temperature=self._call["temperature"],
            top_p=self._call["top_p"],
            top_k=self._call["top_k"],
            generator=self._call["generator"],
            row_groups=rows,
            return_fallback=True,
            compile=self.config.compile,
            index=(rows, columns if logit_columns is None else logit_columns),
            entropy_weight=self.config.entropy_weight,
        )
        self._step_caches = (None, None)
        # SMC's "guidance" potential: the reward of the method's input at the last Adam step (it costs nothing more)
        self.guidance_reward = latest[0].detach() if latest else None
        per_sample = tokens.new_zeros(tokens.shape[0], dtype=torch.int).index_add_(0, rows, fallback.int())
        self._fallbacks.append((per_sample > 0).sum())
        if shared is None:
            # Rows by index (a mask broadcast over the vocabulary would cost a prefix sum over all N * L * V entries),
            # into a copy: the caller's logits stay the model's, which the scheduler ranks the commits by.
            callback_kwargs["logits"] = logits.index_put(
                (rows, columns if logit_columns is None else logit_columns), phi
            )
        else:
            # In place, without an (N, L, V) copy: the scheduler gets the model's own rows at the same positions
            # for its confidence (`confidence_logits`, `(P, V)`), so guidance still changes what is sampled, not where.
            callback_kwargs["confidence_logits"] = logits[rows, columns]
            callback_kwargs["logits"] = logits.index_put_((rows, columns), phi)
        return callback_kwargs

    def finish(self) -> tuple[int, int]:
        """Ends a pipeline call: `(steps, samples)` at which guidance fell back to the model's logits, warned once.

        A sample falls back at a denoising step when its reward or the gradient of its logits was not finite (NaN or
        inf) at one of the Adam steps: it is left unguided at that step. One host sync.
        """
        counts = torch.stack(self._fallbacks).cpu() if self._fallbacks else torch.zeros(0, dtype=torch.long)
        self._fallbacks = []
        steps, samples = int((counts > 0).sum()), int(counts.sum())
        if steps:
            logger.warning(
                "Reward guidance fell back to the model's logits at %d of %d guided steps (%d sample rows in all): "
                "the reward or its gradient was not finite (NaN or inf) there, so those rows were left unguided.",
                steps,
                len(counts),
                samples,
            )
        return steps, samples

    @torch.no_grad()
    def reward_of_tokens(
        self,
        tokens: torch.LongTensor,
        end: int | torch.LongTensor | None = None,
        rows: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """The summed reward `(N,)` of response tokens `(N, L)` fed as guidance feeds committed tokens (their own
        embeddings; positions from the first end-of-sequence token on, and from `end` on, unseen). One forward of
        each reward model, without gradient: SMC's `"hard"` potential, on the step's denoised estimate. `rows`: the
        prepared sample of each response (all, in order, when omitted), as the pipeline's `active_rows`.

        The same reward as guidance with hard inputs for these tokens, and so (where the text round trip is exact,
        see `score_texts`) as the reported reward of the decoded text.
        """
        if not self._call:
            raise RuntimeError("RewardGuidance must be prepared by the pipeline before it scores tokens.")
        visible = _visible_until(visible_before_eos(tokens, self._call["eos_token_id"]), end)
        total = 0.0
        for term in self.terms:
            matrix = term.dllm_embedding_matrix()
            embeds = matrix[tokens.to(matrix.device)]
            reward = term.reward(embeds, visible.to(matrix.device), None, rows)
            total = total + term.weight * reward.to(tokens.device)
        return total

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """The summed reward `(N,)` of response texts (one per prepared sample), on their discrete tokens.

        Each text is tokenised by the reward tokenizer, as the template places it (with the spaces before the
        response), and goes through the same layout as guidance. So for a response whose text re-encodes to the
        tokens guidance fed (the mapped dLLM tokens up to the first end-of-sequence token), this equals the reward
        seen during guidance with hard inputs (`w = 1`, or committed tokens), to float tolerance. Across a
        tokenizer bridge the round trip, and so the reward, can differ where:

        - the reward tokenizer segments a word otherwise than the dLLM (`walk ##ing` maps to `Ġwalk ing`, the text
          "walking" re-encodes as `Ġwalking`);
        - a dLLM token has only an approximate counterpart (another casing: uncased `god` -> `ĠGod`, or spacing)
          or none (`unmapped_tokens`); see `VocabularyMap.exact`;
        - the decoder changes the text: special tokens are dropped, spaces are cleaned up (`do n ' t` -> "don't"),
          the text is stripped, so a response that starts with a token glued to the previous word (`,`) is read
          after the template's space (`Ġ,`);
        - the rendered template would merge the response's first or last characters with its neighbours (slots
          should sit at word boundaries).

        `tests/guidance/test_vocab_bridge.py` checks the equality where the round trip is exact and each difference.
        """
        total = 0.0
        for term in self.terms:
            total = total + term.weight * term.reward_of_texts(texts).cpu()
        return total
