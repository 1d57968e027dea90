"""Train the embedded dLLM v3: SmolLM2-135M-Instruct adapted to block diffusion (issue 23).

The recipe
----------

**Model.** SmolLM2-135M-Instruct (a ``LlamaForCausalLM``: 30 layers, 576 wide, 9 query / 3 key-value heads, tied
embeddings) keeps its weights; LoRA adapters (rank 16, alpha 32, on all seven projections of every layer: 4.9M
parameters, 9.8 MB in float16) and a learnt mask vector (576 numbers, initialised to the mean input embedding) are
trained. LoRA rather than full fine-tuning: the issue measured 125-155 tokens/s for LoRA against 163 for full
fine-tuning in bf16 (93 in fp32), so the speed is about the same, while LoRA (a) ships as a few MB instead of a
270 MB delta, (b) needs no Adam state for 135M parameters and (c) cannot move far from SmolLM2, whose fluency is the
point. The adapter is written here (a small ``LoRALinear``) rather than with ``peft``: 20 lines, no new dependency,
and the adapter can be switched off for the base model's logits of the KL term below.

**Mask token.** Id 16 (``<empty_output>``, a reserved token SmolLM2 never writes). Its input is the learnt mask
vector, kept apart from the tied embedding matrix, and its logit is set to ``-inf`` in every softmax, training,
evaluation and decoding alike, so the mask is never predicted nor sampled. The export writes the mask vector into
row 16 of the (tied) embedding, as Fast-dLLM v2's format expects; that changes only logit 16, which a decoder must
exclude anyway.

**Blocks and shifted logits.** Blocks of ``--block-size`` tokens align from position 0 of the whole sequence, as
the native ``Fast_dLLM_QwenForCausalLM`` and the pipeline align them: the prompt is read block-causally too, and its
tail (``len(prompt) % block_size`` tokens) is the frozen head of the answer's first block. Logits are shifted as in
Dream and Fast-dLLM v2: position ``i - 1`` predicts token ``i``. The first token of a block (slot 0) is therefore
predicted by the last token of the previous, clean block — the autoregressive path — and slot ``j >= 1`` by slot
``j - 1`` of the noisy block itself. A block of one token is SmolLM2 itself.

**Training layout (BD3-LM's two streams).** One packed sequence per example: the clean stream ``[prompt | answer]``
then the noisy copy of the blocks from the first one holding an answer token, with their position ids repeated. The
attention mask (a 4D boolean mask that carries the padding itself, as transformers 5 needs):

- clean stream: block-causal (block ``k`` sees blocks ``<= k``: exactly what the KV cache of committed blocks and
  the prefilled prompt hold at decoding);
- noisy block ``k`` sees clean blocks ``< k`` and all of noisy block ``k``; nothing else;
- no query sees padding; a padding query sees itself only (no empty softmax row).

So every block of every example is trained in one forward pass, each with its own masking rate. (The first lane,
``weights/dllm-v3-wip``, started its blocks at the answer with a causal prompt; ``--init-adapter`` continues from it.)

**Masking and loss.** Per block a rate ``t ~ U(0, 1]``, each token of the noisy block masked with probability ``t``.
The loss is the mean cross-entropy over the masked tokens of slots ``>= 1`` (plain mean, not the ELBO's ``1/t``
weights: lower variance, and what decoding needs is fill-in accuracy, not a likelihood bound), plus
``--kl-weight`` (1.0) times the KL from the base model to the trained model at slot 0 of every block, the base
logits computed by a second, gradient-free, causal forward of the clean stream with the adapter off (about +15%
per step).
The KL keeps the autoregressive path SmolLM2's own (the issue's trial, without it, saw slot 0 fall from 1.0 to 0.78),
on corpus text too, where a cross-entropy would pull it toward the Bible.

**Data.** SmolLM2's own answers (``stack.distill``'s ``corpus/distill.jsonl``, split != held-out), in SmolLM2's chat
template with its default system prompt (distill.py sampled them with it, and ``decode`` uses it again), the answer
followed by ``<|im_end|>`` when it finished (end and pad: the last block is filled with it) and cut to a whole number
of blocks when it did not; plus ``--corpus-fraction`` (0.25) of Debian corpus text SmolLM2 did not write
(``corpus/documents.jsonl``, split train, as plain text: the first 8 tokens as a causal prefix, the next 64 as the
answer; 2 of the 8 examples of a batch). Excluded and counted in the log: every held-out distill prompt, every bundled
prompt (``stack/data/prompts.jsonl``, ``prompts_v2.jsonl``) and every bundled held-out text
(``stack/data/heldout.jsonl.gz``). The distill answers are read in the file's order (stack.distill shuffled its
prompts): the file is append-only, and the trainer reads it more slowly than the distill job writes, so a run can
start while the corpus is still being written and batch ``s`` is the same on every resume (`StreamSampler`).

**Optimisation.** AdamW, lr 5e-4 after 30 warm-up steps then constant (a time-bounded, resumable run has no known
end), no weight decay, gradient norm clipped at 1, batches of 8 examples, bf16 autocast; one thread.

**Resuming and logs.** ``--output`` holds ``checkpoint.pt`` (adapter, mask vector, optimiser, step; written
atomically every ``--checkpoint-minutes`` and at the end), ``adapter/`` (the shipped artefact, see ``export_adapter``)
and ``train_log.json`` (loss, tokens, minutes, evaluations; rewritten atomically as it goes). Running the same
command again resumes from the checkpoint: batch ``s`` is a function of the seed and ``s`` only, so the resumed run
sees the batches an uninterrupted run would. ``--max-minutes`` bounds each invocation's wall time.

**Evaluation** (every ``--eval-minutes`` and at the start and end): masked-token accuracy per block slot on held-out
answers (the distill held-out split) and on held-out corpus text (``heldout.jsonl.gz``), with half of every block
masked and with whole blocks masked; slot 0 is the autoregressive path (greedy next token == the text's token).

The v3 training lane (issue 23; one thread, ends on its own by 02:15 UTC; started 00:06 UTC while the distill job
was still writing, from the lead's checkout with this branch's code)::

    cd /work/main && PYTHONPATH=/work/wt-v3/src HF_HUB_OFFLINE=1 nohup nice -n 5 .venv/bin/python \\
        -m entrgi_pipelines.stack.train_block_dllm --distill corpus/distill.jsonl \\
        --documents corpus/documents.jsonl --output runs/v3 --max-minutes 118 --checkpoint-minutes 10 \\
        --eval-minutes 20 --threads 1 > runs/v3.log 2>&1 &

(stopped after the 01:19 checkpoint and resumed by the same command with ``--max-minutes 44 ... >> runs/v3.log``
once the distill job had finished, so that its new answers come next: see ``StreamSampler``.)

A tiny run (a few steps, as a smoke test)::

    python -m entrgi_pipelines.stack.train_block_dllm --distill corpus/distill.jsonl \\
        --documents corpus/documents.jsonl --output runs/v3-tiny --max-steps 2 --eval-examples 4

Then ``build_fast_dllm_folder(smollm_path(), "runs/v3/adapter", "v3-folder")`` writes a ``from_pretrained`` folder in
Fast-dLLM v2's format, and ``decode`` answers a prompt block by block.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoint import write_json_atomic
from .block_dllm import MASK_ID, build_fast_dllm_folder, fast_dllm_config, merge_adapter, qwen2_from_folder

__all__ = [
    "MASK_ID",
    "BlockDiffusionLM",
    "build_fast_dllm_folder",
    "decode",
    "export_adapter",
    "fast_dllm_config",
    "load_adapter",
    "make_batch",
    "merge_adapter",
    "qwen2_from_folder",
    "train",
]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DATA_DIR = Path(__file__).parent / "data"


# --------------------------------------------------------------------------------------------------------- model


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a low-rank update ``scale * B @ A`` (B starts at zero: the wrapped layer exactly)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.enabled:
            out = out + (x @ self.lora_a.T.to(x.dtype)) @ (self.lora_b.T.to(x.dtype) * self.scale)
        return out

    def delta(self) -> torch.Tensor:
        return self.scale * self.lora_b.detach().float() @ self.lora_a.detach().float()


class BlockDiffusionLM(nn.Module):
    """
    A causal LM (Llama geometry) with LoRA adapters and a learnt mask vector, run with block attention masks.

    Args:
        model (`LlamaForCausalLM`): the base model; its weights are frozen and wrapped, not copied.
        block_size (`int`): tokens per block.
        rank (`int`), alpha (`float`): the LoRA rank and scale numerator.
        mask_token_id (`int`): the id whose input is the mask vector and whose logit is always excluded.
    """

    def __init__(self, model, block_size: int = 4, rank: int = 16, alpha: float = 32.0, mask_token_id: int = MASK_ID):
        super().__init__()
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}.")
        model.requires_grad_(False)
        model.set_attn_implementation("sdpa")  # the boolean 4D masks below are sdpa's convention
        self.model, self.block_size, self.mask_token_id = model, block_size, mask_token_id
        self.rank, self.alpha = rank, alpha
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name in LORA_TARGETS:
                    if isinstance(getattr(parent, name, None), nn.Linear):
                        setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha))
        embedding = model.get_input_embeddings().weight
        self.mask_embedding = nn.Parameter(embedding.detach().mean(0).clone())

    def lora_modules(self) -> dict[str, LoRALinear]:
        return {name: m for name, m in self.model.named_modules() if isinstance(m, LoRALinear)}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def adapter_disabled(self):
        """The base model's function (no adapter) inside the block."""
        modules = self.lora_modules().values()
        for m in modules:
            m.enabled = False
        try:
            yield
        finally:
            for m in modules:
                m.enabled = True

    def hidden_states(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """Last hidden states; the mask id's input is the mask vector (the tied matrix's row 16 is never read)."""
        embeds = self.model.get_input_embeddings()(input_ids)
        is_mask = (input_ids == self.mask_token_id).unsqueeze(-1)
        embeds = torch.where(is_mask, self.mask_embedding.to(embeds.dtype), embeds)
        out = self.model.model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids)
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output logits in float32 with the mask's logit at ``-inf`` (never predicted, never sampled)."""
        logits = self.model.lm_head(hidden).float()
        logits[..., self.mask_token_id] = float("-inf")
        return logits


