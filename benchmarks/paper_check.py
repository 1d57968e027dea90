"""Stand-ins for the paper's models and benchmarks in a local Hub cache, so that docs/reproduce.md's command runs
offline, by the real repo ids, on random weights.

Writes, under `--cache` (an `HF_HOME`: the Hub cache is its `hub/` folder):

- `Dream-org/Dream-v0-Instruct-7B`: a native-format Dream checkpoint (`model_type` "Dream", an `auto_map` naming
  the repository's own files, as published) with Dream's tokenizer layout: `vocab.json` and `merges.txt`, a
  `tokenizer_config.json` that names `DreamTokenizer` in `auto_map`, `<|beginoftext|>` as bos, `<|mask|>` as mask,
  `<|endoftext|>` as eos and pad, no unk token, and an embedding matrix padded past the tokenizer;
- `Skywork/Skywork-Reward-V2-Qwen3-1.7B` and `Skywork/Skywork-Reward-V2-Qwen3-0.6B` (the held-out scorer): Qwen3
  sequence classifiers with one label and Qwen3's tokenizer layout (eos `<|im_end|>`, pad `<|endoftext|>`, no bos or
  unk, its own `<think>` tokens);
- the three benchmarks' prompt columns (`THU-KEG/RM-Bench` train `prompt`, `ScalerLab/JudgeBench` gpt `question`,
  `allenai/reward-bench-2` test `prompt`) as parquet dataset repos.

The repository-code files (`tokenization_dream.py`, `modeling_dream.py`, ...) raise when run: a run that passes
never executed repository code. The tokenizers are the tiny byte-level BPE of `entrgi_pipelines.testing` (a real
vocabulary cannot be made offline); `--shape paper` gives the models the published widths, heads and vocabulary
sizes (152,064 and 151,936 rows: the guidance tensors of the real pair), `--dllm-layers` of Dream's 28 layers, and
`--shape tiny` toy widths for the tests.

    PYTHONPATH=src python benchmarks/paper_check.py --cache /tmp/hf --shape tiny
    HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 entrgi-bench --paper --num-prompts 1 -T 8 ...
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache
from entrgi_pipelines.testing import BPE_CHAT_TEMPLATE, tiny_bpe_tokenizer

DLLM_REPO = "Dream-org/Dream-v0-Instruct-7B"
REWARD_REPOS = {"1.7b": "Skywork/Skywork-Reward-V2-Qwen3-1.7B", "0.6b": "Skywork/Skywork-Reward-V2-Qwen3-0.6B"}
DATASETS = {
    "THU-KEG/RM-Bench": ("train", "prompt"),
    "ScalerLab/JudgeBench": ("gpt", "question"),
    "allenai/reward-bench-2": ("test", "prompt"),
}
# Published config.json shapes (Dream-org/Dream-v0-Instruct-7B; Qwen3-1.7B and Qwen3-0.6B, the Skywork rewards').
DREAM_7B = dict(
    vocab_size=152_064,
    hidden_size=3584,
    intermediate_size=18_944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=131_072,
    rope_theta=1_000_000.0,
)
QWEN3 = {
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16),
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
}
QWEN3_COMMON = dict(vocab_size=151_936, num_key_value_heads=8, head_dim=128, max_position_embeddings=40_960)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SPECIAL = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
REMOTE_CODE = 'raise RuntimeError("repository code ran: entrgi-bench must load this repo without it")\n'
PROMPTS = [
    "Write a haiku about the sea.",
    "Explain recursion to a child.",
    "What is the capital of France?",
    "Give three tips for a job interview.",
    "Why is the sky blue?",
]


def _tokenizer_files(folder: Path, added: list[str], config: dict) -> dict[str, int]:
    """The tiny BPE's `vocab.json` and `merges.txt` with `added` tokens after its vocabulary, and `config` as
    `tokenizer_config.json`; returns every special token's id."""
    bpe = tiny_bpe_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    bpe.backend_tokenizer.model.save(str(folder))
    base = bpe.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    ids = {tok: bpe.convert_tokens_to_ids(tok) for tok in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    ids |= {tok: base + i for i, tok in enumerate(added)}
    decoder = {str(i): {"content": tok, **SPECIAL} for tok, i in sorted(ids.items(), key=lambda item: item[1])}
    full = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": BPE_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131_072,
        "split_special_tokens": False,
        "unk_token": None,
        **config,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(full, indent=2))
    return ids


def dream_tokenizer_folder(folder: Path) -> dict[str, int]:
    """Dream's tokenizer layout (see the module docstring) in `folder`; returns the special tokens' ids."""
    config = {
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "tokenizer_class": "DreamTokenizer",
        "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
    }
    ids = _tokenizer_files(folder, ["<|beginoftext|>", "<|mask|>"], config)
    (folder / "tokenization_dream.py").write_text(REMOTE_CODE)
    return ids


