"""Interrupted work: an error or KeyboardInterrupt inside a call leaves the pipeline and its callbacks reusable;
`entrgi-bench` writes its output atomically and `--resume` continues a killed run where it stopped."""

import copy
import json
import logging
import os

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, RewardGuidance, bench
from entrgi_pipelines.checkpoint import write_json_atomic
from entrgi_pipelines.guidance.rewards import SequenceClassifierReward
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model

from .conftest import get_dummy_components

CALL = dict(gen_length=6, num_inference_steps=3, num_samples_per_prompt=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def fresh_pipe(tokenizer):
    pipe = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FailingReward(torch.nn.Module):
    """A reward model that raises `error` at one forward call (and returns NaN for sample 0 at another, if asked)."""

    def __init__(self, reward_model, fail_at: int, error: BaseException, nan_at: int | None = None):
        super().__init__()
        self.inner = SequenceClassifierReward(reward_model)
        self.fail_at, self.error, self.nan_at, self.calls = fail_at, error, nan_at, 0

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, inputs_embeds, attention_mask):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        reward = self.inner(inputs_embeds, attention_mask)
        if self.calls == self.nan_at:
            reward = reward * torch.tensor([float("nan")] + [1.0] * (reward.shape[0] - 1))
        return reward


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("callback failed")])
def test_an_interrupted_function_callback_leaves_the_pipeline_reusable(tokenizer, reward_model, error):
    pipe = fresh_pipe(tokenizer)
    seen = []

    def callback(pipeline, step, timestep, kwargs):
        seen.append(step)
        if step == 1 and len(seen) == 2:  # only in the first call
            raise error
        return kwargs

    with pytest.raises(type(error)):
        pipe("the cat", reward_model=reward_model, callback_on_step_end=callback, **CALL)
    assert pipe.sampling_state == {}
    out = pipe(
        "the cat",
        reward_model=reward_model,
        callback_on_step_end=callback,
        generator=torch.Generator().manual_seed(0),
        **CALL,
    )
    expected = fresh_pipe(tokenizer)(
        "the cat", reward_model=reward_model, generator=torch.Generator().manual_seed(0), **CALL
    )
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.rewards, expected.rewards)
    assert seen == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("reward model failed")])
def test_an_interrupted_reward_model_leaves_the_pipeline_and_the_guidance_reusable(
    tokenizer, reward_model, caplog, error
):
    # forward 1 gives sample 0 a NaN reward (a fallback), forward 3 raises: the interrupted call's fallbacks and
    # trace must not leak into the next call
    failing = FailingReward(reward_model, fail_at=3, error=error, nan_at=1)
    guidance = RewardGuidance(failing, tokenizer, guidance_steps=2, keep_trace=True)
    pipe = fresh_pipe(tokenizer)
    with pytest.raises(type(error)):
        pipe("the cat", callback_on_step_end=guidance, generator=torch.Generator().manual_seed(0), **CALL)
    assert pipe.sampling_state == {}
    with caplog.at_level(logging.WARNING, logger="entrgi_pipelines.guidance.reward_guidance"):
        out = pipe("the cat", callback_on_step_end=guidance, generator=torch.Generator().manual_seed(1), **CALL)
    assert not [r for r in caplog.records if "fell back" in r.getMessage()]
    assert len(guidance.trace) == 2 * CALL["num_inference_steps"]

    reference = RewardGuidance(FailingReward(reward_model, fail_at=-1, error=error), tokenizer, guidance_steps=2)
    expected = fresh_pipe(tokenizer)(
        "the cat", callback_on_step_end=reference, generator=torch.Generator().manual_seed(1), **CALL
    )
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.rewards, expected.rewards)


def test_an_interrupted_reward_guidance_setup_leaves_nothing_half_built(tokenizer, reward_model):
    """A setup that stops at the second reward model must not leave the first one alone for the next call."""
    second_model = tiny_reward_model(len(tokenizer), seed=1)
    second_tokenizer = copy.deepcopy(tokenizer)
    broken = {"now": False}
    real_get_vocab = second_tokenizer.get_vocab

    def get_vocab():
        if broken["now"]:
            raise KeyboardInterrupt
        return real_get_vocab()

    second_tokenizer.get_vocab = get_vocab
    guidance = RewardGuidance([reward_model, second_model], [tokenizer, second_tokenizer], guidance_steps=1)
    pipe = fresh_pipe(tokenizer)
    pipe("the cat", callback_on_step_end=guidance, **CALL)
    other = fresh_pipe(copy.deepcopy(tokenizer))  # another tokenizer: the reward terms are rebuilt for it
    broken["now"] = True
    with pytest.raises(KeyboardInterrupt):
        other("the cat", callback_on_step_end=guidance, **CALL)
    broken["now"] = False
    out = pipe("the cat", callback_on_step_end=guidance, generator=torch.Generator().manual_seed(0), **CALL)
    reference = RewardGuidance([reward_model, second_model], [tokenizer, tokenizer], guidance_steps=1)
    expected = fresh_pipe(tokenizer)(
        "the cat", callback_on_step_end=reference, generator=torch.Generator().manual_seed(0), **CALL
    )
    assert torch.equal(out.sequences, expected.sequences) and torch.equal(out.rewards, expected.rewards)


# entrgi-bench: atomic output and --resume


