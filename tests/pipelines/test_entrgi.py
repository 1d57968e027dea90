import pytest
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from entrgi_pipelines import EntRGiPipeline, EntRGiPipelineOutput, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.pipelines.entrgi.pipeline_entrgi import detect_logits_shift
from entrgi_pipelines.testing import tiny_causal_lm, tiny_masked_lm

from ..conftest import get_dummy_components

PROMPTS = ["the cat", "a man and a woman walked to the old city by the sea", "why"]
FAST = dict(gen_length=8, num_inference_steps=4, num_samples_per_prompt=2)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_contract(pipe, tokenizer, reward_model):
    out = pipe(PROMPTS, reward_model=reward_model, generator=seeded(), **FAST)
    assert isinstance(out, EntRGiPipelineOutput)
    assert len(out.texts) == 3 and [len(t) for t in out.all_texts] == [2, 2, 2]
    assert out.rewards.shape == (3, 2) and out.sequences.shape == (3, 2, 8)
    assert out.sequences.dtype == torch.long and (out.sequences != tokenizer.mask_token_id).all()
    best = out.rewards.argmax(-1)
    assert out.texts == [out.all_texts[b][best[b]] for b in range(3)]
    texts, all_texts, rewards, sequences = pipe(
        PROMPTS, reward_model=reward_model, generator=seeded(), return_dict=False, **FAST
    )
    assert texts == out.texts and torch.equal(sequences, out.sequences) and torch.equal(rewards, out.rewards)


def test_without_reward_the_first_sample_is_returned_and_rewards_are_none(pipe):
    out = pipe("the cat", generator=seeded(), **FAST)
    assert out.rewards is None and out.texts == [out.all_texts[0][0]]


def test_prompt_tokens_never_change_and_no_mask_is_left(pipe, tokenizer, reward_model):
    seen = []

    def record(pipeline, step, timestep, callback_kwargs):
        seen.append(callback_kwargs["sequences"].clone())
        return callback_kwargs

    pipe(
        PROMPTS,
        reward_model=reward_model,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["sequences"],
        generator=seeded(),
        **FAST,
    )
    prompt_part = [s[:, :-8] for s in seen]
    assert all(torch.equal(p, prompt_part[0]) for p in prompt_part)
    masks_left = [int((s[:, -8:] == tokenizer.mask_token_id).sum()) for s in seen]
    assert masks_left[0] == 6 * 8 and masks_left == sorted(masks_left, reverse=True)
    # left padding: the shorter prompts end where the longest ends
    ids = tokenizer(PROMPTS)["input_ids"]
    assert prompt_part[0][0, -len(ids[0]) :].tolist() == ids[0]
    assert (prompt_part[0][0, : -len(ids[0])] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("guidance", ["none", "expectation", "aps", "entrgi"])
def test_seeded_generator_reproduces_the_output(pipe, reward_model, guidance):
    a = pipe(PROMPTS, reward_model=reward_model, guidance=guidance, generator=seeded(7), **FAST)
    b = pipe(PROMPTS, reward_model=reward_model, guidance=guidance, generator=seeded(7), **FAST)
    c = pipe(PROMPTS, reward_model=reward_model, guidance=guidance, generator=seeded(8), **FAST)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.rewards, b.rewards) and a.texts == b.texts
    assert not torch.equal(a.sequences, c.sequences)


def test_models_are_bit_identical_after_a_guided_call(pipe, reward_model):
    reward_model.classifier.weight.requires_grad_(False)  # a mix of flags must survive as it is
    models = {"dllm": pipe.model, "reward": reward_model}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in models.items()}
    flags = {n: [p.requires_grad for p in m.parameters()] for n, m in models.items()}
    for guidance in ("entrgi", "aps", "expectation"):
        pipe(PROMPTS, reward_model=reward_model, guidance=guidance, generator=seeded(), **FAST)
    for name, model in models.items():
        assert all(torch.equal(v, before[name][k]) for k, v in model.state_dict().items())
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags[name]
    reward_model.classifier.weight.requires_grad_(True)


def test_each_guided_method_raises_mean_reward_over_unguided(pipe, reward_model):
    """A random reward model (initialised 4x larger) has preferences that guidance should find."""
    means = {}
    for guidance in ("none", "expectation", "aps", "entrgi"):
        means[guidance] = torch.stack(
            [
                pipe(
                    PROMPTS,
                    reward_model=reward_model,
                    guidance=guidance,
                    gen_length=8,
                    num_inference_steps=8,
                    num_samples_per_prompt=4,
                    generator=seeded(seed),
                ).rewards.mean()
                for seed in range(4)
            ]
        )
    for guidance in ("expectation", "aps", "entrgi"):
        gain = means[guidance] - means["none"]
        assert gain.mean() > 0.005, (guidance, gain)
        assert (gain > 0).sum() >= 3, (guidance, gain)


def test_reward_guidance_as_callback_equals_reward_model_argument(pipe, reward_model):
    a = pipe(PROMPTS, reward_model=reward_model, guidance="entrgi", generator=seeded(3), **FAST)
    b = pipe(PROMPTS, callback_on_step_end=RewardGuidance(reward_model, guidance="entrgi"), generator=seeded(3), **FAST)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.rewards, b.rewards)


