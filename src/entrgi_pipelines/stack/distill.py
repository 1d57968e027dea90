"""A distillation corpus for the embedded dLLM v2: prompt -> response pairs written by SmolLM2-135M-Instruct.

Prompts are instruction templates filled with subjects from the stack's topics (and a few general ones), so the
distilled dLLM learns to answer a request in modern English on its subject. Responses are sampled (temperature 0.8,
top-p 0.95) in batches with a KV cache (``generate``), left-padded, up to ``--max-new-tokens`` tokens. The corpus is
appended to a JSONL file one batch at a time, so a run can be stopped and resumed at any point; each record carries
its prompt, response, topic, whether the model finished (EOS) and the split. The held-out split is decided by a hash
of the *prompt*, so no held-out prompt is ever trained on.

Example::

    python -m entrgi_pipelines.stack.distill --output corpus/distill.jsonl --max-minutes 60 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import time
from pathlib import Path

import torch

from .smollm import load_smollm

# Subjects per topic, separated by semicolons.
SUBJECTS = {
    "religion": tuple(
        "prayer; the Bible; faith in God; forgiveness; a church service; the prophets; heaven; the meaning of"
        " grace; Christmas; monks and monasteries; the Ten Commandments; a pilgrimage".split("; ")
    ),
    "computers": tuple(
        "computer programs; the internet; learning to code; a software bug; Linux; computer memory; passwords"
        " and security; a new laptop; databases; video games; artificial intelligence; email".split("; ")
    ),
    "food": tuple(
        "cooking rice; fresh bread; a healthy breakfast; Italian food; fruit and vegetables; baking a cake; "
        "spicy food; a family dinner; coffee; eating out at a restaurant; soup on a cold day; chocolate".split("; ")
    ),
    "love": tuple(
        "falling in love; a wedding; marriage; a first date; friendship; a love letter; a broken heart; "
        "romance; a happy couple; missing someone you love; Valentine's Day; kindness between partners".split("; ")
    ),
    "politics": tuple(
        "elections; the government; voting; a new law; the courts; democracy; a political debate; taxes; the "
        "constitution; a city council; freedom of speech; lawyers and judges".split("; ")
    ),
    "science": tuple(
        "the solar system; atoms; evolution; a science experiment; the human brain; climate; gravity; the "
        "ocean; electricity; dinosaurs; chemistry; the speed of light".split("; ")
    ),
    "work": tuple(
        "a job interview; working from home; a difficult boss; teamwork; a busy office; a career change; "
        "meetings; getting a promotion; a hard day at work; starting a small business; time management; "
        "colleagues".split("; ")
    ),
    "education": tuple(
        "school; a good teacher; studying for exams; learning a language; university; homework; reading "
        "books; a library; math class; graduation; online courses; a child's first day at school".split("; ")
    ),
    "medicine": tuple(
        "visiting a doctor; a hospital; vaccines; healthy sleep; a common cold; medicine and pills; nurses; "
        "exercise and health; a broken arm; mental health; washing your hands; the heart".split("; ")
    ),
    "sports": tuple(
        "football; running a marathon; basketball; the Olympics; swimming; a tennis match; a team winning a "
        "game; cycling; training for a race; baseball; a soccer coach; skiing".split("; ")
    ),
    "general": tuple(
        "the weather; a summer holiday; dogs; a walk in the forest; the city at night; music; an old house; "
        "the sea; a train journey; a rainy day; gardening; a birthday party".split("; ")
    ),
}

TEMPLATES = (
    "Write two sentences about {s}.",
    "Tell me about {s}.",
    "Describe {s} in a few sentences.",
    "Write a short paragraph about {s}.",
    "What do you think about {s}?",
    "Explain {s} to a child.",
    "Give me one interesting fact about {s}.",
    "Write a short story about {s}.",
    "Why do people care about {s}?",
    "Write a few sentences on {s}.",
    "Say something nice about {s}.",
    "What is the best thing about {s}?",
    "Write a short note about {s}.",
    "How would you describe {s} to a friend?",
    "Share a thought about {s}.",
    "{S}: write a short description.",
)


def is_held_out(prompt: str, fraction: float = 0.03) -> bool:
    return int(hashlib.sha1(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def distill_prompts() -> list[dict]:
    """Every (template, subject) pair as ``{"prompt", "topic", "split"}``, in a fixed order."""
    out = []
    for (topic, subjects), template in itertools.product(SUBJECTS.items(), TEMPLATES):
        for subject in subjects:
            prompt = template.format(s=subject, S=subject[0].upper() + subject[1:])
            out.append({"prompt": prompt, "topic": topic, "split": "heldout" if is_held_out(prompt) else "train"})
    return out


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, generator_seed: int) -> list[dict]:
    """Samples one response per prompt; returns ``{"response", "finished", "tokens"}`` per prompt."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(generator_seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]
    finished = (new == tokenizer.eos_token_id).any(-1)
    lengths = torch.where(finished, (new == tokenizer.eos_token_id).int().argmax(-1), new.shape[1])
    return [
        {"response": tokenizer.decode(row[:n], skip_special_tokens=True).strip(), "finished": bool(f), "tokens": int(n)}
        for row, n, f in zip(new, lengths.tolist(), finished.tolist())
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output", required=True, help="JSONL to append to (resumed if it exists)")
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=72)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = sum(1 for _ in open(output)) if output.exists() else 0
    model, tokenizer = load_smollm()
    prompts = distill_prompts()

    # Each pass over the prompts is shuffled anew; records are numbered, so a resumed run picks up the same order.
    def prompt_at(i: int) -> dict:
        return random.Random(args.seed + i // len(prompts)).sample(prompts, len(prompts))[i % len(prompts)]

    start, written, tokens = time.time(), done, 0
    with open(output, "a") as handle:
        while (time.time() - start) / 60 < args.max_minutes and (
            args.max_records is None or written < args.max_records
        ):
            batch = [prompt_at(i) for i in range(written, written + args.batch_size)]
            results = generate_batch(
                model, tokenizer, [b["prompt"] for b in batch], args.max_new_tokens, args.seed * 1_000_003 + written
            )
            for meta, result in zip(batch, results):
                handle.write(json.dumps({**meta, **result}) + "\n")
            handle.flush()
            written += len(batch)
            tokens += sum(r["tokens"] for r in results)
            rate = tokens / (time.time() - start)
            print(json.dumps({"records": written, "new_tokens": tokens, "tokens_per_s": round(rate, 1)}), flush=True)


if __name__ == "__main__":
    main()