def qwen3_tokenizer_folder(folder: Path) -> dict[str, int]:
    """Qwen3's tokenizer layout (Skywork-Reward-V2-Qwen3's) in `folder`; returns the special tokens' ids."""
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>"}
    return _tokenizer_files(folder, ["<think>", "</think>"], config | {"pad_token": "<|endoftext|>"})


def _save(model, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def dllm_config(ids: dict[str, int], shape: str, layers: int | None = None):
    """The Dream config of the stand-in, for a tokenizer with special token ids `ids`."""
    from entrgi_pipelines.models import DreamConfig

    size = (max(ids.values()) + 64) // 64 * 64  # padded past the tokenizer, as Dream's 152,064 rows are
    dims = dict(DREAM_7B) if shape == "paper" else dict(TINY, vocab_size=size, max_position_embeddings=2048)
    if layers:
        dims["num_hidden_layers"] = layers
    token = ids["<|endoftext|>"]
    return DreamConfig(
        **dims, mask_token_id=ids["<|mask|>"], pad_token_id=token, bos_token_id=token, eos_token_id=token
    )


def reward_config(ids: dict[str, int], size: str, shape: str):
    """The Qwen3 sequence-classifier config of a reward stand-in (`size` "1.7b" or "0.6b")."""
    from transformers import Qwen3Config

    vocab = max(ids.values()) + 1
    dims = QWEN3_COMMON | QWEN3[size] if shape == "paper" else dict(TINY, vocab_size=vocab, head_dim=8)
    return Qwen3Config(**dims, num_labels=1, pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)


def build_dllm(folder: Path, shape: str, layers: int | None, device: str, dtype: torch.dtype) -> None:
    """A random-weight Dream checkpoint in the published format, with Dream's tokenizer layout."""
    from entrgi_pipelines.models import DreamModel

    config = dllm_config(dream_tokenizer_folder(folder), shape, layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = DreamModel(config).to(dtype).eval()
    _save(model, folder)
    saved = json.loads((folder / "config.json").read_text())
    saved["auto_map"] = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}
    (folder / "config.json").write_text(json.dumps(saved, indent=2))
    for name in ("configuration_dream.py", "modeling_dream.py"):
        (folder / name).write_text(REMOTE_CODE)


def build_reward(folder: Path, size: str, shape: str, device: str, dtype: torch.dtype, seed: int = 1) -> None:
    """A random-weight Qwen3 sequence classifier with one label, with Qwen3's tokenizer layout."""
    from transformers import Qwen3ForSequenceClassification

    config = reward_config(qwen3_tokenizer_folder(folder), size, shape)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForSequenceClassification(config).to(dtype).eval()
    _save(model, folder)


def build_datasets(root: Path, cache: Path, rows: int = len(PROMPTS)) -> None:
    """The three benchmarks' prompt columns as parquet dataset repos in the Hub cache `cache`."""
    import datasets

    for repo, (split, field) in DATASETS.items():
        folder = root / repo.replace("/", "--")
        (folder / "data").mkdir(parents=True, exist_ok=True)
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({repo.split('/')[1]} {i})" for i in range(rows)]
        table = datasets.Dataset.from_dict({field: prompts, "id": list(range(rows))})
        table.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        add_dataset_to_hub_cache(folder, repo, cache)


def add_dataset_to_hub_cache(folder: Path, repo_id: str, cache: Path) -> str:
    """`add_to_hub_cache` for a dataset repo: the same layout under `datasets--org--name`."""
    with tempfile.TemporaryDirectory() as scratch:
        commit = add_to_hub_cache(folder, repo_id, scratch)
        name = repo_id.replace("/", "--")
        target = Path(cache) / f"datasets--{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        (Path(scratch) / f"models--{name}").rename(target)
    return commit


def build_all(
    cache: str | Path, shape: str = "tiny", dllm_layers: int | None = None, device: str = "cpu", dtype="float32"
) -> Path:
    """Every stand-in of the module docstring, in the Hub cache of the `HF_HOME` folder `cache`; returns the
    Hub cache folder."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    hub = Path(cache) / "hub"
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        build_dllm(root / "dllm", shape, dllm_layers, device, dtype)
        add_to_hub_cache(root / "dllm", DLLM_REPO, hub)
        for i, (size, repo) in enumerate(REWARD_REPOS.items()):
            build_reward(root / size, size, shape, device, dtype, seed=1 + i)
            add_to_hub_cache(root / size, repo, hub)
        build_datasets(root / "datasets", hub)
    return hub


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="the HF_HOME folder to write (its hub/ is the Hub cache)")
    parser.add_argument("--shape", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--dllm-layers", type=int, help="Dream layers (default: 28 at --shape paper, 2 tiny)")
    parser.add_argument("--device", default="cpu", help="where the random weights are drawn (cuda is faster)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    print(build_all(args.cache, args.shape, args.dllm_layers, args.device, args.dtype))


if __name__ == "__main__":
    main()
