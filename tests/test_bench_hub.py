"""`entrgi-bench` on Hub models by repo id, offline: tiny stand-ins of Dream-v0-Instruct-7B and the Skywork-Reward-V2
Qwen3 rewards (their config and tokenizer layouts, random weights) and of the paper's three benchmarks in a local Hub
cache (`benchmarks/paper_check.py`); the vocabulary bridge between Qwen-style tokenizers; devices and dtypes; two
CPU processes under `accelerate launch`."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, Qwen2TokenizerFast

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance, VocabularyMap, bench
from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache

from .conftest import free_port
from .paper_stand_ins import ROOT, paper_check, use_hub_home

DLLM, REWARD, EVAL = paper_check.DLLM_REPO, paper_check.REWARD_REPOS["1.7b"], paper_check.REWARD_REPOS["0.6b"]
TIMING_FIELDS = ("seconds", "eval_seconds", "judge_seconds")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """An HF_HOME folder whose Hub cache holds the stand-ins (built once per module)."""
    home = tmp_path_factory.mktemp("hf_home")
    paper_check.build_all(home, shape="tiny")
    return home


@pytest.fixture
def home(stand_ins, monkeypatch):
    use_hub_home(monkeypatch, stand_ins)
    return stand_ins


@pytest.fixture
def no_stack_scorers(monkeypatch):
    """The embedded stack's judges and perplexity models fail the test if they load."""

    def refuse(*args, **kwargs):
        raise AssertionError("the embedded stack's judges must not load for a Hub dLLM")

    monkeypatch.setattr("entrgi_pipelines.stack.reward_models.load_topic_judge", refuse)
    monkeypatch.setattr("entrgi_pipelines.stack.judges.load_smollm_judges", refuse)
    monkeypatch.setattr("entrgi_pipelines.stack.fluency.load_fluency_model", refuse)


def test_dream_tokenizer_loads_as_qwen2_fast_without_repository_code(home):
    tokenizer, note = bench.load_dllm_tokenizer(DLLM)
    assert type(tokenizer) is Qwen2TokenizerFast
    assert "DreamTokenizer" in note and "Qwen2TokenizerFast" in note
    assert (tokenizer.mask_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<|mask|>",
        "<|beginoftext|>",
        "<|endoftext|>",
    )
    assert tokenizer.unk_token is None
    # the repo's own tokenizer file raises when run: --trust-remote-code is what runs it
    with pytest.raises(Exception, match="repository code ran"):
        bench.load_dllm_tokenizer(DLLM, trust_remote_code=True)


