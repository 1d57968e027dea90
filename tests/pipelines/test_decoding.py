"""Decoding as the reference samplers do it: blocks, commit schedules, greedy and threshold decoding, end of sequence.

The LLaDA and Dream reference loops below are written from the published algorithms (LLaDA's `generate` with
`remasking='low_confidence'`, Dream's `diffusion_generate`), at `temperature=0`, with the mask token never a candidate.
"""

import json
from pathlib import Path

import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance.rewards import visible_before_eos
from entrgi_pipelines.testing import tiny_causal_lm, tiny_masked_lm

from ..guidance.test_rewards import WholeWordsOnly, decode

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea", "why"]
RECORDED = Path(__file__).parent / "data" / "decoding_before_blocks.json"


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _sharpener(scale: float):
    def sharpen(module, args, output):
        output.logits = output.logits * scale
        return output

    return sharpen


def make_pipe(tokenizer, kind="bert", sharp=False, **scheduler):
    """A tiny random dLLM; `sharp` scales its logits (by 100, or by the number given) so that confidences are far
    apart, as a trained model's are (a random model's near-uniform distributions tie to float rounding, where any two
    exact samplers may differ, and so may two CPUs: AVX2 and AVX-512 kernels round differently)."""
    model = tiny_masked_lm(len(tokenizer)) if kind == "bert" else tiny_causal_lm(len(tokenizer))
    if sharp:
        model.register_forward_hook(_sharpener(100.0 if sharp is True else float(sharp)))
    pipe = EntRGiPipeline(model, tokenizer, MaskedDiffusionScheduler(**scheduler), logits_shift=kind == "causal")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_one_block_gives_the_tokens_recorded_before_blocks_existed(tokenizer, reward_model):
    """`block_length=None` is the old decoder: the same tokens and rewards for the same seed, 22 settings per model
    kind. First recorded with the code before blocks existed (e521901^); re-recorded when the exact, sorted top-p
    nucleus replaced the histogram one (issue 25), which changes which tokens a near-uniform distribution may draw
    (with the histogram sampler patched back, the new code gave the old recording). Logits x10: with the raw random
    model, confidences tie to float rounding and a recording held on AVX2 CPUs only; x10 gives the same recording on
    AVX2 and AVX-512 (checked with ATEN_CPU_CAPABILITY)."""
    for record in json.loads(RECORDED.read_text()):
        pipe = make_pipe(
            tokenizer, record["kind"], sharp=10.0, confidence=record["confidence"], eos_last=record["eos_last"]
        )
        out = pipe(
            PROMPTS,
            reward_model=reward_model,
            guidance=record["guidance"],
            gen_length=12,
            num_inference_steps=5,
            num_samples_per_prompt=2,
            guidance_steps=2,
            generator=seeded(3),
        )
        key = (record["kind"], record["confidence"], record["eos_last"], record["guidance"])
        assert out.sequences.tolist() == record["sequences"], key
        # Rewards to 1e-5: the tiny reward model's float32 sums are reordered between releases (transformers 5.25
        # computes them about 6e-8 away from 5.24's); the tokens, which decide everything else, stay exact.
        torch.testing.assert_close(out.rewards, torch.tensor(record["rewards"]), rtol=0, atol=1e-5, msg=str(key))
        assert out.nfe == 5


# The references: a left-padded batch `[prompt | L masks]`, the model called as the pipeline calls it.


def _batch(pipe, prompts, gen_length):
    mask = pipe.tokenizer.mask_token_id
    ids, _ = pipe.encode_prompt(prompts)
    x, attention = pipe.prepare_sequences(ids, 1, gen_length, mask, "cpu")
    return x, pipe.model_inputs(attention), x.shape[1] - gen_length


def _logits(pipe, x, inputs, shift):
    logits = pipe.model(x, **inputs).logits.float()
    if shift:  # Dream: position i is predicted at i - 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    logits[..., pipe.tokenizer.mask_token_id] = float("-inf")  # the mask is never a candidate
    return logits