# ------------------------------------------------------------------------------------------------ layout, batches


@dataclass
class Example:
    """A prompt (causal prefix) and its answer, as token ids; `finished` answers end with the end-of-turn token."""

    prompt: list[int]
    answer: list[int]
    finished: bool = False


def block_answer(example: Example, block_size: int, end_id: int, max_answer: int) -> list[int]:
    """
    The answer cut or filled so that prompt + answer ends on a block boundary (blocks align from position 0):
    a finished answer is filled with the end id (end and pad), an unfinished one cut.
    """
    answer, n = example.answer[:max_answer], len(example.prompt)
    if example.finished and len(answer) == len(example.answer):
        return answer + [end_id] * (-(n + len(answer)) % block_size)
    return answer[: max(0, len(answer) - (n + len(answer)) % block_size)]


def layout_mask(stream, block, valid) -> torch.Tensor:
    """
    The boolean attention mask ``[batch, 1, L, L]`` (True: may attend) of the two-stream layout.

    Per token: `stream` 0 (clean) or 1 (noisy), `block` its block (``position // block_size``: blocks align from
    position 0, as the native block-diffusion class and the pipeline align them), `valid` False for padding.
    Clean: block-causal (block ``k`` sees blocks ``<= k``). Noisy block ``k``: clean blocks ``< k`` and noisy
    block ``k``. Padding is seen by nobody and sees itself only.
    """
    qs, ks = stream[:, :, None], stream[:, None, :]
    qb, kb = block[:, :, None], block[:, None, :]
    clean = (qs == 0) & (ks == 0) & (kb <= qb)
    noisy = (qs == 1) & (((ks == 0) & (kb < qb)) | ((ks == 1) & (kb == qb)))
    return _with_padding(clean | noisy, valid)


