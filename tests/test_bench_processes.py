"""`entrgi-bench` across processes: `accelerate launch` with 2 CPU processes writes the records of one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import BertForMaskedLM, BertForSequenceClassification

from entrgi_pipelines.bench import batch_generator
from entrgi_pipelines.testing import tiny_bert_config, tiny_wordpiece_tokenizer

from .conftest import free_port

TIMING_FIELDS = ("seconds", "judge_seconds")


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """Tiny dLLM, reward model and judge folders, as `--dllm`, `--reward-model` and `--judge` take them."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = tiny_wordpiece_tokenizer()
    folders = {}
    for name, cls, extra, seed in (
        ("dllm", BertForMaskedLM, {}, 0),
        ("reward", BertForSequenceClassification, {"num_labels": 1}, 1),
        ("judge", BertForSequenceClassification, {"num_labels": 1}, 2),
    ):
        torch.manual_seed(seed)
        cls(tiny_bert_config(len(tokenizer), **extra)).eval().save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        folders[name] = str(root / name)
    return folders


def run_bench(launcher: list[str], model_folders: dict, output, prompts) -> list[dict]:
    args = [
        *("-m", "entrgi_pipelines.bench", "--prompts", str(prompts), "--num-prompts", "3", "--batch-size", "1"),
        *("--methods", "entrgi", "--seeds", "0", "5", "-K", "2", "-T", "2", "-L", "4", "-M", "1"),
        *("--dllm", model_folders["dllm"], "--reward-model", model_folders["reward"]),
        *("--judge", model_folders["judge"]),
        *("--threads", "1", "--output", str(output)),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(output.read_text())["records"]


def test_two_cpu_processes_write_the_records_of_one(model_folders, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [("the cat sat", "animals"), ("a king and a queen", "the royal house"), ("why", "science")]
    prompts.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in rows))
    one = run_bench([sys.executable], model_folders, tmp_path / "one.json", prompts)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    two = run_bench(launch, model_folders, tmp_path / "two.json", prompts)

    # every (seed, prompt), in that order, from 3 batches per seed of which each process ran its share
    expected = [("entrgi", s, p) for s in (0, 5) for p, _ in rows]
    assert [(r["method"], r["seed"], r["prompt"]) for r in two] == expected
    strip = [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in one]
    assert [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in two] == strip


def test_each_batch_has_its_own_generator():
    draw = [batch_generator(seed, start).initial_seed() for seed in (0, 1) for start in (0, 16, 32)]
    assert len(set(draw)) == len(draw)
    assert batch_generator(3, 0).initial_seed() == 3  # a single-batch run draws as it did before
    assert batch_generator(3, 16).initial_seed() == batch_generator(3, 16).initial_seed()