@pytest.mark.parametrize("failure", ["serialise", "interrupt"])
def test_an_interrupted_write_leaves_the_previous_file_whole(tmp_path, monkeypatch, failure):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"records": [1, 2, 3]})
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain write would leave it
    if failure == "serialise":
        with pytest.raises(TypeError):
            write_json_atomic(path, {"records": [object()]})
    else:

        def interrupted(fd):
            raise KeyboardInterrupt

        monkeypatch.setattr(os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_json_atomic(path, {"records": list(range(10**5))})
    assert json.loads(path.read_text()) == {"records": [1, 2, 3]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind


class StubLMJudges:
    """Stands in for the SmolLM2 judges where this bench version uses them (a 135M model is not needed here)."""

    def record_fields(self, prompts, targets, texts, minilm_scores, reward):
        return [{"judge": score} for score in minilm_scores]


@pytest.fixture
def tiny_bench(tmp_path, tokenizer, monkeypatch):
    """Model folders written by save_pretrained, a prompts file, and the bench arguments that use them."""
    for name, model in (
        ("dllm", tiny_masked_lm(len(tokenizer))),
        ("reward", tiny_reward_model(len(tokenizer))),
        ("judge", tiny_reward_model(len(tokenizer), seed=1)),
    ):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    prompts = tmp_path / "prompts.jsonl"
    rows = [("the cat", "food and bread"), ("a king", "the sea"), ("the dog ran", "love and peace")]
    prompts.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in rows))
    try:
        from entrgi_pipelines.stack import judges
    except ImportError:
        judges = None
    if judges is not None and hasattr(judges, "load_smollm_judges"):
        monkeypatch.setattr(judges, "load_smollm_judges", lambda *args, **kwargs: StubLMJudges())
    argv = ["--prompts", str(prompts), "--num-prompts", "3", "--batch-size", "2", "--methods", "none", "entrgi"]
    argv += ["--seeds", "0", "1", "-K", "2", "-T", "3", "-L", "4", "-M", "1", "--threads", "1"]
    argv += ["--dllm", str(tmp_path / "dllm"), "--reward-model", str(tmp_path / "reward")]
    argv += ["--judge", str(tmp_path / "judge")]
    return tmp_path, argv


def comparable(records):
    """Records without the timings."""
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def test_a_killed_bench_run_resumes_where_it_stopped_and_matches_a_full_run(tiny_bench, monkeypatch, capsys):
    folder, argv = tiny_bench
    bench.main(argv + ["--output", str(folder / "full.json")])
    full = json.loads((folder / "full.json").read_text())
    assert len(full["records"]) == 2 * 2 * 3 and "partial" not in full

    calls, kill = [], {"at": 4}
    real = bench.guided_samples

    def killed_at_the_fourth_batch(*args, **kwargs):
        calls.append(args[5])  # the method
        if len(calls) == kill["at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "guided_samples", killed_at_the_fourth_batch)
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv + ["--output", str(folder / "run.json")])
    partial = json.loads((folder / "run.json").read_text())  # whole JSON: the 3 batches before the kill
    assert comparable(partial["records"]) == comparable(full["records"][:5])
    assert partial["partial"] is True

    calls.clear()
    kill["at"] = None
    bench.main(argv + ["--output", str(folder / "run.json"), "--resume"])
    resumed = json.loads((folder / "run.json").read_text())
    # nothing of the finished (none, seed 0) run again; the (none, seed 1) run resumed or redone, then entrgi's
    assert calls.count("none") in (1, 2) and calls.count("entrgi") == 4
    assert comparable(resumed["records"]) == comparable(full["records"])
    assert "partial" not in resumed and resumed["config"] == full["config"]
    assert resumed["summary"].keys() == full["summary"].keys()

    calls.clear()  # resuming a finished run runs nothing
    bench.main(argv + ["--output", str(folder / "run.json"), "--resume"])
    assert calls == []
    assert comparable(json.loads((folder / "run.json").read_text())["records"]) == comparable(full["records"])
    capsys.readouterr()


def test_a_resumed_run_extends_to_more_prompts_seeds_and_methods_as_a_fresh_run_would(tiny_bench, monkeypatch, capsys):
    folder, argv = tiny_bench

    def with_settings(prompts: str, seeds: list[str], methods: list[str]) -> list[str]:
        changed = list(argv)
        changed[changed.index("--num-prompts") + 1] = prompts
        seeds_at, methods_at = changed.index("--seeds"), changed.index("--methods")
        changed[seeds_at : seeds_at + 3] = ["--seeds", *seeds]
        changed[methods_at : methods_at + 3] = ["--methods", *methods]
        return changed

    bench.main(argv + ["--output", str(folder / "full.json")])
    full = json.loads((folder / "full.json").read_text())
    # 1 prompt x seed 0 x none saved; the full run adds prompts 2-3 (a new batch and a refilled one), seed 1, entrgi
    bench.main(with_settings("1", ["0"], ["none"]) + ["--output", str(folder / "run.json")])
    calls = []
    real = bench.guided_samples

    def counted(*args, **kwargs):
        calls.append((args[5], len(args[3])))  # (method, prompts in the batch)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "guided_samples", counted)
    bench.main(argv + ["--output", str(folder / "run.json"), "--resume"])
    extended = json.loads((folder / "run.json").read_text())
    assert comparable(extended["records"]) == comparable(full["records"])
    assert extended["config"] == full["config"]
    # (none, seed 0): its first batch of two prompts held one saved record, so it ran again whole; nothing else saved
    assert len(calls) == 2 * 2 * 2

    calls.clear()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(with_settings("3", ["0"], ["none", "entrgi"]) + ["--output", str(folder / "run.json"), "--resume"])
    assert exit_info.value.code == 2 and calls == []
    assert "holds more than this run covers (seeds=[0, 1])" in capsys.readouterr().err
    assert json.loads((folder / "run.json").read_text()) == extended  # the refused run changed nothing