def test_guidance_defaults_to_entrgi_with_a_reward_model_and_none_without(pipe, reward_model):
    a = pipe(PROMPTS, reward_model=reward_model, generator=seeded(3), **FAST)
    b = pipe(PROMPTS, reward_model=reward_model, guidance="entrgi", generator=seeded(3), **FAST)
    c = pipe(PROMPTS, generator=seeded(3), **FAST)
    d = pipe(PROMPTS, reward_model=reward_model, guidance="none", generator=seeded(3), **FAST)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(c.sequences, d.sequences)  # Best-of-N samples exactly what unguided sampling does
    assert not torch.equal(b.sequences, d.sequences)


class CountSteps(PipelineCallback):
    tensor_inputs = ["logits", "response_tokens"]

    def __init__(self):
        super().__init__()
        self.calls = []

    def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
        self.calls.append((step_index, callback_kwargs["logits"].shape, callback_kwargs["response_tokens"].shape))
        return callback_kwargs


def test_user_callbacks_compose_with_guidance(pipe, reward_model):
    counter = CountSteps()
    guided = pipe(PROMPTS, reward_model=reward_model, callback_on_step_end=counter, generator=seeded(4), **FAST)
    assert [c[0] for c in counter.calls] == [0, 1, 2, 3]
    assert counter.calls[0][1][:2] == (6, 8) and counter.calls[0][2] == (6, 8)
    plain = pipe(PROMPTS, reward_model=reward_model, generator=seeded(4), **FAST)
    assert torch.equal(guided.sequences, plain.sequences)  # a pass-through callback changes nothing
    counter2 = CountSteps()
    multi = MultiPipelineCallbacks([RewardGuidance(reward_model), counter2])
    again = pipe(PROMPTS, callback_on_step_end=multi, generator=seeded(4), **FAST)
    assert len(counter2.calls) == 4 and torch.equal(again.sequences, plain.sequences)


def test_function_callback_can_replace_the_logits(pipe, tokenizer):
    word = tokenizer.convert_tokens_to_ids("sea")

    def force(pipeline, step, timestep, callback_kwargs):
        logits = torch.full_like(callback_kwargs["logits"], -10.0)
        logits[..., word] = 10.0
        return {"logits": logits}

    out = pipe(
        "the cat", callback_on_step_end=force, callback_on_step_end_tensor_inputs=["logits"], generator=seeded(), **FAST
    )
    assert (out.sequences == word).all()


def test_logits_convention_is_detected_and_overridable(tokenizer):
    class Config:
        def __init__(self, model_type, **kw):
            self.model_type = model_type
            self.__dict__.update(kw)

    assert detect_logits_shift(Config("Dream"))
    assert not detect_logits_shift(Config("llada")) and not detect_logits_shift(Config("bert"))
    assert detect_logits_shift(Config("llama", logits_shift=True))
    bert = EntRGiPipeline(**get_dummy_components(tokenizer))
    assert not bert.logits_shift
    forced = EntRGiPipeline(**get_dummy_components(tokenizer, kind="causal"), logits_shift=True)
    assert forced.logits_shift


def test_shifted_logits_read_the_previous_position(tokenizer):
    """With a shift, the response position j is predicted by the logits at j - 1."""
    components = get_dummy_components(tokenizer, kind="causal")
    pipe = EntRGiPipeline(**components, logits_shift=True)
    pipe.set_progress_bar_config(disable=True)
    captured = {}

    def capture(pipeline, step, timestep, callback_kwargs):
        captured.setdefault("logits", callback_kwargs["logits"].clone())
        captured.setdefault("sequences", callback_kwargs["sequences"].clone())
        return callback_kwargs

    pipe(
        ["the cat", "why"],
        callback_on_step_end=capture,
        callback_on_step_end_tensor_inputs=["logits", "sequences"],
        generator=seeded(),
        gen_length=5,
        num_inference_steps=2,
        num_samples_per_prompt=1,
    )
    sequences = captured["sequences"]
    mask = (sequences != tokenizer.pad_token_id).long()
    full = components["model"](sequences, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    expected = full[:, -6:-1]
    expected[..., tokenizer.mask_token_id] = float("-inf")
    torch.testing.assert_close(captured["logits"], expected)


def test_chat_template_and_messages(chat_tokenizer):
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(chat_tokenizer)), tokenizer=chat_tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    ids, texts = pipe.encode_prompt("the cat")
    rendered = chat_tokenizer.apply_chat_template(
        [{"role": "user", "content": "the cat"}], tokenize=False, add_generation_prompt=True
    )
    assert ids[0] == chat_tokenizer(rendered, add_special_tokens=False)["input_ids"] and texts == ["the cat"]
    a = pipe("the cat", generator=seeded(), **FAST)
    b = pipe(messages=[{"role": "user", "content": "the cat"}], generator=seeded(), **FAST)
    assert torch.equal(a.sequences, b.sequences)
    c = pipe(input_ids=torch.tensor(ids), generator=seeded(), **FAST)
    assert torch.equal(a.sequences, c.sequences)