def real_pair():
    """The Dream stand-in as a pipeline and the Qwen3 reward stand-in, by repo id, as README loads the real ones."""
    dllm = AutoModel.from_pretrained(DLLM)
    tokenizer = Qwen2TokenizerFast.from_pretrained(DLLM)
    pipe = EntRGiPipeline(
        model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler(), mask_token_id=dllm.config.mask_token_id
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, AutoModelForSequenceClassification.from_pretrained(REWARD), AutoTokenizer.from_pretrained(REWARD)


def test_the_real_pair_guides_with_default_settings(home):
    pipe, rm, rm_tokenizer = real_pair()
    dream = pipe.tokenizer
    assert pipe.vocab_size > len(dream)  # padded embedding rows, as Dream's 152,064 past its 151,667 tokens
    with pytest.raises(ValueError, match="has no unk token"):
        VocabularyMap.from_tokenizers(dream, rm_tokenizer, unmapped="unk", source_size=pipe.vocab_size)
    vmap = VocabularyMap.from_tokenizers(dream, rm_tokenizer, source_size=pipe.vocab_size)
    # exactly Dream's own special tokens and the padded rows have no counterpart; they become Qwen3's pad token
    unmapped = set((~vmap.mapped).nonzero().flatten().tolist())
    own = {dream.mask_token_id, dream.bos_token_id}
    assert unmapped == own | set(range(len(dream), pipe.vocab_size))
    assert vmap.unmapped_token == "<|endoftext|>" == rm_tokenizer.pad_token
    assert torch.all(vmap.ids[~vmap.mapped] == rm_tokenizer.pad_token_id)

    guidance = RewardGuidance(rm, rm_tokenizer, guidance_steps=1)
    out = pipe(
        ["Write a haiku about the sea."],
        callback_on_step_end=guidance,
        num_inference_steps=2,
        gen_length=4,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.rewards.shape == (1, 2) and torch.isfinite(out.rewards).all()
    assert guidance.vocab_coverage == [pytest.approx(vmap.coverage)] and guidance.vocab_coverage[0] < 1
    assert guidance.terms[0].vocab_map.unmapped_token == "<|endoftext|>"
    out_default = pipe(  # README's call: reward_model= with every other setting left at its default
        ["Write a haiku about the sea."],
        reward_model=rm,
        reward_tokenizer=rm_tokenizer,
        num_inference_steps=2,
        gen_length=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out_default.rewards).all()


def test_unmapped_rows_never_reach_a_reported_reward(home):
    """The reported rewards score the decoded text: the mask, bos and padded rows decode to nothing, so whatever
    reward token they map to, the text (and its reward) is that of the response without them."""
    pipe, rm, rm_tokenizer = real_pair()
    dream = pipe.tokenizer
    words = dream(" the sea and the sun", add_special_tokens=False)["input_ids"]
    extras = [dream.mask_token_id, dream.bos_token_id, len(dream), pipe.vocab_size - 1]
    with_extras = [tok for pair in zip(words, extras) for tok in pair] + words[len(extras) :]
    assert dream.decode(with_extras, skip_special_tokens=True) == dream.decode(words, skip_special_tokens=True)


def paper_argv(output, *extra):
    argv = ["--paper", "--num-prompts", "1", "-T", "2", "-L", "4", "--methods", "none", "entrgi", "--seeds", "1", "2"]
    return argv + ["--eval-reward-model", EVAL, "--threads", "1", "--output", str(output), *extra]


@torch.no_grad()
def held_out_score(model, tokenizer, prompt, text):
    """The held-out reward of one response, computed alone (no padding) through the chat template."""
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    ids = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_tensors="pt")
    return float(model(**ids).logits[0, 0])


def test_the_paper_command_runs_by_repo_id_and_scores_with_the_held_out_reward(home, tmp_path, no_stack_scorers):
    output, table = tmp_path / "paper.json", tmp_path / "paper.md"
    bench.main(paper_argv(output, "--markdown", str(table)))
    result = json.loads(output.read_text())
    config, records = result["config"], result["records"]
    assert config["paper"] and config["steps"] == 2 and config["commit_schedule"] == "time_floor"  # -T wins
    datasets = list(paper_check.DATASETS)
    assert [r["dataset"].split(":")[0] for r in records] == [d for _ in range(4) for d in datasets]
    assert [(r["method"], r["seed"]) for r in records] == [
        (m, s) for m in ("none", "entrgi") for s in (1, 2) for _ in datasets
    ]

    model, tokenizer = (
        AutoModelForSequenceClassification.from_pretrained(EVAL).eval(),
        AutoTokenizer.from_pretrained(EVAL),
    )
    for record in records:
        assert "judge" not in record and "perplexity" not in record
        eval_rewards = record["eval_rewards"]
        assert len(eval_rewards) == len(record["texts"]) == 4
        best = max(range(4), key=lambda k: record["rewards"][k])
        assert record["eval_top1"] == eval_rewards[best] and record["eval_avg"] == pytest.approx(sum(eval_rewards) / 4)
    for record in records[::5]:  # batched and padded as run, against one response at a time
        for text, score in zip(record["texts"], record["eval_rewards"]):
            assert score == pytest.approx(held_out_score(model, tokenizer, record["prompt"], text), abs=1e-4)

    summary = result["summary"]
    for method in ("none", "entrgi"):
        rows = [r for r in records if r["method"] == method]
        assert summary[method]["eval_top1"] == pytest.approx(sum(r["eval_top1"] for r in rows) / len(rows))
        assert "judge" not in summary[method]
    assert set(result["by_dataset"]) == {bench.dataset_spec(d) for d in datasets}
    for dataset, per_method in result["by_dataset"].items():
        paired = per_method["entrgi"]["vs_none"]
        assert set(paired) == {"top1", "avg", "eval_top1", "eval_avg"} and paired["eval_top1"]["n"] == 2
        mine = {(r["seed"], r["prompt"]): r for r in records if r["dataset"] == dataset and r["method"] == "entrgi"}
        base = {(r["seed"], r["prompt"]): r for r in records if r["dataset"] == dataset and r["method"] == "none"}
        diffs = [mine[k]["eval_top1"] - base[k]["eval_top1"] for k in mine]
        assert paired["eval_top1"]["diff"] == pytest.approx(sum(diffs) / 2)
    models = result["models"]
    assert models["dLLM"] == DLLM and models["guidance reward (Top@1, Avg@N)"] == REWARD
    assert models["held-out reward (eval_top1, eval_avg)"] == EVAL
    assert models["topic judges and perplexity (judge, perplexity)"] is None
    assert "'<|endoftext|>'" in models["vocabulary bridge"]  # Dream's mask, bos and padded rows: Qwen3's pad token
    text = table.read_text()
    assert EVAL in text and "held-out reward Top@1" in text and "entrgi vs none (paired, n=2)" in text


def test_bfloat16_on_cpu_where_supported(home, tmp_path, no_stack_scorers):
    try:
        bench.resolve_device("cpu", "bfloat16")
    except ValueError as error:
        pytest.skip(f"this CPU does not run bfloat16: {error}")
    output = tmp_path / "bf16.json"
    bench.main(paper_argv(output, "--dtype", "bfloat16", "--device", "cpu") + ["--methods", "entrgi"])
    result = json.loads(output.read_text())
    assert result["config"]["dtype"] == "bfloat16"
    assert all(math.isfinite(v) for r in result["records"] for v in r["rewards"] + r["eval_rewards"])


def test_revision_picks_the_commit_of_a_branch(home, tmp_path):
    folder = tmp_path / "other"
    paper_check.build_reward(folder, "1.7b", "tiny", "cpu", torch.float32, seed=7)
    add_to_hub_cache(folder, REWARD, home / "hub", branch="other")
    bench.check_model_source("--reward-model", REWARD, "other", one_label=True)
    main = AutoModelForSequenceClassification.from_pretrained(REWARD)
    other = AutoModelForSequenceClassification.from_pretrained(REWARD, revision="other")
    assert not torch.equal(main.score.weight, other.score.weight)
    with pytest.raises(ValueError, match="at revision 'nope': not in the local Hub cache"):
        bench.check_model_source("--reward-model", REWARD, "nope")


def run_bench(launcher, output, home):
    argv = ["-m", "entrgi_pipelines.bench", "--paper", "--num-prompts", "2", "-T", "2", "-L", "4"]
    argv += ["--methods", "entrgi", "--seeds", "1", "--batch-size", "1", "--eval-reward-model", EVAL]
    argv += ["--threads", "1", "--output", str(output)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([*launcher, *argv], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in json.loads(output.read_text())["records"]]


def test_two_cpu_processes_give_the_records_of_one(home, tmp_path):
    one = run_bench([sys.executable], tmp_path / "one.json", home)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    two = run_bench(launch, tmp_path / "two.json", home)
    assert len(one) == 6 and [r["dataset"] for r in one] == [
        d for d in map(bench.dataset_spec, paper_check.DATASETS) for _ in range(2)
    ]
    assert two == one


def script_bench_arguments() -> list[str]:
    """The `entrgi_pipelines.bench` arguments of benchmarks/cuda_check.sh (its lines joined where they continue)."""
    script = (ROOT / "benchmarks" / "cuda_check.sh").read_text().replace("\\\n", " ")
    line = next(line for line in script.splitlines() if "-m entrgi_pipelines.bench" in line)
    words = line.split("-m entrgi_pipelines.bench", 1)[1].split(">")[0].split()
    return [w.strip('"') for w in words]


def test_cuda_check_runs_the_documented_command_on_the_stand_ins(home, tmp_path, no_stack_scorers):
    """cuda_check.sh's paper step is docs/reproduce.md's one-GPU command (plus its size flags); here on the tiny
    stand-ins on CPU, with the script's own arguments."""
    argv = script_bench_arguments()
    assert argv[0] == "--paper" and "entrgi-bench --paper --output" in (ROOT / "docs" / "reproduce.md").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "cuda_check.sh")]).returncode == 0
    argv = [a.replace("$out", str(tmp_path)) for a in argv] + ["--threads", "1", "--device", "cpu"]
    bench.main(argv)
    result = json.loads((tmp_path / "paper_check.json").read_text())
    assert result["config"]["steps"] == 8 and result["config"]["gen_length"] == 128
    assert len(result["records"]) == 4 * 3 * 3  # methods x seeds x one prompt per benchmark
    assert all(len(r["eval_rewards"]) == 4 for r in result["records"])
    assert (tmp_path / "paper_check.md").read_text().startswith("- dLLM: Dream-org/Dream-v0-Instruct-7B")