def llada_reference(pipe, prompts, steps, gen_length, block_length):
    """LLaDA's `generate(..., temperature=0., remasking='low_confidence')`."""
    mask = pipe.tokenizer.mask_token_id
    x, inputs, start = _batch(pipe, prompts, gen_length)
    num_blocks = gen_length // block_length
    steps = steps // num_blocks
    for block in range(num_blocks):
        lo, hi = start + block * block_length, start + (block + 1) * block_length
        block_masked = (x[:, lo:hi] == mask).sum(1)
        base, remainder = block_masked // steps, block_masked % steps
        counts = base[:, None].repeat(1, steps)
        for row in range(x.shape[0]):
            counts[row, : remainder[row]] += 1
        for i in range(steps):
            masked = x == mask
            logits = _logits(pipe, x, inputs, shift=False)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), -1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -float("inf")
            x0 = torch.where(masked, x0, x)
            confidence = torch.where(masked, x0_p, -float("inf"))
            for row in range(x.shape[0]):
                _, index = torch.topk(confidence[row], k=int(counts[row, i]))
                x[row, index] = x0[row, index]
    return x[:, start:]


def dream_reference(pipe, prompts, steps, gen_length, alg, eps=1e-3):
    """Dream's `diffusion_generate(..., temperature=0., alg=alg)` (`alg_temp=None`)."""
    mask = pipe.tokenizer.mask_token_id
    x, inputs, start = _batch(pipe, prompts, gen_length)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        masked = x == mask
        probs = torch.softmax(_logits(pipe, x, inputs, shift=True)[masked], -1)
        top, x0 = probs.max(-1)
        if alg == "maskgit_plus":
            confidence = top
        elif alg == "topk_margin":
            ordered = probs.sort(-1, descending=True).values
            confidence = ordered[:, 0] - ordered[:, 1]
        else:  # entropy: the negative entropy
            confidence = -torch.special.entr(probs).sum(-1)
        num_masked = masked.sum() / masked.shape[0]
        t, s = timesteps[i], timesteps[i + 1]
        n = int(num_masked * (1 - s / t)) if i < steps - 1 else int(num_masked)
        full = torch.full(x.shape, -float("inf"))
        full[masked] = confidence
        candidates = torch.full_like(x, mask)
        candidates[masked] = x0
        if n > 0:
            _, index = torch.topk(full, n)
            x = x.scatter(1, index, candidates.gather(1, index))
    return x[:, start:]


def assert_equal_up_to_first_eos(ours, reference, eos):
    for row_ours, row_ref in zip(ours, reference):
        visible = visible_before_eos(row_ref[None], eos)[0]
        n = int(visible.sum()) + int(bool((~visible).any()))  # up to and including the first end-of-sequence
        assert row_ours[:n].tolist() == row_ref[:n].tolist()


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one_prompt", "left_padded_batch"])
@pytest.mark.parametrize("steps,gen_length,block_length", [(8, 16, 4), (6, 12, 12), (12, 12, 3)])
def test_unguided_blocks_equal_llada_reference(tokenizer, prompts, steps, gen_length, block_length):
    pipe = make_pipe(tokenizer, sharp=True, confidence="maskgit_plus", commit_schedule="even", eos_last=False)
    out = pipe(
        prompts,
        temperature=0,
        top_p=None,
        num_inference_steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        num_samples_per_prompt=1,
    )
    reference = llada_reference(pipe, prompts, steps, gen_length, block_length)
    assert_equal_up_to_first_eos(out.sequences[:, 0], reference, tokenizer.eos_token_id)


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["one_prompt", "left_padded_batch"])
@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy", "topk_margin"])
def test_unguided_decoding_equals_dream_reference(tokenizer, prompts, alg):
    pipe = make_pipe(tokenizer, "causal", sharp=True, confidence=alg, commit_schedule="time_floor", eos_last=False)
    assert pipe.logits_shift
    out = pipe(prompts, temperature=0, top_p=None, num_inference_steps=7, gen_length=16, num_samples_per_prompt=1)
    reference = dream_reference(pipe, prompts, 7, 16, alg)
    assert_equal_up_to_first_eos(out.sequences[:, 0], reference, tokenizer.eos_token_id)


