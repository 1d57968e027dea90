"""The embedded diffusion LM, materialised once as an HF checkpoint: v1 and v2 are MiniLM's weights plus a shipped
delta (BERT masked LMs); v3 is SmolLM2-135M-Instruct plus a shipped LoRA adapter, a Fast-dLLM v2 block-diffusion
model (`block_dllm`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

from .cache import cache_root, cached_build
from .minilm import load_minilm_encoder_state, load_minilm_tokenizer, minilm_path

DLLM_WEIGHTS_DIR = Path(__file__).parent / "weights" / "dllm"
DELTA_FILE = "delta.safetensors"
# v1: trained on Debian's text (King James Bible, fortunes, WordNet); v2: continued from v1 on prompt -> response pairs
# written by SmolLM2-135M-Instruct (see docs/stack.md). The published v1 results stay reproducible with version="v1".
DLLM_VERSIONS = {
    "v1": DLLM_WEIGHTS_DIR,
    "v2": DLLM_WEIGHTS_DIR.parent / "dllm-v2",
    "v3": DLLM_WEIGHTS_DIR.parent / "dllm-v3",
}
# v3: SmolLM2-135M-Instruct adapted to block diffusion (blocks of 4), shipped as a LoRA adapter (issue 23); not the
# default until it measures better (docs/stack.md)
ADAPTER_FILE = "adapter.safetensors"
BLOCK_DIFFUSION_VERSIONS = ("v3",)


def default_dllm_version() -> str:
    """The newest shipped delta version (v3, an adapter, is chosen by name)."""
    return max(v for v, folder in DLLM_VERSIONS.items() if (folder / DELTA_FILE).exists())


def delta_file(version: str | None = None) -> Path:
    """The shipped file of an embedded dLLM version: the delta of `"v1"` / `"v2"` (default: the newest), the
    adapter of `"v3"`."""
    version = version or default_dllm_version()
    if version not in DLLM_VERSIONS:
        raise ValueError(f"`version` must be one of {sorted(DLLM_VERSIONS)}, got {version!r}.")
    return DLLM_VERSIONS[version] / (ADAPTER_FILE if version in BLOCK_DIFFUSION_VERSIONS else DELTA_FILE)


def load_delta(version: str | None = None) -> dict[str, torch.Tensor]:
    return load_file(str(delta_file(version)))


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a shipped file (what a benchmark records of the weights it measured)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def merge_delta(delta: dict[str, torch.Tensor]) -> BertForMaskedLM:
    """A `BertForMaskedLM` with MiniLM's encoder and word embeddings, and the retrained tensors of `delta`."""
    config = BertConfig.from_pretrained(minilm_path())
    config.architectures = ["BertForMaskedLM"]
    model = BertForMaskedLM(config)
    encoder = {k: v for k, v in load_minilm_encoder_state().items() if not k.startswith("pooler.")}
    model.bert.load_state_dict(encoder, strict=True)
    model.tie_weights()
    state = model.state_dict()
    unknown = set(delta) - set(state)
    if unknown:
        raise ValueError(f"The delta has tensors the model does not: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for name, tensor in delta.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return model.eval()


def build_embedded_dllm(save_dir: str | Path, delta_path: str | Path | None = None) -> Path:
    """Writes the embedded dLLM (weights and tokenizer) as a `from_pretrained` folder."""
    delta_path = Path(delta_path or delta_file())
    model = merge_delta(load_file(str(delta_path)))
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    load_minilm_tokenizer().save_pretrained(save_dir)
    return save_dir


def build_block_dllm(save_dir: str | Path, adapter_path: Path) -> Path:
    """Writes dLLM v3 (SmolLM2 + the adapter next to `adapter_path`) as a Fast-dLLM v2 `from_pretrained` folder."""
    from .block_dllm import build_fast_dllm_folder
    from .smollm import smollm_path

    save_dir = Path(save_dir)
    built = build_fast_dllm_folder(smollm_path(), adapter_path.parent, save_dir.with_name(save_dir.name + ".v3"))
    for item in built.iterdir():  # into the folder `cached_build` installs
        os.replace(item, save_dir / item.name)
    built.rmdir()
    return save_dir


def embedded_dllm_path(
    cache_dir: str | Path | None = None, delta_path: str | Path | None = None, version: str | None = None
) -> Path:
    """The cached checkpoint folder of the embedded dLLM, built on first use (keyed by the delta's hash)."""
    delta_path = Path(delta_path or delta_file(version))
    digest = hashlib.sha1(delta_path.read_bytes()).hexdigest()[:12]
    if delta_path.name == ADAPTER_FILE:
        target = Path(cache_dir) if cache_dir else cache_root() / f"dllm-v3-{digest}"
        return cached_build(target, lambda folder: build_block_dllm(folder, delta_path), description="embedded dLLM v3")
    target = Path(cache_dir) if cache_dir else cache_root() / f"dllm-{digest}"
    # Built atomically under a lock, with a manifest of hashes checked on use (a damaged folder is rebuilt).
    return cached_build(target, lambda folder: build_embedded_dllm(folder, delta_path), description="embedded dLLM")


def load_embedded_dllm(
    cache_dir: str | Path | None = None, delta_path: str | Path | None = None, version: str | None = None
):
    """`(model, tokenizer)` of the embedded dLLM (`version` "v1", "v2" or "v3", default the newest delta), via
    `from_pretrained`; v3 loads as the native `Fast_dLLM_QwenForCausalLM`."""
    path = embedded_dllm_path(cache_dir, delta_path, version)
    if (path / "config.json").exists() and "Fast_dLLM_Qwen" in (path / "config.json").read_text():
        from .. import models  # noqa: F401  (registers the native block-diffusion classes)

        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    # safetensors only, and never code from the folder (no prompt either: trust_remote_code is False, not None)
    model = AutoModelForMaskedLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    return model.eval(), AutoTokenizer.from_pretrained(path, trust_remote_code=False)