def causal_mask(valid) -> torch.Tensor:
    """The causal mask ``[batch, 1, L, L]`` of the clean stream (the base SmolLM2's view, for the KL)."""
    n = valid.shape[1]
    return _with_padding(torch.ones(n, n, dtype=torch.bool).tril().expand(valid.shape[0], n, n), valid)


def _with_padding(allowed, valid) -> torch.Tensor:
    allowed = allowed & valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(valid.shape[1], dtype=torch.bool).unsqueeze(0)
    return (allowed | (eye & ~valid[:, :, None])).unsqueeze(1)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, Lc + Ln]: the clean stream, then the noisy copy of the answer's blocks
    position_ids: torch.Tensor
    attention_mask: torch.Tensor  # [B, 1, L, L] boolean
    clean_length: int  # Lc: the clean stream's width (its sub-mask is the clean-only, block-causal layout)
    targets: torch.Tensor  # [B, Ln] the tokens of the noisy stream's positions
    source: torch.Tensor  # [B, Ln] the row whose logits predict each target (shifted)
    slot: torch.Tensor  # [B, Ln] slot in its block
    answer_valid: torch.Tensor  # [B, Ln] an answer token (not padding, not the prompt's tail)
    masked: torch.Tensor  # [B, Ln] masked in the noisy stream
    causal_mask: torch.Tensor  # [B, 1, Lc, Lc] the clean stream's causal mask (the KL's base forward)
    tokens: int = 0  # answer tokens in the batch


