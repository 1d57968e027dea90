"""Every bad input to the public API is a ValueError/TypeError naming the argument, raised before any model work,
and leaves the objects usable; the command-line tools answer a bad flag or file with exit status 2 and one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance, VocabularyMap, bench, cli
from entrgi_pipelines.guidance.rewards import CallableReward, SequenceClassifierReward, as_differentiable_reward
from entrgi_pipelines.testing import tiny_bert_config, tiny_wordpiece_tokenizer

from .conftest import get_dummy_components

GOOD = dict(gen_length=6, num_inference_steps=3, num_samples_per_prompt=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def two_label_classifier(tokenizer):
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(len(tokenizer), num_labels=2)).eval()


class Counter:
    """Counts forward calls of the modules it is attached to."""

    def __init__(self, *modules):
        self.calls = 0
        self.handles = [m.register_forward_pre_hook(self.hook) for m in modules]

    def hook(self, module, args):
        self.calls += 1

    def remove(self):
        for handle in self.handles:
            handle.remove()


@pytest.fixture(scope="module")
def guided(tokenizer, reward_model):
    """A pipeline, the output of a good call, and a counter of model forward calls."""
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    reference = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **GOOD)
    counter = Counter(pipe.model, reward_model)
    yield pipe, reference, counter
    counter.remove()


# (kwargs of the call, exception, text the message must contain: the argument's name)
PIPELINE_CASES = {
    "prompt_not_text": (dict(prompt=123), TypeError, "`prompt`"),
    "prompt_list_with_a_number": (dict(prompt=["the cat", 3]), TypeError, "`prompt`"),
    "prompt_blank": (dict(prompt="   "), ValueError, "`prompt`"),
    "prompt_and_messages": (dict(messages=[{"role": "user", "content": "hi"}]), ValueError, "exactly one of `prompt`"),
    "no_prompt": (dict(prompt=None), ValueError, "exactly one of `prompt`"),
    "messages_not_dicts": (dict(prompt=None, messages=[["hi"]]), ValueError, "`messages`"),
    "messages_without_user": (
        dict(prompt=None, messages=[{"role": "system", "content": "be brief"}]),
        ValueError,
        "role 'user'",
    ),
    "input_ids_1d": (dict(prompt=None, input_ids=torch.tensor([5, 6])), ValueError, "`input_ids`"),
    "input_ids_float": (dict(prompt=None, input_ids=torch.tensor([[5.0, 6.0]])), TypeError, "`input_ids`"),
    "input_ids_out_of_vocabulary": (dict(prompt=None, input_ids=torch.tensor([[5, 10**6]])), ValueError, "`input_ids`"),
    "gen_length_zero": (dict(gen_length=0), ValueError, "`gen_length`"),
    "gen_length_past_positions": (dict(gen_length=500), ValueError, "`gen_length`"),
    "steps_float": (dict(num_inference_steps=2.5), TypeError, "`num_inference_steps`"),
    "samples_bool": (dict(num_samples_per_prompt=True), TypeError, "`num_samples_per_prompt`"),
    "guidance_unknown": (dict(guidance="best"), ValueError, "`guidance`"),
    "guidance_without_reward": (dict(reward_model=None, guidance="entrgi"), ValueError, "`reward_model`"),
    "guidance_steps_negative": (dict(guidance_steps=-1), ValueError, "`guidance_steps`"),
    "guidance_steps_float": (dict(guidance_steps=1.5), TypeError, "`guidance_steps`"),
    "guidance_lr_zero": (dict(guidance_lr=0), ValueError, "`guidance_lr`"),
    "guidance_lr_text": (dict(guidance_lr="0.5"), TypeError, "`guidance_lr`"),
    "temperature_negative": (dict(temperature=-1.0), ValueError, "`temperature`"),
    "top_p_zero": (dict(top_p=0.0), ValueError, "`top_p`"),
    "top_p_above_one": (dict(top_p=1.5), ValueError, "`top_p`"),
    "top_k_zero": (dict(top_k=0), ValueError, "`top_k`"),
    "top_k_bool": (dict(top_k=True), TypeError, "`top_k`"),
    "block_length_float": (dict(block_length=2.5), TypeError, "`block_length`"),
    "guidance_scope_unknown": (dict(guidance_scope="all"), ValueError, "`guidance_scope`"),
    "entropy_weight_unknown": (dict(entropy_weight="adam"), ValueError, "`entropy_weight`"),
    "reward_template_without_reward": (dict(reward_model=None, reward_template="{response}"), ValueError, "template"),
    "mask_token_out_of_vocabulary": (dict(mask_token_id=10**6), ValueError, "`mask_token_id`"),
    "reward_prompt_count": (dict(reward_prompt=["a", "b"]), ValueError, "`reward_prompt`"),
    "reward_prompt_not_text": (dict(reward_prompt=[1]), TypeError, "`reward_prompt`"),
    "reward_tokenizer_without_reward": (
        dict(reward_model=None, reward_tokenizer="tok"),
        ValueError,
        "`reward_tokenizer`",
    ),
    "callback_not_callable": (dict(callback_on_step_end="guide"), TypeError, "`callback_on_step_end`"),
    "callback_tensor_unknown": (
        dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["hidden"]),
        ValueError,
        "`callback_on_step_end_tensor_inputs`",
    ),
    "generator_not_a_generator": (dict(generator=0), TypeError, "`generator`"),
    "reward_model_without_embeddings": (dict(reward_model=object()), TypeError, "`reward_model`"),
    "reward_model_two_labels": ("two_labels", ValueError, "num_labels"),
    "reward_model_list_with_none": ("list_with_none", ValueError, "`reward_model`"),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_refuses_bad_input_before_model_work_and_stays_usable(guided, tokenizer, reward_model, case):
    pipe, reference, counter = guided
    kwargs, error, message = PIPELINE_CASES[case]
    if kwargs == "two_labels":
        kwargs = dict(reward_model=two_label_classifier(tokenizer))
    elif kwargs == "list_with_none":
        kwargs = dict(reward_model=[reward_model, None])
    call = {"prompt": "the cat", "reward_model": reward_model, **GOOD, **kwargs}
    before, encoded = counter.calls, []
    encode_prompt = pipe.encode_prompt
    pipe.encode_prompt = lambda *args: encoded.append(args) or encode_prompt(*args)
    try:
        with pytest.raises(error, match=message):
            pipe(**call)
    finally:
        del pipe.encode_prompt
    assert counter.calls == before, "a bad input must be refused before any model runs"
    # only the position limit needs the encoded prompt's length
    assert not encoded or case == "gen_length_past_positions", "a bad input must be refused before prompt encoding"
    assert pipe.sampling_state == {}
    out = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **GOOD)
    assert torch.equal(out.sequences, reference.sequences) and torch.equal(out.rewards, reference.rewards)


def test_every_argument_after_the_prompt_is_keyword_only(guided, reward_model):
    pipe, _, counter = guided
    before = counter.calls
    with pytest.raises(TypeError, match="positional"):
        pipe("the cat", reward_model)
    assert counter.calls == before


def test_a_wrong_type_is_a_type_error_everywhere_and_still_a_value_error_for_old_callers(reward_model, guided):
    """One exception type per kind of mistake, the same in the pipeline and in `RewardGuidance`; the type errors of
    the shared checks also derive from ValueError, which the pipeline raised for some of them before."""
    pipe = guided[0]
    for make in (
        lambda: pipe("the cat", reward_model=reward_model, guidance_steps=1.5, **GOOD),
        lambda: RewardGuidance(reward_model, guidance_steps=1.5),
        lambda: pipe("the cat", reward_model=reward_model, top_k=True, **GOOD),
    ):
        with pytest.raises(TypeError) as error:
            make()
        assert isinstance(error.value, ValueError)


def test_reward_guidance_and_its_vocabulary_maps_are_reused_across_calls(tokenizer, reward_model, monkeypatch):
    from entrgi_pipelines.guidance import reward_guidance

    built = []
    original = reward_guidance.VocabularyMap.from_tokenizers
    monkeypatch.setattr(
        reward_guidance.VocabularyMap,
        "from_tokenizers",
        staticmethod(lambda *args, **kwargs: built.append(1) or original(*args, **kwargs)),
    )
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    first = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **GOOD)
    again = pipe("the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **GOOD)
    assert len(built) == 1, "the same reward model and tokenizer: the vocabulary map is built once"
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.rewards, again.rewards)
    aps = pipe("the cat", reward_model=reward_model, guidance="aps", guidance_steps=1, **GOOD)
    assert len(built) == 1 and pipe._last_reward_guidance[1].config.guidance == "aps"
    assert aps.rewards.shape == (1, 2)
    other = two_label_classifier(tokenizer)  # a new object: a new RewardGuidance (refused here for its labels)
    with pytest.raises(ValueError, match="num_labels"):
        pipe("the cat", reward_model=other, **GOOD)
    pipe("the cat", reward_model=reward_model, **GOOD)
    assert len(built) == 1, "a refused call leaves the kept guidance as it was"


GUIDANCE_CASES = {
    "guidance_unknown": (dict(guidance="best"), ValueError, "`guidance`"),
    "guidance_steps_float": (dict(guidance_steps=1.5), TypeError, "`guidance_steps`"),
    "guidance_steps_negative": (dict(guidance_steps=-2), ValueError, "`guidance_steps`"),
    "guidance_lr_negative": (dict(guidance_lr=-0.5), ValueError, "`guidance_lr`"),
    "reward_weights_count": (dict(reward_weights=[1.0, 2.0]), ValueError, "`reward_weights`"),
    "reward_weights_text": (dict(reward_weights=["1"]), TypeError, "`reward_weights`"),
    "cutoff_ratio_above_one": (dict(cutoff_step_ratio=1.5), ValueError, "`cutoff_step_ratio`"),
    "cutoff_index_negative": (dict(cutoff_step_index=-1), ValueError, "`cutoff_step_index`"),
    "cutoff_both": (dict(cutoff_step_ratio=0.5, cutoff_step_index=2), ValueError, "not both"),
    "unmapped_unknown": (dict(unmapped_tokens="drop"), ValueError, "`unmapped_tokens`"),
    "padding_side_unknown": (dict(padding_side="middle"), ValueError, "`padding_side`"),
    "no_reward_model": (dict(reward_model=None), ValueError, "`reward_model`"),
}


@pytest.mark.parametrize("case", list(GUIDANCE_CASES))
def test_reward_guidance_refuses_bad_arguments(reward_model, case):
    kwargs, error, message = GUIDANCE_CASES[case]
    with pytest.raises(error, match=message):
        RewardGuidance(**{"reward_model": reward_model, **kwargs})


def test_reward_guidance_accepts_a_cutoff_index_alone(pipe, reward_model):
    guidance = RewardGuidance(reward_model, cutoff_step_index=1, keep_trace=True, guidance_steps=1)
    pipe("the cat", callback_on_step_end=guidance, **GOOD)
    assert guidance.config.cutoff_step_index == 1 and guidance.config.cutoff_step_ratio is None
    assert len(guidance.trace) == 1  # only step 0 is guided


def run_scheduler(scheduler, seed=0):
    scheduler.set_timesteps(3)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.full((2, 6), 9)
    for t in scheduler.timesteps:
        logits = torch.randn(2, 6, 10, generator=generator)
        sample = scheduler.step(logits, t, sample, mask_token_id=9, generator=generator).prev_sample
    return sample


STEP_CASES = {
    "sample_shape": (dict(sample=torch.full((2, 5), 9)), ValueError, "`sample`"),
    "model_output_2d": (dict(model_output=torch.randn(2, 10)), ValueError, "`model_output`"),
    "mask_id_out_of_range": (dict(mask_token_id=10), ValueError, "`mask_token_id`"),
    "mask_id_float": (dict(mask_token_id=9.0), TypeError, "`mask_token_id`"),
    "top_p_above_one": (dict(top_p=2.0), ValueError, "`top_p`"),
    "top_k_negative": (dict(top_k=-1), ValueError, "`top_k`"),
    "timestep_unknown": (dict(timestep=0.123), ValueError, "`timestep`"),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_scheduler_step_refuses_bad_arguments_and_stays_usable(case):
    kwargs, error, message = STEP_CASES[case]
    scheduler = MaskedDiffusionScheduler()
    scheduler.set_timesteps(3)
    call = dict(
        model_output=torch.randn(2, 6, 10),
        timestep=scheduler.timesteps[0],
        sample=torch.full((2, 6), 9),
        mask_token_id=9,
    )
    call.update(kwargs)
    with pytest.raises(error, match=message):
        scheduler.step(call.pop("model_output"), call.pop("timestep"), call.pop("sample"), **call)
    assert torch.equal(run_scheduler(scheduler), run_scheduler(MaskedDiffusionScheduler()))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: MaskedDiffusionScheduler(confidence="loudest"), ValueError, "`confidence`"),
        (lambda: MaskedDiffusionScheduler(eps=0.0), ValueError, "`eps`"),
        (lambda: MaskedDiffusionScheduler(eps=float("nan")), ValueError, "`eps`"),
        (lambda: MaskedDiffusionScheduler().set_timesteps(0), ValueError, "`num_inference_steps`"),
        (
            lambda: MaskedDiffusionScheduler().step(torch.randn(1, 2, 10), 1.0, torch.full((1, 2), 9), mask_token_id=9),
            ValueError,
            "set_timesteps",
        ),
    ],
)
def test_scheduler_refuses_bad_configuration(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda tok: VocabularyMap.from_tokenizers(tok, tok_chat(), unmapped="drop"), ValueError, "`unmapped`"),
        (lambda tok: VocabularyMap.from_tokenizers(tok, tok, unmapped="drop"), ValueError, "`unmapped`"),
        (
            lambda tok: VocabularyMap.from_tokenizers(tok, other_vocab(), unmapped=10**6),
            ValueError,
            "`unmapped=1000000`",
        ),
        (lambda tok: VocabularyMap.from_tokenizers(tok, other_vocab(), unmapped="error"), ValueError, "`unmapped`"),
        (lambda tok: VocabularyMap.from_tokenizers("bert", tok), TypeError, "`source`"),
        (lambda tok: VocabularyMap.from_tokenizers(tok, tok, source_size=-1), ValueError, "`source_size`"),
        (lambda tok: VocabularyMap.identity(0), ValueError, "`size`"),
    ],
)
def test_vocabulary_map_refuses_bad_arguments(tokenizer, make, error, message):
    with pytest.raises(error, match=message):
        make(tokenizer)


def tok_chat():
    return tiny_wordpiece_tokenizer(chat_template=True)


def other_vocab():
    """A tokenizer whose vocabulary lacks most of the tiny one's words."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "sea": 2, "ship": 3}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda tok, rm: SequenceClassifierReward(two_label_classifier(tok)), ValueError, "num_labels"),
        (lambda tok, rm: SequenceClassifierReward(rm, padding_side="middle"), ValueError, "`padding_side`"),
        (lambda tok, rm: CallableReward(3), TypeError, "`reward`"),
        (lambda tok, rm: as_differentiable_reward(lambda e, m: e.sum(-1)), TypeError, "get_input_embeddings"),
    ],
)
def test_reward_adapters_refuse_bad_models(tokenizer, reward_model, make, error, message):
    with pytest.raises(error, match=message):
        make(tokenizer, reward_model)