def test_blocks_commit_only_inside_the_current_block_and_later_blocks_stay_masked(tokenizer):
    pipe = make_pipe(tokenizer, confidence="maskgit_plus")
    mask = tokenizer.mask_token_id
    out = pipe(
        PROMPTS, gen_length=12, num_inference_steps=6, block_length=4, output_trajectory=True, generator=seeded()
    )
    frames = out.trajectory.reshape(out.trajectory.shape[0], -1, 12)
    assert out.nfe == frames.shape[0] <= 6
    for step, frame in enumerate(frames):
        block = step // 2  # 2 steps per block
        assert (frame[:, (block + 1) * 4 :] == mask).all()  # later blocks untouched
        assert (frame[:, : block * 4] != mask).all()  # earlier blocks full
        if step % 2 == 1:
            assert (frame[:, block * 4 : (block + 1) * 4] != mask).all()  # a block is full after its last step


def test_callbacks_see_later_blocks_masked_and_the_model_sees_the_whole_sequence(tokenizer):
    pipe = make_pipe(tokenizer)
    widths = []

    def record(pipeline, step, timestep, kwargs):
        bounds = kwargs["block_bounds"]  # per row: every row is in the same block here
        assert (bounds == bounds[0]).all() and bounds.shape == (kwargs["sequences"].shape[0], 2)
        widths.append((kwargs["sequences"].shape[1], tuple(bounds[0].tolist())))
        return kwargs

    pipe(
        "the cat",
        gen_length=8,
        num_inference_steps=4,
        block_length=4,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["sequences", "block_bounds"],
        generator=seeded(),
    )
    assert [block for _, block in widths] == [(0, 4), (0, 4), (4, 8), (4, 8)]
    assert len({width for width, _ in widths}) == 1  # the full sequence every step


def test_block_length_from_the_scheduler_config_and_the_call_overrides_it(tokenizer):
    pipe = make_pipe(tokenizer, block_length=4)
    a = pipe("the cat", gen_length=8, num_inference_steps=4, generator=seeded(), output_trajectory=True)
    b = pipe("the cat", gen_length=8, num_inference_steps=4, block_length=8, generator=seeded(), output_trajectory=True)
    assert (a.trajectory[0, 0, 0, 4:] == tokenizer.mask_token_id).all()
    assert (b.trajectory[0, 0, 0, 4:] != tokenizer.mask_token_id).any()


def test_greedy_is_deterministic_and_commits_the_argmax(tokenizer, reward_model):
    pipe = make_pipe(tokenizer, confidence="maskgit_plus")
    a = pipe(PROMPTS, temperature=0, gen_length=8, num_inference_steps=8, num_samples_per_prompt=2)
    b = pipe(PROMPTS, temperature=0, gen_length=8, num_inference_steps=8, num_samples_per_prompt=2, generator=seeded(5))
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.sequences[:, 0], a.sequences[:, 1])  # nothing random is left
    seen = []

    def record(pipeline, step, timestep, kwargs):
        seen.append(kwargs["logits"].clone())
        return kwargs

    out = pipe(
        PROMPTS,
        temperature=0,
        gen_length=8,
        num_inference_steps=8,
        callback_on_step_end=record,
        num_samples_per_prompt=1,
        output_trajectory=True,
    )
    frames = out.trajectory[:, :, 0]
    before = torch.full_like(frames[0], tokenizer.mask_token_id)
    for logits, frame in zip(seen, frames):
        new = (before == tokenizer.mask_token_id) & (frame != tokenizer.mask_token_id)
        assert int(new.sum()) == len(PROMPTS)  # one position per step and row
        assert torch.equal(frame[new], logits.argmax(-1)[new])
        before = frame
    for guidance in ("entrgi", "aps", "expectation"):
        guided = pipe(
            PROMPTS,
            reward_model=reward_model,
            guidance=guidance,
            temperature=0,
            gen_length=8,
            num_inference_steps=4,
            num_samples_per_prompt=2,
            guidance_steps=2,
        )
        assert (guided.sequences != tokenizer.mask_token_id).all() and guided.rewards.isfinite().all()
        assert torch.equal(guided.sequences[:, 0], guided.sequences[:, 1])  # guidance at temperature 0 is greedy too