def test_auto_takes_the_reward_tokenizers_unk_then_pad_then_eos(home):
    """The default unmapped policy: what "unk" gives where the reward has an unk token (every earlier pair), and
    otherwise its pad, then its eos token; a reward tokenizer with none of them is told to pass an id."""
    from entrgi_pipelines.testing import tiny_bpe_tokenizer, tiny_wordpiece_tokenizer

    wordpiece, bpe = tiny_wordpiece_tokenizer(), tiny_bpe_tokenizer()
    assert torch.equal(
        VocabularyMap.from_tokenizers(wordpiece, bpe).ids, VocabularyMap.from_tokenizers(wordpiece, bpe, "unk").ids
    )
    qwen3 = AutoTokenizer.from_pretrained(REWARD)
    assert VocabularyMap.from_tokenizers(wordpiece, qwen3).unmapped_token == "<|endoftext|>" == qwen3.pad_token
    qwen3.pad_token = None
    assert VocabularyMap.from_tokenizers(wordpiece, qwen3).unmapped_token == "<|im_end|>" == qwen3.eos_token
    qwen3.eos_token = None
    with pytest.raises(ValueError, match="no unk, pad or eos token: pass a token id"):
        VocabularyMap.from_tokenizers(wordpiece, qwen3)


def test_the_stand_ins_have_the_published_shapes_and_parameter_counts():
    """At `--shape paper` (built on the meta device: no memory), the stand-ins have the published vocabulary sizes
    and the parameter counts docs/reproduce.md's memory estimate starts from (Dream 7.6 B; the rewards 1.7 B, 0.6 B)."""
    from transformers import Qwen3ForSequenceClassification

    from entrgi_pipelines.models import DreamModel

    ids = {"<|endoftext|>": 0, "<|mask|>": 151_666}
    with torch.device("meta"):
        dllm = DreamModel(paper_check.dllm_config(ids, "paper"))
        rewards = {
            s: Qwen3ForSequenceClassification(paper_check.reward_config(ids, s, "paper")) for s in ("1.7b", "0.6b")
        }
    assert dllm.get_input_embeddings().weight.shape == (152_064, 3584) and dllm.config.num_hidden_layers == 28
    assert sum(p.numel() for p in dllm.parameters()) / 1e9 == pytest.approx(7.62, rel=0.01)
    for size, billions in (("1.7b", 1.72), ("0.6b", 0.60)):
        model = rewards[size]
        assert model.get_input_embeddings().weight.shape[0] == 151_936 and model.config.num_labels == 1
        assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.02), size
