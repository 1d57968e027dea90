"""Reward models of the embedded stack: all-MiniLM-L6-v2 sentence embeddings of a (target, response) pair.

The model and config classes live in the self-contained :mod:`.modeling_minilm_pair` (see there for how a pair is
read); this module registers them with transformers' Auto classes and builds, caches and loads the similarity reward
and the held-out topic judge.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from .cache import cached_build
from .minilm import load_minilm_encoder_state, load_minilm_tokenizer, minilm_path
from .modeling_minilm_pair import REWARD_TYPES, MiniLMPairConfig, MiniLMPairRewardModel  # noqa: F401 (public names)

JUDGE_WEIGHTS_DIR = Path(__file__).parent / "weights" / "judge"
JUDGE_HEAD_FILE = "head.safetensors"
JUDGE_INFO_FILE = "judge.json"
# MiniLM's architecture, copied from its config (dropout settings do not matter: the models run in eval mode).
_ARCHITECTURE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "pad_token_id",
)


AutoConfig.register(MiniLMPairConfig.model_type, MiniLMPairConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MiniLMPairConfig, MiniLMPairRewardModel, exist_ok=True)


def _minilm_state() -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_minilm_encoder_state().items() if not k.startswith("pooler.")}


def load_minilm_encoder() -> BertModel:
    """The all-MiniLM-L6-v2 encoder as a ``BertModel`` without pooler, in eval mode."""
    encoder = BertModel(BertConfig.from_pretrained(minilm_path()), add_pooling_layer=False)
    encoder.load_state_dict(_minilm_state(), strict=True)
    return encoder.eval()


def _minilm_pair_model(reward_type: str, topics: list[str] | None = None) -> MiniLMPairRewardModel:
    base = BertConfig.from_pretrained(minilm_path())
    config = MiniLMPairConfig(
        **{name: getattr(base, name) for name in _ARCHITECTURE_FIELDS},
        reward_type=reward_type,
        topics=topics,
        cls_token_id=load_minilm_tokenizer().cls_token_id,
    )
    model = MiniLMPairRewardModel(config)
    model.bert.load_state_dict(_minilm_state(), strict=True)
    return model.eval()


def _save(model: MiniLMPairRewardModel, save_dir: str | Path) -> Path:
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    load_minilm_tokenizer().save_pretrained(save_dir)
    return save_dir


def build_similarity_reward_model(save_dir: str | Path) -> Path:
    """Save the MiniLM cosine-similarity reward model (and the MiniLM tokenizer) to ``save_dir``; return it."""
    return _save(_minilm_pair_model("similarity"), save_dir)


def load_judge_head(weights_dir: str | Path = JUDGE_WEIGHTS_DIR) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The shipped topic head (``weight``, ``bias``) and its topic names."""
    weights_dir = Path(weights_dir)
    head = load_file(str(weights_dir / JUDGE_HEAD_FILE))
    topics = json.loads((weights_dir / JUDGE_INFO_FILE).read_text())["topics"]
    return head, topics


def build_topic_judge(save_dir: str | Path, weights_dir: str | Path = JUDGE_WEIGHTS_DIR) -> Path:
    """Save the held-out topic judge (MiniLM + the trained topic head from ``weights_dir``) to ``save_dir``."""
    head, topics = load_judge_head(weights_dir)
    model = _minilm_pair_model("topic", topics)
    model.topic_head.load_state_dict(head, strict=True)
    return _save(model, save_dir)


def _default_cache_dir(name: str) -> Path:
    root = os.environ.get("ENTRGI_CACHE") or Path.home() / ".cache" / "entrgi_pipelines"
    return Path(root) / name


def _load_cached(build, cache_dir: Path):
    # Built atomically under a lock, with a manifest of hashes checked on use (a damaged folder is rebuilt).
    cached_build(cache_dir, build, description=build.__name__.removeprefix("build_").replace("_", " "))
    # safetensors only, and never code from the folder (no prompt either: trust_remote_code is False, not None)
    model = AutoModelForSequenceClassification.from_pretrained(cache_dir, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(cache_dir, trust_remote_code=False)
    return model.eval(), tokenizer


def load_similarity_reward_model(cache_dir: str | Path | None = None):
    """``(model, tokenizer)`` of the similarity reward model, built into ``cache_dir`` on first use.

    ``cache_dir`` defaults to ``$ENTRGI_CACHE/minilm_similarity`` (``~/.cache/entrgi_pipelines/...``).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir("minilm_similarity")
    return _load_cached(build_similarity_reward_model, cache_dir)


def load_topic_judge(cache_dir: str | Path | None = None):
    """``(model, tokenizer)`` of the topic judge, built into ``cache_dir`` on first use.

    The default cache folder is named after a hash of the shipped head, so retraining the head invalidates it.
    """
    if cache_dir is None:
        digest = hashlib.sha256((JUDGE_WEIGHTS_DIR / JUDGE_HEAD_FILE).read_bytes()).hexdigest()[:10]
        cache_dir = _default_cache_dir(f"minilm_topic_judge-{digest}")
    return _load_cached(build_topic_judge, Path(cache_dir))