def test_threshold_decoding_saves_model_calls_with_confidences_from_the_model(tokenizer, reward_model):
    """A confident model fills blocks in fewer calls than budgeted; `nfe` counts the calls. Confidences come from the
    model's own logits: a callback that flattens the logits changes neither the order nor the number of calls."""

    def flatten(pipeline, step, timestep, kwargs):
        kwargs["logits"] = kwargs["logits"] / 100.0
        return kwargs

    pipe = make_pipe(tokenizer, sharp=True, confidence="maskgit_plus", eos_last=False)
    settings = dict(gen_length=16, num_inference_steps=16, block_length=8, temperature=0)
    fixed = pipe(PROMPTS, **settings)
    out = pipe(PROMPTS, threshold=0.9, **settings)
    assert fixed.nfe == 16 and out.nfe < 16 and (out.sequences != tokenizer.mask_token_id).all()
    flat = pipe(PROMPTS, threshold=0.9, callback_on_step_end=flatten, **settings)
    assert flat.nfe == out.nfe and torch.equal(flat.sequences, out.sequences)
    for guidance in ("none", "entrgi", "aps", "expectation"):
        guided = pipe(
            PROMPTS,
            reward_model=reward_model,
            guidance=guidance,
            gen_length=16,
            num_inference_steps=8,
            block_length=8,
            threshold=0.5,
            minimal_topk=2,
            guidance_steps=1,
            generator=seeded(),
        )
        assert guided.nfe <= 8 and (guided.sequences != tokenizer.mask_token_id).all()


def test_threshold_step_commits_exactly_the_positions_at_or_above_it_and_at_least_minimal_topk():
    scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus", threshold=0.8, minimal_topk=2)
    scheduler.set_timesteps(4, gen_length=6)
    logits = torch.full((1, 6, 5), -20.0)
    sure = torch.tensor([True, False, True, True, False, False])
    logits[0, sure, 1] = 20.0  # probability ~1
    logits[0, ~sure, :4] = 0.0  # four-way ties: probability 1/4
    sample = torch.full((1, 6), 4)
    out = scheduler.step(logits, scheduler.timesteps[0], sample, mask_token_id=4, temperature=1.0, generator=seeded())
    assert torch.equal(out.commit_mask[0], sure)
    assert scheduler.step_index == 1
    out = scheduler.step(logits, scheduler.timesteps[1], out.prev_sample, mask_token_id=4, generator=seeded())
    assert int(out.commit_mask.sum()) == 2  # none passes: the minimal_topk most confident
    out = scheduler.step(
        logits, scheduler.timesteps[2], out.prev_sample, mask_token_id=4, generator=seeded(), threshold=0.2
    )
    assert out.commit_mask.sum() == 1 and (out.prev_sample != 4).all()  # the call's threshold; the block is full
    assert scheduler.step_index == 4  # its remaining budgeted step is skipped


@pytest.mark.parametrize("schedule,expected", [("even", [3, 3, 2, 2]), ("time", None), ("time_floor", None)])
def test_commit_schedules_count_as_their_references(schedule, expected):
    scheduler = MaskedDiffusionScheduler(commit_schedule=schedule)
    scheduler.set_timesteps(4, gen_length=10)
    n, counts = 10, []
    grid = torch.linspace(1, 1e-3, 5)
    for i in range(4):
        k = int(scheduler.num_tokens_to_commit(torch.tensor([n]), i))
        if schedule == "time_floor" and i < 3:  # Dream: int(n * (1 - s / t)) in float32
            assert k == int(torch.tensor(float(n)) * (1 - grid[i + 1] / grid[i]))
        if schedule == "time" and i < 3:
            assert k == round(n * (1 - float(scheduler.sigmas[i + 1] / scheduler.sigmas[i])))
        counts.append(k)
        n -= k
    assert n == 0 and sum(counts) == 10
    if expected:
        assert counts == expected