def test_loaders_refuse_bad_arguments(tmp_path):
    from entrgi_pipelines.stack.dllm import load_embedded_dllm

    with pytest.raises(ValueError, match="`version`"):
        load_embedded_dllm(version="v9")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        load_embedded_dllm(not_a_folder)
    with pytest.raises(ValueError, match="neither a valid local path"):
        EntRGiPipeline.from_pretrained(str(tmp_path / "missing"))


# Command-line tools


@pytest.fixture
def files(tmp_path):
    """A good prompts file, bad ones, a model folder without config.json, and a bench output of other settings."""
    good = tmp_path / "prompts.jsonl"
    good.write_text('{"prompt": "the cat", "target": "food"}\n{"prompt": "a dog"}\n')
    (tmp_path / "broken.jsonl").write_text('{"prompt": "the cat"}\n{"prompt": \n')
    (tmp_path / "no_prompt.jsonl").write_text('{"text": "the cat"}\n')
    (tmp_path / "empty_folder").mkdir()
    other = bench.bench_config(bench.build_parser().parse_args(["--prompts", str(good), "--num-prompts", "2"]))
    (tmp_path / "other.json").write_text(json.dumps({"config": {**other, "eta": 9.0}, "records": []}))
    (tmp_path / "garbage.json").write_text("{not json")
    return tmp_path


