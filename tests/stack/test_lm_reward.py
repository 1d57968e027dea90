"""The LM-judge reward of the embedded stack (SmolLM2-135M-Instruct), its prefix cache and its tokenizer bridge.

Loads SmolLM2 once for the module (a few seconds); the rest of the LM-reward tests run on tiny models
(tests/guidance/test_reward_layouts.py, tests/guidance/test_vocab_bridge.py).
"""

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance, bench, cli
from entrgi_pipelines.guidance import CausalLMReward, RewardTerm
from entrgi_pipelines.guidance.rewards import visible_before_eos
from entrgi_pipelines.guidance.templates import layout_response
from entrgi_pipelines.stack import LM_JUDGE_TEMPLATE, load_lm_judge_reward
from entrgi_pipelines.stack.minilm import load_minilm_tokenizer
from entrgi_pipelines.testing import tiny_masked_lm

# One lower-case passage per target (the dLLM is uncased).
PASSAGES = {
    "food and eating": "we ate fresh bread with butter and cheese, and drank hot soup for dinner.",
    "computers and programs": "the program crashed because of a bug in the code, so i rebooted the computer.",
    "religion and god": "and the lord god spoke unto moses, and the people prayed in the temple.",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judge():
    return load_lm_judge_reward()


def test_loader_gives_the_judge_conversation(judge):
    reward, tokenizer = judge
    assert isinstance(reward, CausalLMReward) and reward.reward_template == LM_JUDGE_TEMPLATE
    layout = layout_response(tokenizer, LM_JUDGE_TEMPLATE, "there was a", "food and eating")
    assert tokenizer.decode(layout.prefix).endswith("<|im_start|>user\nWhat is the following text about?\nText:")
    assert layout.lead == " "  # the response is read as " we ate..." (Ġwe), as in the whole conversation
    suffix = tokenizer.decode(layout.suffix)
    assert suffix == "<|im_end|>\n<|im_start|>assistant\nThis text is about food and eating"
    scored = [t for t, s in zip(layout.suffix, layout.scored) if s]
    assert tokenizer.decode(scored) == " food and eating"


def test_each_target_prefers_its_own_passage(judge):
    """What guidance needs: for one target, an on-topic response scores higher than off-topic ones."""
    reward, tokenizer = judge
    targets, texts = list(PASSAGES), list(PASSAGES.values())
    term = RewardTerm(reward, tokenizer)
    term.prepare([t for _ in texts for t in targets], "cpu")
    with torch.no_grad():
        scores = term.reward_of_texts([x for x in texts for _ in targets]).reshape(len(texts), len(targets))
    assert bool((scores < 0).all())  # mean log-probabilities
    assert scores.argmax(0).tolist() == list(range(len(targets)))


def test_prefix_cache_on_smollm2_gives_the_uncached_rewards_and_gradients(judge):
    reward, tokenizer = judge
    targets = ["food and eating", "religion and god", "food and eating", "sports and games"]
    tokens = torch.randint(1000, 20000, (4, 8), generator=torch.Generator().manual_seed(0))
    visible = torch.ones_like(tokens, dtype=torch.bool)
    visible[2, 5:] = False
    results = []
    for prefix_cache in (None, False):
        term = RewardTerm(reward, tokenizer, prefix_cache=prefix_cache)
        term.prepare(targets, "cpu")
        assert (term._context["cache"] is not None) is (prefix_cache is None)
        embeds = term.embeddings(tokens).detach().requires_grad_(True)
        value = term.reward(embeds, visible)
        (grad,) = torch.autograd.grad(value.sum(), embeds)  # to the response only, as guidance does
        results.append((value.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-3)


def test_hard_reward_equals_reported_reward_across_minilm_and_smollm2(judge):
    """The invariant across the real bridge (see tests/guidance/test_vocab_bridge.py for where it cannot hold)."""
    reward, reward_tokenizer = judge
    tokenizer = load_minilm_tokenizer()
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    guidance = RewardGuidance(reward, reward_tokenizer, guidance="aps", guidance_steps=0)  # prepared by the call
    sentences = ["and he said unto them, the lord is good.", "there was a feast of bread and wine!", "israel"]
    pipe(
        ["x"] * 3,
        callback_on_step_end=guidance,
        reward_prompt="food and eating",
        num_samples_per_prompt=1,
        gen_length=2,
        num_inference_steps=1,
    )
    rows = tokenizer(sentences, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
    rows = torch.where(rows == tokenizer.pad_token_id, tokenizer.eos_token_id, rows)
    nothing = torch.zeros_like(rows, dtype=torch.bool)
    with torch.no_grad():
        seen = guidance.guided_reward(rows, nothing, torch.zeros(0, pipe.vocab_size), rows[:0, 0], torch.zeros(0))
    visible = visible_before_eos(rows, tokenizer.eos_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(torch.where(visible, rows, 0), skip_special_tokens=True)]
    assert texts == sentences
    reported = guidance.score_texts(texts)
    vmap = guidance.terms[0].vocab_map
    for text, row, keep, a, b in zip(texts, rows, visible, seen, reported):
        exact = reward_tokenizer(" " + text, add_special_tokens=False)["input_ids"] == vmap.ids[row[keep]].tolist()
        assert exact == (text != "israel")  # "israel" maps to "ĠIsrael" (casing); the text re-encodes otherwise
        if exact:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        else:
            assert not torch.isclose(a, b, atol=1e-3, rtol=1e-3)


def test_bench_and_cli_select_the_lm_judge(judge, tmp_path, capsys):
    reward, tokenizer = judge
    args = bench.build_parser().parse_args(["--reward", "lm-judge", "-K", "2", "-T", "2", "-L", "4", "-M", "1"])
    pipe, (reward_model, reward_tokenizer), _ = bench.load_components(args)
    assert isinstance(reward_model, CausalLMReward) and reward_model.reward_template == LM_JUDGE_TEMPLATE
    assert reward_tokenizer.get_vocab() == tokenizer.get_vocab()
    out = bench.guided_samples(
        pipe, reward, tokenizer, ["there was a"], ["food and eating"], "entrgi", args, torch.Generator().manual_seed(0)
    )
    assert out.rewards.shape == (1, 2) and bool((out.rewards < 0).all())  # mean log-probabilities
    assert bench.build_parser().parse_args([]).reward == "similarity"  # the default is unchanged
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    with pytest.raises(SystemExit):  # an HF reward folder replaces the embedded reward: not both
        bench.main(["--reward", "lm-judge", "--reward-model", str(tmp_path / "rm"), "--num-prompts", "1"])
    assert "--reward-model replaces the embedded reward" in capsys.readouterr().err
    cli.main(
        ["generate", "there was a", "--target", "food and eating", "--reward", "lm-judge"]
        + ["-K", "2", "-T", "2", "-L", "4", "-M", "1", "--quiet"]
    )
    printed = capsys.readouterr().out
    assert "Top@1 reward -" in printed  # log-probabilities are negative