def test_random_order_and_confidence_temperature_draw_positions():
    counts = torch.zeros(8)
    for seed in range(300):
        scheduler = MaskedDiffusionScheduler(confidence="random")
        scheduler.set_timesteps(8, gen_length=8)
        logits = torch.randn(1, 8, 6, generator=seeded(0))
        out = scheduler.step(
            logits, scheduler.timesteps[0], torch.full((1, 8), 5), mask_token_id=5, generator=seeded(seed)
        )
        counts += out.commit_mask[0].float()
    assert counts.sum() == 300 and counts.min() > 15  # one per step, every position drawn
    # confidence_temperature: near 0 takes the top; very large draws almost uniformly
    logits = torch.zeros(1, 8, 6)
    logits[0, :, 0] = torch.linspace(0, 6, 8)  # confidence rises with the position
    top, spread = torch.zeros(8), torch.zeros(8)
    for seed in range(200):
        for temperature, tally in ((1e-4, top), (1e3, spread)):
            scheduler = MaskedDiffusionScheduler(confidence="maskgit_plus", confidence_temperature=temperature)
            scheduler.set_timesteps(8, gen_length=8)
            out = scheduler.step(
                logits,
                scheduler.timesteps[0],
                torch.full((1, 8), 5),
                mask_token_id=5,
                temperature=0,  # the argmax, token 0: confidence rises with the position
                generator=seeded(seed),
            )
            tally += out.commit_mask[0].float()
    assert top[-1] == 200
    assert spread.min() > 8


def test_greedy_never_proposes_the_mask_token():
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(1, gen_length=3)
    logits = torch.zeros(1, 3, 5)
    logits[..., 4] = 100.0  # the mask is the argmax
    out = scheduler.step(logits, scheduler.timesteps[0], torch.full((1, 3), 4), mask_token_id=4, temperature=0)
    assert (out.prev_sample != 4).all()


def test_end_of_sequence_stops_the_call_and_fills_the_rest(tokenizer):
    eos, mask = tokenizer.eos_token_id, tokenizer.mask_token_id

    def eos_at_five(pipeline, step, timestep, kwargs):
        kwargs["logits"][:, 5, eos] = 100.0
        kwargs["logits"][:, 6:, eos] = float("-inf")
        return kwargs

    pipe = make_pipe(tokenizer, confidence="maskgit_plus", eos_last=False)
    out = pipe(
        PROMPTS,
        gen_length=16,
        num_inference_steps=8,
        block_length=4,
        callback_on_step_end=eos_at_five,
        generator=seeded(),
        output_trajectory=True,
    )
    assert out.nfe == 4  # two blocks of two steps: the rest never runs
    last = out.trajectory[-1]
    assert (out.sequences[..., 5] == eos).all() and (out.sequences[..., 6:] == eos).all()
    assert torch.equal(out.sequences[..., :5], last[..., :5])  # nothing before the first end-of-sequence changes
    assert (out.sequences != mask).all()
    # without blocks nothing stops early
    assert pipe(PROMPTS, gen_length=16, num_inference_steps=8, callback_on_step_end=eos_at_five).nfe == 8


