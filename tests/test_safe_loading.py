"""Safe loading: our loaders read safetensors weights only and never run code shipped in a model folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, bench
from entrgi_pipelines.stack import cache
from entrgi_pipelines.testing import tiny_masked_lm, tiny_wordpiece_tokenizer

SRC = Path(__file__).parents[1] / "src"


def model_folder(folder: Path) -> Path:
    tokenizer = tiny_wordpiece_tokenizer()
    tiny_masked_lm(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def add_remote_code(folder: Path, sentinel: Path) -> Path:
    """Makes the folder's config ask for code shipped in the folder; importing that code creates `sentinel`."""
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="rogue_bert", auto_map={"AutoConfig": "rogue.RogueConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "rogue.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import BertConfig\n\n\nclass RogueConfig(BertConfig):\n    model_type = 'rogue_bert'\n"
    )
    return folder


def pickle_weights(folder: Path) -> Path:
    """Replaces the folder's safetensors weights by a `torch.save` pickle of the same tensors."""
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.fixture(autouse=True)
def no_prompt(monkeypatch):
    # transformers asks on the terminal when trust_remote_code is left unset: here a prompt fails instead of waiting
    monkeypatch.setattr("sys.stdin", None)


def test_entrgi_bench_never_runs_code_from_a_model_folder(tmp_path):
    sentinel = tmp_path / "ran"
    folder = add_remote_code(model_folder(tmp_path / "rogue"), sentinel)
    args = bench.build_parser().parse_args(["--dllm", str(folder)])
    with pytest.raises(ValueError, match="trust_remote_code"):
        bench.load_components(args)
    assert not sentinel.exists()


def test_the_embedded_loaders_never_run_code_from_their_cache_folder(tmp_path):
    from entrgi_pipelines.stack.dllm import load_embedded_dllm

    sentinel = tmp_path / "ran"
    folder = add_remote_code(model_folder(tmp_path / "rogue"), sentinel)
    cache.write_manifest(folder)  # as if the cache had been built this way: the loader itself must refuse the code
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_embedded_dllm(cache_dir=folder)
    assert not sentinel.exists()


def test_entrgi_bench_refuses_pickle_weights(tmp_path):
    folder = pickle_weights(model_folder(tmp_path / "pickled"))
    args = bench.build_parser().parse_args(["--dllm", str(folder)])
    with pytest.raises(OSError, match="model.safetensors"):
        bench.load_components(args)


def test_pipeline_from_pretrained_reads_safetensors_only_and_never_runs_folder_code(tmp_path):
    tokenizer = tiny_wordpiece_tokenizer()
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.save_pretrained(tmp_path / "pipe")
    assert not [p for p in (tmp_path / "pipe").rglob("*") if p.suffix in cache.PICKLE_SUFFIXES]

    sentinel = tmp_path / "ran"
    add_remote_code(tmp_path / "pipe" / "model", sentinel)
    loaded = EntRGiPipeline.from_pretrained(tmp_path / "pipe")  # the installed class, read from model_index.json
    assert type(loaded.model) is type(pipe.model) and not sentinel.exists()

    pickle_weights(tmp_path / "pipe" / "model")
    with pytest.raises(OSError, match="model.safetensors"):
        EntRGiPipeline.from_pretrained(tmp_path / "pipe")
    # an explicit opt-in still works, for old checkpoints one trusts
    assert EntRGiPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=False).model is not None


def test_no_code_in_the_package_passes_trust_remote_code_other_than_false():
    """Only `entrgi-bench --trust-remote-code` (issue 24: an explicit opt-in, off by default) passes the user's own
    choice on; everything else passes False."""
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for keyword in getattr(node, "keywords", []) if isinstance(node, ast.Call) else []:
                value = keyword.value
                if keyword.arg != "trust_remote_code" or (isinstance(value, ast.Constant) and value.value is False):
                    continue
                opt_in = (
                    path.name == "bench.py"
                    and isinstance(value, ast.Name)
                    and value.id in ("trust_remote_code", "trust")
                )
                if not opt_in:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
    from entrgi_pipelines import bench

    assert bench.build_parser().parse_args([]).trust_remote_code is False