def test_mask_token_from_argument_when_the_tokenizer_has_none(tokenizer):
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    mask_id = tokenizer.mask_token_id
    pipe.tokenizer.mask_token = None
    try:
        with pytest.raises(ValueError, match="mask_token_id"):
            pipe("the cat", **FAST)
        out = pipe("the cat", mask_token_id=mask_id, generator=seeded(), **FAST)
        assert (out.sequences != mask_id).all()
        configured = EntRGiPipeline(**get_dummy_components(tokenizer), mask_token_id=mask_id)
        configured.set_progress_bar_config(disable=True)
        assert torch.equal(configured("the cat", generator=seeded(), **FAST).sequences, out.sequences)
    finally:
        pipe.tokenizer.mask_token = "[MASK]"


def test_save_and_load_round_trip(tmp_path, tokenizer, reward_model):
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer, confidence="maskgit_plus"), logits_shift=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = EntRGiPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.scheduler.config.confidence == "maskgit_plus" and loaded.config.logits_shift is False
    a = pipe(PROMPTS, reward_model=reward_model, generator=seeded(5), **FAST)
    b = loaded(PROMPTS, reward_model=reward_model, generator=seeded(5), **FAST)
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts


def test_progress_bar_is_diffusers(pipe, capsys):
    pipe.set_progress_bar_config(disable=False)
    pipe("the cat", generator=seeded(), **FAST)
    assert "4/4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompt=""), "prompt"),
        (dict(prompt=[]), "prompt"),
        (dict(prompt=["the cat", " "]), "prompt"),
        (dict(prompt="the cat", gen_length=0), "gen_length"),
        (dict(prompt="the cat", num_inference_steps=-1), "num_inference_steps"),
        (dict(prompt="the cat", num_samples_per_prompt=0), "num_samples_per_prompt"),
        (dict(prompt="the cat", guidance_steps=-1), "guidance_steps"),
        (dict(prompt="the cat", guidance_lr=0.0), "guidance_lr"),
        (dict(prompt="the cat", temperature=float("nan")), "temperature"),
        (dict(prompt="the cat", temperature=-1.0), "temperature"),
        (dict(prompt="the cat", top_p=0.0), "top_p"),
        (dict(prompt="the cat", top_p=1.5), "top_p"),
        (dict(prompt="the cat", top_k=0), "top_k"),
        (dict(prompt="the cat", guidance="best_of_n"), "guidance"),
        (dict(prompt="the cat", guidance="entrgi"), "reward_model"),
        (dict(prompt="the cat", reward_prompt=["a", "b"]), "reward_prompt"),
    ],
)
def test_bad_input_names_the_argument(pipe, reward_model, kwargs, match):
    if match == "reward_prompt":
        kwargs["reward_model"] = reward_model
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_reward_arguments_without_a_reward_and_too_long_inputs_are_refused(pipe, tokenizer):
    with pytest.raises(ValueError, match="reward_prompt"):
        pipe("the cat", reward_prompt="the sea", **FAST)
    with pytest.raises(ValueError, match="reward_tokenizer"):
        pipe("the cat", reward_tokenizer=tokenizer, **FAST)
    with pytest.raises(ValueError, match="gen_length"):
        pipe("the cat", gen_length=200, num_inference_steps=2, num_samples_per_prompt=1)


def test_bad_types_name_the_argument(pipe):
    with pytest.raises(TypeError, match="prompt"):
        pipe(prompt=3)
    with pytest.raises(TypeError, match="reward_model"):
        pipe("the cat", reward_model=torch.nn.Linear(2, 2), **FAST)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe("the cat", callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["latents"])


def test_dream_style_pipeline_runs_end_to_end(tokenizer, reward_model):
    pipe = EntRGiPipeline(
        model=tiny_causal_lm(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=MaskedDiffusionScheduler(),
        logits_shift=True,
    )
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPTS, reward_model=reward_model, generator=seeded(), **FAST)
    assert (out.sequences != tokenizer.mask_token_id).all() and out.rewards.shape == (3, 2)


def test_entropy_weight_step_is_the_callbacks_rule_and_differs_from_fixed(pipe, reward_model):
    """`pipe(..., entropy_weight="step")` runs the authors' rule (w from the optimised logits at every Adam step), the
    same as a `RewardGuidance(entropy_weight="step")` callback; the default keeps w fixed per denoising step."""
    call = dict(gen_length=8, num_inference_steps=4, num_samples_per_prompt=2, guidance_steps=3, guidance_lr=2.0)
    step = pipe(
        "the cat", reward_model=reward_model, entropy_weight="step", generator=torch.Generator().manual_seed(0), **call
    )
    callback = RewardGuidance(reward_model, guidance_steps=3, guidance_lr=2.0, entropy_weight="step")
    same = pipe("the cat", callback_on_step_end=callback, generator=torch.Generator().manual_seed(0), **call)
    fixed = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **call)
    assert torch.equal(step.sequences, same.sequences)
    assert not torch.equal(step.sequences, fixed.sequences) or not torch.equal(step.rewards, fixed.rewards)