@pytest.mark.parametrize("scope", ["block", "response"])
@pytest.mark.parametrize("decoding", ["blocks", "threshold", "greedy"])
def test_guidance_time_reward_equals_the_reported_reward_with_blocks(tokenizer, reward_model, scope, decoding):
    pipe = make_pipe(tokenizer, confidence="maskgit_plus")
    guidance = RewardGuidance(reward_model, tokenizer, guidance="aps", guidance_steps=2, keep_trace=True)
    settings = {"blocks": {}, "threshold": {"threshold": 0.3}, "greedy": {"temperature": 0}}[decoding]
    out = pipe(
        PROMPTS,
        callback_on_step_end=MultiPipelineCallbacks([WholeWordsOnly(tokenizer), guidance]),
        gen_length=12,
        num_inference_steps=6,
        block_length=4,
        guidance_scope=scope,
        num_samples_per_prompt=2,
        generator=seeded(),
        **settings,
    )
    assert guidance.trace
    mask = tokenizer.mask_token_id
    for entry in guidance.trace:
        visible = entry["visible"]
        if scope == "block":  # later blocks are hidden from the reward model, still masked
            end = int(visible.any(0).nonzero().max()) + 1 if visible.any() else 0
            assert (entry["tokens"][:, end:][visible[:, end:]] == mask).sum() == 0
        tokens = torch.where(visible, entry["tokens"], tokenizer.pad_token_id)
        texts = decode(tokenizer, tokens)
        torch.testing.assert_close(guidance.score_texts(texts), entry["reward"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.rewards.flatten(), guidance.score_texts(sum(out.all_texts, [])))


def test_block_scope_guides_only_the_current_block(tokenizer, reward_model):
    seen = []

    def before_guidance(pipeline, step, timestep, kwargs):
        seen.append(kwargs["logits"].clone())
        return kwargs

    pipe = make_pipe(tokenizer)
    for scope, later_changed in (("block", False), ("response", True)):
        guided = []
        guidance = RewardGuidance(reward_model, guidance="expectation", guidance_steps=2)

        def after(pipeline, step, timestep, kwargs, guided=guided):
            guided.append(kwargs["logits"].clone())
            return kwargs

        seen.clear()
        pipe(
            "the cat",
            gen_length=8,
            num_inference_steps=2,
            block_length=4,
            guidance_scope=scope,
            callback_on_step_end=MultiPipelineCallbacks([_Record(seen), guidance, _Record(guided)]),
            generator=seeded(),
        )
        first_before, first_after = seen[0][0], guided[0][0]
        assert not torch.equal(first_before[:4], first_after[:4])  # the current block is guided
        assert torch.equal(first_before[4:], first_after[4:]) != later_changed


class _Record(RewardGuidance.__mro__[1]):  # a PipelineCallback that keeps the logits it sees
    tensor_inputs = ["logits"]

    def __init__(self, store):
        super().__init__()
        self.store = store

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.store.append(callback_kwargs["logits"].clone())
        return callback_kwargs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_length=5), "block_length"),
        (dict(block_length=0), "block_length"),
        (dict(block_length=4, num_inference_steps=3), "num_inference_steps"),
        (dict(threshold=0), "threshold"),
        (dict(threshold=1.5), "threshold"),
        (dict(minimal_topk=0), "minimal_topk"),
        (dict(temperature=-0.1), "temperature"),
        (dict(guidance_scope="later"), "guidance_scope"),
    ],
)
def test_bad_decoding_arguments_are_refused_before_any_model_work(tokenizer, kwargs, match):
    pipe = make_pipe(tokenizer)
    calls = []
    pipe.model.register_forward_hook(lambda *args: calls.append(1))
    settings = dict(gen_length=8, num_inference_steps=4) | kwargs
    with pytest.raises(ValueError, match=match):
        pipe("the cat", **settings)
    assert not calls


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(commit_schedule="linear"), "commit_schedule"),
        (dict(confidence_temperature=-1.0), "confidence_temperature"),
        (dict(threshold=0.9, confidence="random"), "threshold"),
        (dict(block_length=-2), "block_length"),
        (dict(minimal_topk=0), "minimal_topk"),
    ],
)
def test_bad_scheduler_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedDiffusionScheduler(**kwargs)


def test_save_pretrained_keeps_the_decoding_config(tokenizer, tmp_path):
    pipe = make_pipe(
        tokenizer, block_length=4, commit_schedule="even", threshold=0.9, minimal_topk=2, confidence="maskgit_plus"
    )
    pipe.save_pretrained(tmp_path)
    loaded = EntRGiPipeline.from_pretrained(tmp_path)
    for key in ("block_length", "commit_schedule", "threshold", "minimal_topk", "confidence"):
        assert loaded.scheduler.config[key] == pipe.scheduler.config[key]
    loaded.set_progress_bar_config(disable=True)
    a = pipe("the cat", gen_length=8, num_inference_steps=4, generator=seeded())
    b = loaded("the cat", gen_length=8, num_inference_steps=4, generator=seeded())
    assert torch.equal(a.sequences, b.sequences) and a.nfe == b.nfe


def test_seeded_generator_reproduces_block_and_threshold_decoding(tokenizer, reward_model):
    pipe = make_pipe(tokenizer, confidence="entropy")
    settings = dict(gen_length=12, num_inference_steps=6, block_length=4, threshold=0.2, reward_model=reward_model)
    a, b = (pipe(PROMPTS, generator=seeded(4), **settings) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.rewards, b.rewards) and a.nfe == b.nfe