BENCH_CASES = {
    "unknown_flag": (["--bogus"], "unrecognized arguments: --bogus"),
    "abbreviated_flag": (["--num-prompt", "3"], "unrecognized arguments: --num-prompt 3"),
    "abbreviated_folder_flag": (["--reward-mod", "x"], "unrecognized arguments: --reward-mod x"),
    "missing_prompts_file": (["--prompts", "{tmp}/missing.jsonl"], "no such file"),
    "prompts_file_is_a_folder": (["--prompts", "{tmp}"], "is a folder"),
    "bad_jsonl": (["--prompts", "{tmp}/broken.jsonl"], "line 2 is not valid JSON"),
    "jsonl_without_prompt": (["--prompts", "{tmp}/no_prompt.jsonl"], "line 1 has no non-empty 'prompt'"),
    "too_many_prompts": (["--prompts", "{tmp}/prompts.jsonl", "--num-prompts", "3"], "--num-prompts 3 exceeds"),
    "zero_samples": (["-K", "0"], "-K/--num-samples: must be an integer >= 1"),
    "steps_not_a_number": (["-T", "many"], "-T/--steps: expected an integer"),
    "top_p_above_one": (["--top-p", "1.5"], "--top-p: must be a finite number in (0, 1]"),
    "eta_nan": (["--eta", "nan"], "--eta: must be a finite number"),
    "tau_inf": (["--tau", "inf"], "--tau: must be a finite number"),
    "negative_guidance_steps": (["-M", "-1"], "-M/--guidance-steps"),
    "unknown_method": (["--methods", "best"], "--methods: invalid choice"),
    "duplicate_seeds": (["--seeds", "0", "0"], "--seeds lists [0, 0]"),
    "missing_dllm_folder": (["--dllm", "{tmp}/missing"], "--dllm: no such model folder"),
    "reward_model_hub_name": (["--reward-model", "lm-judge"], "--reward-model: no such model folder: 'lm-judge'"),
    "judge_folder_without_config": (["--judge", "{tmp}/empty_folder"], "--judge: '{tmp}/empty_folder' is not a model"),
    "judge_is_a_file": (["--judge", "{tmp}/prompts.jsonl"], "is a file, not a model folder"),
    "output_folder_missing": (["--output", "{tmp}/missing/out.json"], "--output"),
    "resume_without_output": (["--resume"], "--resume needs --output"),
    "resume_other_settings": (
        ["--prompts", "{tmp}/prompts.jsonl", "--num-prompts", "2", "--output", "{tmp}/other.json", "--resume"],
        "different settings (eta)",
    ),
    "resume_garbage_file": (["--output", "{tmp}/garbage.json", "--resume"], "is not an entrgi-bench output file"),
    "block_not_a_divisor": (["-L", "16", "--block-length", "5"], "`block_length` (5) must divide `gen_length` (16)"),
    "steps_per_block": (["-L", "16", "-T", "6", "--block-length", "4"], "`num_inference_steps` (6) must be divisible"),
    "threshold_zero": (["--threshold", "0"], "--threshold: must be a finite number in (0, 1]"),
    "threshold_with_random": (["--threshold", "0.9", "--confidence", "random"], "`threshold` needs a confidence"),
    "unknown_schedule": (["--commit-schedule", "linear"], "--commit-schedule: invalid choice"),
    "negative_tau": (["--tau", "-1"], "--tau: must be a finite number in [0, inf)"),
}