def make_batch(
    examples: list[Example],
    block_size: int,
    end_id: int,
    generator: torch.Generator,
    mask_token_id: int = MASK_ID,
    max_answer: int = 72,
    fixed_fraction: float | None = None,
) -> Batch:
    """
    Packs examples into the two-stream layout and masks the noisy copy.

    Blocks align from position 0, so the prompt's tail (``len(prompt) % block_size`` tokens) is the frozen head of
    the answer's first block, in both streams, as at decoding. The noisy stream copies the blocks from that one on.
    Each block draws its rate ``t ~ U(0, 1]`` and masks each answer token with probability ``t``; with
    `fixed_fraction` every block has exactly ``round(fixed_fraction * block_size)`` masked answer tokens (fewer
    where the block holds fewer; 1.0: all of them) instead, for evaluation. Answers that give no answer token once
    cut to a block boundary are dropped.
    """
    b = block_size
    answers = [block_answer(e, b, end_id, max_answer) for e in examples]
    keep = [i for i, a in enumerate(answers) if len(a) > 0]
    if not keep:
        raise ValueError("make_batch: no example has an answer that reaches a block boundary; pass longer answers.")
    seqs = [torch.tensor(examples[i].prompt + answers[i], dtype=torch.long) for i in keep]
    plen = torch.tensor([len(examples[i].prompt) for i in keep])
    total = torch.tensor([len(s) for s in seqs])
    first = plen // b * b  # the first block holding an answer token
    clean = nn.utils.rnn.pad_sequence(seqs, True, end_id)
    noisy_seqs = [s[f:] for s, f in zip(seqs, first.tolist())]
    noisy_clean = nn.utils.rnn.pad_sequence(noisy_seqs, True, end_id)
    batch, lc, ln = len(seqs), clean.shape[1], noisy_clean.shape[1]

    ic, j = torch.arange(lc).expand(batch, lc), torch.arange(ln).expand(batch, ln)
    clean_valid = ic < total[:, None]
    position = first[:, None] + j  # the noisy copy's positions: those of the blocks it copies
    noisy_valid = position < total[:, None]
    answer_valid = noisy_valid & (position >= plen[:, None])
    slot = j % b  # `first` is a block boundary
    noisy_block = j.div(b, rounding_mode="floor")  # the noisy stream's own block index

    if fixed_fraction is None:
        rate = 1 - torch.rand(batch, ln // b, generator=generator)  # (0, 1]
        masked = torch.rand(batch, ln, generator=generator) < rate.gather(1, noisy_block)
    else:
        # exactly k masked per block: the k smallest random scores among the block's answer tokens
        scores = torch.rand(batch, ln, generator=generator).where(answer_valid, 2.0)
        rank = scores.view(batch, -1, b).argsort(-1).argsort(-1).view(batch, ln)
        masked = rank < round(fixed_fraction * b)
    masked &= answer_valid
    noisy = torch.where(masked, mask_token_id, noisy_clean)

    stream = torch.cat([torch.zeros(batch, lc, dtype=torch.long), torch.ones(batch, ln, dtype=torch.long)], 1)
    positions = torch.cat([ic, position], 1)
    valid = torch.cat([clean_valid, noisy_valid], 1)
    # shifted logits: slot 0 from the clean token before it, slot j >= 1 from noisy slot j - 1
    source = torch.where(slot == 0, position - 1, lc + j - 1).clamp(min=0)
    return Batch(
        input_ids=torch.cat([clean, noisy], 1),
        position_ids=positions,
        attention_mask=layout_mask(stream, positions.div(b, rounding_mode="floor"), valid),
        clean_length=lc,
        targets=noisy_clean,
        source=source,
        slot=slot,
        answer_valid=answer_valid,
        masked=masked,
        causal_mask=causal_mask(clean_valid),
        tokens=int(answer_valid.sum()),
    )


def _gather(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return hidden.gather(1, rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def batch_logits(model: BlockDiffusionLM, batch: Batch) -> torch.Tensor:
    """``[B, La, V]`` logits predicting each answer token under the shifted convention."""
    hidden = model.hidden_states(batch.input_ids, batch.attention_mask, batch.position_ids)
    return model.logits(_gather(hidden, batch.source))


def loss_terms(model: BlockDiffusionLM, batch: Batch, kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """
    ``loss = CE(masked tokens of slots >= 1) + kl_weight * KL(base || model at slot 0)``.

    The KL's base logits come from the clean stream alone, causal, with the adapter off (SmolLM2 itself; no
    gradient).
    """
    logits = batch_logits(model, batch)
    fill = batch.masked & (batch.slot > 0)
    ar = batch.answer_valid & (batch.slot == 0)
    zero = logits.sum() * 0
    ce = F.cross_entropy(logits[fill], batch.targets[fill]) if fill.any() else zero
    terms = {"ce": ce, "kl": zero}
    if kl_weight > 0:
        lc = batch.clean_length
        with torch.no_grad(), model.adapter_disabled():
            base_hidden = model.hidden_states(batch.input_ids[:, :lc], batch.causal_mask, batch.position_ids[:, :lc])
            base = model.logits(_gather(base_hidden, batch.source.clamp(max=lc - 1)))[ar]
        log_p, log_q = base.log_softmax(-1), logits[ar].log_softmax(-1)
        finite = torch.isfinite(log_p)  # the mask column (-inf in both)
        kl = (log_p.exp() * (log_p - log_q)).where(finite, 0.0).sum(-1).mean()
        terms["kl"] = kl
    terms["loss"] = ce + kl_weight * terms["kl"]
    return terms


@torch.no_grad()
def slot_accuracy(
    model: BlockDiffusionLM, examples: list[Example], end_id: int, fraction: float, seed: int = 0, batch_size: int = 8
) -> dict:
    """
    Greedy masked-token accuracy per block slot, each block with ``fraction`` of its tokens masked.

    Slot 0 (the autoregressive path) is counted at every block, masked or not: its prediction comes from the
    clean prefix, whatever the block holds. Slots ``>= 1`` are counted where masked.
    """
    generator = torch.Generator().manual_seed(seed)
    b = model.block_size
    hits, counts = torch.zeros(b), torch.zeros(b)
    for start in range(0, len(examples), batch_size):
        batch = make_batch(
            examples[start : start + batch_size], b, end_id, generator, model.mask_token_id, fixed_fraction=fraction
        )
        with _autocast(True):
            logits = batch_logits(model, batch)
        counted = batch.answer_valid & ((batch.slot == 0) | batch.masked)
        correct = (logits.argmax(-1) == batch.targets) & counted
        hits += torch.zeros(b).scatter_add_(0, batch.slot[counted], correct[counted].float())
        counts += torch.zeros(b).scatter_add_(0, batch.slot[counted], torch.ones(int(counted.sum())))
    per_slot = (hits / counts.clamp(min=1)).tolist()
    return {
        "per_slot": [round(a, 4) for a in per_slot],
        "fill": round(float(hits[1:].sum() / counts[1:].sum()), 4) if b > 1 else None,
        "slot0": round(per_slot[0], 4),
        "tokens": int(counts.sum()),
    }


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------------------------------------- decoding


@torch.no_grad()
def decode(
    model: BlockDiffusionLM,
    prompt_ids: list[int],
    end_id: int,
    max_new_tokens: int = 64,
    threshold: float | None = None,
) -> tuple[list[int], int]:
    """
    Greedy block-by-block decoding in the shifted convention; returns ``(new token ids, forward passes)``.

    Blocks align from position 0: the first block holds the prompt's tail and masks after it, each later block
    ``block_size`` masks. Every pass commits the most confident masked slot (and, with `threshold`, every slot
    above it), slot 0 read from the last token before the block. A block holding the end id ends the answer. No KV
    cache: each pass reruns the sequence block-causally (the clean-stream layout), which is what the pipeline's
    cached path computes.
    """
    b, ids, passes = model.block_size, list(prompt_ids), 0
    plen = len(prompt_ids)
    while len(ids) - plen < max_new_tokens:
        start = len(ids) // b * b
        ids += [model.mask_token_id] * (start + b - len(ids))
        while model.mask_token_id in ids[start:]:
            x = torch.tensor([ids])
            i = torch.arange(len(ids))[None]
            blocks, valid = i.div(b, rounding_mode="floor"), torch.ones_like(x, dtype=torch.bool)
            mask = layout_mask(torch.zeros_like(x), blocks, valid)
            with _autocast(True):
                hidden = model.hidden_states(x, mask, i)
            logits = model.logits(hidden[0, max(start - 1, 0) : start + b - 1])
            if start == 0:  # no token before the first one: its slot is never masked (a prompt token)
                logits = torch.cat([logits[:1], logits])
            confidence, token = logits.softmax(-1).max(-1)
            still = torch.tensor(ids[start:]) == model.mask_token_id
            confidence = confidence.where(still, -1.0)
            commit = confidence == confidence.max()
            if threshold is not None:
                commit |= (confidence > threshold) & still
            ids[start:] = torch.tensor(ids[start:]).where(~commit, token).tolist()
            passes += 1
        new = ids[max(start, plen) :]
        if end_id in new:
            ids = ids[: max(start, plen) + new.index(end_id)]
            break
    return ids[plen : plen + max_new_tokens], passes


# -------------------------------------------------------------------------------------------------------- export


def export_adapter(model: BlockDiffusionLM, folder: str | Path) -> Path:
    """
    Writes the shipped artefact: ``adapter.safetensors`` (LoRA factors in float16, the mask vector in float32) and
    ``adapter_config.json`` (rank, alpha, targets, block size, mask id). A few MB; the base is rebuilt from the GGUF.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"mask_embedding": model.mask_embedding.detach().float().contiguous()}
    for name, module in model.lora_modules().items():
        tensors[f"{name}.lora_a"] = module.lora_a.detach().half().contiguous()
        tensors[f"{name}.lora_b"] = module.lora_b.detach().half().contiguous()
    config = {
        "rank": model.rank,
        "alpha": model.alpha,
        "targets": list(LORA_TARGETS),
        "block_size": model.block_size,
        "mask_token_id": model.mask_token_id,
        "format": "entrgi-lora-v1",
    }
    temporary = folder / ".adapter.safetensors.tmp"
    save_file(tensors, str(temporary))
    os.replace(temporary, folder / "adapter.safetensors")
    write_json_atomic(folder / "adapter_config.json", config)
    return folder


def load_adapter(model: BlockDiffusionLM, adapter_folder: str | Path) -> BlockDiffusionLM:
    """Loads an `export_adapter` folder into a `BlockDiffusionLM` of the same geometry (the float16 factors)."""
    adapter_folder = Path(adapter_folder)
    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    if config["rank"] != model.rank or config["alpha"] != model.alpha:
        raise ValueError(
            f"{adapter_folder} has rank {config['rank']} and alpha {config['alpha']}; build the BlockDiffusionLM "
            f"with those (got {model.rank}, {model.alpha}). Its block size may differ (block 1: the AR path)."
        )
    tensors = load_file(str(adapter_folder / "adapter.safetensors"))
    with torch.no_grad():
        model.mask_embedding.copy_(tensors["mask_embedding"])
        for name, module in model.lora_modules().items():
            module.lora_a.copy_(tensors[f"{name}.lora_a"])
            module.lora_b.copy_(tensors[f"{name}.lora_b"])
    return model


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    output: str
    block_size: int = 4
    rank: int = 16
    alpha: float = 32.0
    lr: float = 5e-4
    warmup_steps: int = 30
    batch_size: int = 8
    kl_weight: float = 1.0
    max_answer: int = 72
    seed: int = 0
    bf16: bool = True
    max_minutes: float = 60.0
    max_steps: int | None = None
    checkpoint_minutes: float = 10.0
    eval_minutes: float = 15.0
    extra: dict = field(default_factory=dict)


class StreamSampler:
    """
    The examples of batch ``step``: ``batch_size - secondary_per_batch`` records of `primary` in its order, then
    `secondary_per_batch` of a seeded permutation of `secondary` (a fresh one per pass).

    `primary` is the distill file in its order (stack.distill shuffled its prompts). Batch ``s`` reads the records
    ``flat .. flat + k`` (modulo the file's length) of the current *segment*: a run starts one at step 0, and a run
    resumed on a file that has grown since (the distill job appends) starts another one: at the same place when the
    earlier pass had not reached the old end yet, else at the first new record (unseen records before a second
    look at old ones). On an unchanged file a resumed run reads exactly what an uninterrupted run would.
    """

    def __init__(self, primary: list, secondary: list, batch_size: int, secondary_per_batch: int, seed: int):
        if not primary or (secondary_per_batch and not secondary) or not 0 <= secondary_per_batch < batch_size:
            raise ValueError(
                "StreamSampler needs primary examples, secondary ones when secondary_per_batch > 0, and "
                f"0 <= secondary_per_batch < batch_size (got {secondary_per_batch}, {batch_size})."
            )
        self.primary, self.secondary, self.seed = primary, secondary, seed
        self.n_primary, self.n_secondary = batch_size - secondary_per_batch, secondary_per_batch
        self.segments = [{"step": 0, "flat": 0, "n": len(primary)}]
        self._pass, self._order = -1, []

    def resume(self, segments: list[dict], step: int) -> None:
        """Continues the saved `segments` at `step`, opening a new segment if the file has grown."""
        last, n = segments[-1], len(self.primary)
        if n < last["n"]:
            raise ValueError(
                f"the distill file holds {n} training records, fewer than the {last['n']} it was "
                "trained on: resume with the same file (it is append-only) or use another --output."
            )
        end = last["flat"] + (step - last["step"]) * self.n_primary
        if n == last["n"]:
            self.segments = list(segments)
        else:
            self.segments = [*segments, {"step": step, "flat": end if end < last["n"] else last["n"], "n": n}]

    def grow(self, primary: list, step: int) -> None:
        """Takes the grown file's records (`primary` starts with the old ones) from batch `step` on, as a run
        resumed at `step` on that file would (a new segment: see `resume`)."""
        if len(primary) > len(self.primary):
            self.primary = primary
            self.resume(self.segments, step)

    def _secondary(self, flat: int):
        epoch, offset = divmod(flat, len(self.secondary))
        if epoch != self._pass:
            self._pass = epoch
            n = len(self.secondary)
            self._order = random.Random(self.seed * 1_000_003 + epoch).sample(range(n), n)
        return self.secondary[self._order[offset]]

    def __call__(self, step: int) -> list:
        segment = self.segments[-1]
        start = segment["flat"] + (step - segment["step"]) * self.n_primary
        first = [self.primary[i % segment["n"]] for i in range(start, start + self.n_primary)]
        flats = range(step * self.n_secondary, (step + 1) * self.n_secondary)
        return first + [self._secondary(i) for i in flats]


def train(
    model: BlockDiffusionLM,
    config: TrainConfig,
    batches,
    end_id: int,
    eval_sets: dict[str, list[Example]] | None = None,
    log_extra: dict | None = None,
    reload=None,
) -> dict:
    """
    Trains (or resumes) into `config.output` until `max_minutes` or `max_steps`; returns the log.

    `batches(step)` gives the examples of batch ``step`` (a `StreamSampler`); the masks of batch ``s`` depend only
    on the seed and ``s``, so a resumed run continues exactly. `reload()`, when given, returns the distill file's
    training records again: at every checkpoint a grown file's new records are taken (`StreamSampler.grow`), so a
    run can start while the distill job is still writing; the segments saved with the checkpoint keep a resumed
    run exact.
    """
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    log = {"config": asdict(config), **(log_extra or {}), "steps": [], "evals": [], "runs": []}
    step, tokens, minutes_before = 0, 0, 0.0
    checkpoint = output / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        for key in ("block_size", "rank", "alpha", "seed", "batch_size"):
            if saved["config"][key] != asdict(config)[key]:
                raise ValueError(
                    f"{checkpoint} was trained with {key}={saved['config'][key]}, not "
                    f"{asdict(config)[key]}: resume with the same setting or use another --output."
                )
        model.load_state_dict(saved["trainable"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, tokens, minutes_before, log = saved["step"], saved["tokens"], saved["minutes"], saved["log"]
        if hasattr(batches, "resume"):
            # checkpoints from before segments were saved: one segment over the records the log counts
            segments = saved.get("segments") or [{"step": 0, "flat": 0, "n": log["data"]["distill_train"]}]
            batches.resume(segments, step)
    start = time.time()
    log["runs"].append(
        {
            "start_step": step,
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "segments": getattr(batches, "segments", None),
            "data": (log_extra or {}).get("data"),
        }
    )

    def minutes() -> float:
        return minutes_before + (time.time() - start) / 60

    def save() -> None:
        state = {
            "trainable": model.trainable_state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "tokens": tokens,
            "minutes": minutes(),
            "config": asdict(config),
            "log": log,
            "segments": getattr(batches, "segments", None),
        }
        temporary = output / ".checkpoint.pt.tmp"
        torch.save(state, temporary)
        os.replace(temporary, checkpoint)
        export_adapter(model, output / "adapter")
        write_json_atomic(output / "train_log.json", log)

    def evaluate() -> None:
        if not eval_sets:
            return
        model.eval()
        began = time.time()
        record = {"step": step, "tokens": tokens, "minutes": round(minutes(), 2)}
        for name, examples in eval_sets.items():
            for label, fraction in (("half", 0.5), ("full", 1.0)):
                record[f"{name}/{label}"] = slot_accuracy(model, examples, end_id, fraction, seed=config.seed)
        record["eval_seconds"] = round(time.time() - began, 1)
        log["evals"].append(record)
        print(json.dumps({"eval": record}), flush=True)
        model.train()

    def budget_left() -> bool:
        if config.max_steps is not None and step >= config.max_steps:
            return False
        return (time.time() - start) / 60 < config.max_minutes

    if not log["evals"] or log["evals"][-1]["step"] != step:
        evaluate()
    last_checkpoint = last_eval = time.time()
    model.train()
    while budget_left():
        examples = batches(step)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        batch = make_batch(examples, model.block_size, end_id, generator, model.mask_token_id, config.max_answer)
        t = time.time()
        with _autocast(config.bf16):
            terms = loss_terms(model, batch, config.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step, tokens = step + 1, tokens + batch.tokens
        seconds = time.time() - t
        entry = {
            "step": step,
            "loss": round(terms["loss"].item(), 4),
            "ce": round(terms["ce"].item(), 4),
            "kl": round(terms["kl"].item(), 4),
            "grad_norm": round(float(norm), 3),
            "tokens": tokens,
            "minutes": round(minutes(), 2),
            "tokens_per_s": round(batch.tokens / seconds, 1),
            "packed_tokens_per_s": round(batch.input_ids.numel() / seconds, 1),
        }
        log["steps"].append(entry)
        if step % 10 == 0 or step <= 3:
            print(json.dumps(entry), flush=True)
            write_json_atomic(output / "train_log.json", log)
        if (time.time() - last_eval) / 60 >= config.eval_minutes:
            evaluate()
            last_eval = time.time()
        if (time.time() - last_checkpoint) / 60 >= config.checkpoint_minutes:
            if reload is not None:
                batches.grow(reload(), step)
            save()
            last_checkpoint = time.time()
    if eval_sets and log["evals"][-1]["step"] != step:
        evaluate()
    log["runs"][-1].update(end_step=step, minutes=round(minutes(), 2))
    save()
    return log


# ------------------------------------------------------------------------------------------------------- data


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        lines = [line for line in f if line.strip()]
    if lines and not lines[-1].endswith("\n"):  # a file being appended to: its last line may be torn
        lines = lines[:-1]
    return [json.loads(line) for line in lines]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def chat_prompt(tokenizer, prompt: str) -> list[int]:
    """SmolLM2's chat template with its default system prompt (as distill.py sampled), generation prompt added."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def load_examples(
    tokenizer,
    distill_path: Path,
    documents_path: Path | None,
    eval_examples: int,
    seed: int,
    corpus_pool: int = 20_000,
    eval_answers: int | None = None,
) -> tuple[list[Example], list[Example], dict, dict]:
    """`(distill training examples in file order, corpus training pool, evaluation sets, counts)`.

    Excluded from training and counted: held-out distill prompts, the bundled prompts, the bundled held-out texts.
    The evaluation answers are the first `eval_answers` (default `eval_examples`) held-out distill records: the file
    is append-only, so a resumed run passes the count its first run had and evaluates on the same answers.
    """
    records = _read_jsonl(distill_path)
    bundled = {
        _norm(r["prompt"]) for name in ("prompts.jsonl", "prompts_v2.jsonl") for r in _read_jsonl(DATA_DIR / name)
    }
    heldout_texts = _read_jsonl(DATA_DIR / "heldout.jsonl.gz")
    heldout_set = {_norm(r["text"]) for r in heldout_texts}
    heldout_prompts = {_norm(r["prompt"]) for r in records if r["split"] == "heldout"}
    stats = {"distill_records": len(records)}

    def answer_example(r: dict) -> Example:
        return Example(
            chat_prompt(tokenizer, r["prompt"]),
            tokenizer(r["response"], add_special_tokens=False)["input_ids"],
            bool(r["finished"]),
        )

    train_records = [r for r in records if r["split"] != "heldout" and r["response"].strip()]
    blocked = bundled | heldout_prompts
    stats["distill_excluded_heldout_or_bundled_prompt"] = sum(_norm(r["prompt"]) in blocked for r in train_records)
    train = [answer_example(r) for r in train_records if _norm(r["prompt"]) not in blocked]
    stats["distill_train"] = len(train)
    held_out = [answer_example(r) for r in records if r["split"] == "heldout" and r["response"].strip()]
    evals = {"answers": held_out[: eval_examples if eval_answers is None else eval_answers]}

    def text_example(text: str) -> Example:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return Example(ids[:8], ids[8:72], False)

    corpus = []
    if documents_path is not None:
        docs = [d for d in _read_jsonl(documents_path) if d.get("split") != "heldout"]
        before = len(docs)
        docs = [d for d in docs if _norm(d["text"]) not in heldout_set]
        stats["corpus_excluded_bundled_heldout"] = before - len(docs)
        # short documents (most WordNet glosses) give no whole answer after the 8-token prefix: they are dropped
        candidates = random.Random(seed).sample(docs, min(corpus_pool, len(docs)))
        corpus = [e for e in (text_example(d["text"]) for d in candidates) if len(e.answer) >= 8]
        stats["corpus_pool"] = len(corpus)
    others = [e for e in (text_example(r["text"]) for r in heldout_texts) if len(e.answer) >= 8]
    evals["other_text"] = random.Random(seed).sample(others, min(eval_examples, len(others)))
    stats["eval_answers"], stats["eval_other_text"] = len(evals["answers"]), len(evals["other_text"])
    stats["distill_train_tokens"] = sum(len(e.answer) for e in train)
    return train, corpus, evals, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--distill", required=True, help="stack.distill's JSONL (read in its order)")
    parser.add_argument("--documents", default=None, help="stack.corpus's documents.jsonl (corpus text)")
    parser.add_argument("--output", required=True, help="checkpoint folder; an existing one is resumed")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--corpus-fraction", type=float, default=0.25)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--eval-minutes", type=float, default=15.0)
    parser.add_argument("--eval-examples", type=int, default=40)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init-adapter", default=None, help="an export_adapter folder to start from (a new --output only)"
    )
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (bf16 autocast by default)")
    args = parser.parse_args(argv)
    if not 0 <= args.corpus_fraction < 1:
        parser.error(f"--corpus-fraction must be in [0, 1), got {args.corpus_fraction}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .smollm import load_smollm

    torch.manual_seed(args.seed)  # the LoRA A factors' initialisation (saved in the checkpoint thereafter)
    base, tokenizer = load_smollm()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    answers_count = args.eval_examples
    if (output / "train_log.json").exists():
        # a resumed run evaluates on the held-out answers the first run had (the file has grown since)
        answers_count = min(answers_count, json.loads((output / "train_log.json").read_text())["data"]["eval_answers"])
    distill, corpus, eval_sets, stats = load_examples(
        tokenizer,
        Path(args.distill),
        Path(args.documents) if args.documents and args.corpus_fraction > 0 else None,
        args.eval_examples,
        args.seed,
        eval_answers=answers_count,
    )
    batches = StreamSampler(distill, corpus, args.batch_size, round(args.batch_size * args.corpus_fraction), args.seed)
    print(json.dumps({"data": stats}), flush=True)
    model = BlockDiffusionLM(base, args.block_size, args.rank)
    if args.init_adapter and not (output / "checkpoint.pt").exists():
        load_adapter(model, args.init_adapter)  # a resumed run takes its own checkpoint instead
    config = TrainConfig(
        output=str(output),
        block_size=args.block_size,
        rank=args.rank,
        lr=args.lr,
        batch_size=args.batch_size,
        kl_weight=args.kl_weight,
        seed=args.seed,
        bf16=not args.no_bf16,
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        checkpoint_minutes=args.checkpoint_minutes,
        eval_minutes=args.eval_minutes,
        extra={"corpus_fraction": args.corpus_fraction, "threads": args.threads, "init_adapter": args.init_adapter},
    )

    def reload() -> list[Example]:
        return load_examples(tokenizer, Path(args.distill), None, args.eval_examples, args.seed)[0]

    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    train(model, config, batches, end_id, eval_sets, {"data": stats}, reload=reload)


if __name__ == "__main__":
    main()