def run_main(main, argv, capsys, monkeypatch):
    """Runs a console entry point in-process; returns (exit status, stderr). Loading any model fails the test."""

    def no_models(*args, **kwargs):
        raise AssertionError("a bad command line must be refused before any model is loaded")

    monkeypatch.setattr(bench, "load_components", no_models)
    monkeypatch.setattr("entrgi_pipelines.stack.load_embedded_stack", no_models)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(BENCH_CASES))
def test_entrgi_bench_answers_a_bad_flag_or_file_with_status_2_and_one_line(files, capsys, monkeypatch, case):
    argv, message = BENCH_CASES[case]
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    status, err = run_main(bench.main, argv, capsys, monkeypatch)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("entrgi-bench: error: ")
    assert message.replace("{tmp}", str(files)) in err


CLI_CASES = {
    "unknown_command": (["paint"], "invalid choice: 'paint'"),
    "abbreviated_flag": (["generate", "the cat", "--targ", "food"], "required: --target"),
    "empty_prompt": (["generate", " ", "--target", "food"], "the prompt must not be empty"),
    "empty_target": (["generate", "the cat", "--target", ""], "the target must not be empty"),
    "zero_width": (["generate", "the cat", "--target", "food", "--width", "0"], "--width: must be an integer >= 1"),
    "top_p_zero": (["generate", "the cat", "--target", "food", "--top-p", "0"], "--top-p"),
    "method_none": (["generate", "the cat", "--target", "food", "--method", "none"], "--method: invalid choice"),
    "gif_name": (["animate", "the cat", "--target", "food", "--output", "x.png"], "--output must name a .gif"),
    "export_namespace": (["export", "{tmp}/out", "--namespace", "a/b"], "`namespace`"),
    "export_into_a_file": (["export", "{tmp}/prompts.jsonl"], "is a file: DIR must be a folder"),
    "block_not_a_divisor": (["generate", "the cat", "--target", "food", "--block-length", "5"], "must divide"),
    "animate_steps_per_block": (
        ["animate", "the cat", "--target", "food", "-T", "30", "--block-length", "8"],
        "must be divisible by the number of blocks",
    ),
    "unknown_confidence": (["generate", "the cat", "--target", "food", "--confidence", "best"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_entrgi_answers_a_bad_flag_with_status_2_and_one_line(files, capsys, monkeypatch, case):
    argv, message = CLI_CASES[case]
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    status, err = run_main(cli.main, argv, capsys, monkeypatch)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("entrgi"), err
    assert message in err


def test_command_line_tools_as_processes_answer_bad_input_with_status_2_and_one_line(files):
    """The installed entry points, as a user runs them: no traceback, one line, status 2 (run concurrently)."""
    bench_cmd = [sys.executable, "-m", "entrgi_pipelines.bench"]
    cases = {
        "unknown flag": (bench_cmd + ["--bogus"], "unrecognized arguments"),
        "missing prompts file": (bench_cmd + ["--prompts", str(files / "missing.jsonl")], "no such file"),
        "bad JSONL": (bench_cmd + ["--prompts", str(files / "broken.jsonl")], "not valid JSON"),
        "out-of-range number": (bench_cmd + ["--top-p", "7"], "--top-p"),
        "missing model folder": (bench_cmd + ["--reward-model", "lm-judge"], "no such model folder"),
        "empty prompt": ([sys.executable, "-m", "entrgi_pipelines.cli", "generate", "", "--target", "x"], "empty"),
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
        for name, (cmd, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err and err.count("\n") == 1, (name, err)
        assert cases[name][1] in err, (name, err)
        assert out == ""
