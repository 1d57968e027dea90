"""Accuracy of the two topic judges (SmolLM2 LM judge, MiniLM topic classifier) on text with known topics.

Texts: the shipped held-out corpus documents whose source carries a topic (the Bible: religion; the fortune files
grouped as in `stack.corpus.TOPIC_FILES`), and SmolLM2-written texts (greedy answers to "Write two sentences about
{subject}." for the first `--subjects-per-topic` subjects of each topic in `stack.distill.SUBJECTS`), all cut to
their first `--words` words (about the length of a benchmark response). Every text is scored against the
benchmark's 10 target descriptions; a judge is right when the true topic's description scores highest. Reported per
set: accuracy, balanced accuracy (mean over topics: the held-out corpus is mostly Bible), the mean probability given
to the true description, for the LM judge as shipped (calibrated), the LM judge without calibration, and the MiniLM
topic classifier (whose head was trained on the training split of the same corpus sources).

    PYTHONPATH=src HF_HUB_OFFLINE=1 python studies/judge_accuracy.py --output docs/judge_accuracy.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from entrgi_pipelines.stack.corpus import TOPIC_FILES, TOPICS
from entrgi_pipelines.stack.distill import SUBJECTS
from entrgi_pipelines.stack.fluency import HELDOUT_FILE
from entrgi_pipelines.stack.judges import CONTENT_FREE_TEXT, default_topic_descriptions, topic_log_likelihoods
from entrgi_pipelines.stack.reward_models import load_topic_judge
from entrgi_pipelines.stack.smollm import load_smollm


def cut(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def heldout_texts(words: int) -> list[tuple[str, str]]:
    """(text, topic) of the held-out documents with a topic, cut to their first `words` words."""
    topic_of = {f"fortunes/{name}": topic for topic, names in TOPIC_FILES.items() for name in names}
    topic_of["kjv"] = "religion"
    with gzip.open(HELDOUT_FILE, "rt") as f:
        docs = [json.loads(line) for line in f]
    return [(cut(d["text"], words), topic_of[d["source"]]) for d in docs if d["source"] in topic_of]


@torch.no_grad()
def smollm_texts(model, tokenizer, per_topic: int, max_new_tokens: int, words: int) -> list[tuple[str, str]]:
    """Greedy SmolLM2 answers to "Write two sentences about {subject}." (left-padded batch, KV cache)."""
    pairs = [(subject, topic) for topic in TOPICS for subject in SUBJECTS[topic][:per_topic]]
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write two sentences about {s}."}], add_generation_prompt=True, tokenize=False
        )
        for s, _ in pairs
    ]
    enc = tokenizer(chats, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [(cut(text, words), topic) for text, (_, topic) in zip(texts, pairs)]


@torch.no_grad()
def minilm_probabilities(judge, tokenizer, texts: list[str], candidates: list[str]) -> torch.Tensor:
    """(N, C): the MiniLM judge's probability that each text is on each candidate's topic."""
    rows = []
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        pairs = [(c, t) for t in chunk for c in candidates]
        enc = tokenizer(
            [c for c, _ in pairs], [t for _, t in pairs], padding=True, truncation=True, return_tensors="pt"
        )
        rows.append(judge(**enc).logits[:, 0].view(len(chunk), len(candidates)))
    return torch.cat(rows)


def scores(probs: torch.Tensor, labels: torch.Tensor, topics: list[str]) -> dict:
    correct = probs.argmax(dim=1) == labels
    per_topic = {t: correct[labels == i].float().mean().item() for i, t in enumerate(topics) if (labels == i).any()}
    return {
        "accuracy": round(correct.float().mean().item(), 4),
        "balanced_accuracy": round(sum(per_topic.values()) / len(per_topic), 4),
        "mean_probability_of_true_topic": round(probs.gather(1, labels[:, None]).mean().item(), 4),
        "accuracy_per_topic": {t: round(a, 4) for t, a in per_topic.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--words", type=int, default=24, help="cut every text to its first N words")
    parser.add_argument("--subjects-per-topic", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    candidates = default_topic_descriptions()
    # Each description names its topic first ("religion and god" -> religion).
    topic_of_candidate = [c.split()[0] for c in candidates]
    if sorted(topic_of_candidate) != sorted(TOPICS):
        raise ValueError(f"the target descriptions {candidates} do not name the topics {TOPICS} one each")
    model, tokenizer = load_smollm()
    minilm, minilm_tokenizer = load_topic_judge()

    start = time.perf_counter()
    sets = {"heldout_corpus": heldout_texts(args.words)}
    sets["smollm2_written"] = smollm_texts(model, tokenizer, args.subjects_per_topic, args.max_new_tokens, args.words)
    report = {"candidates": candidates, "generation_seconds": round(time.perf_counter() - start, 1), "sets": {}}
    for name, rows in sets.items():
        texts = [t for t, _ in rows]
        labels = torch.tensor([topic_of_candidate.index(topic) for _, topic in rows])
        start = time.perf_counter()
        loglik = topic_log_likelihoods(model, tokenizer, texts, candidates)
        lm_seconds = time.perf_counter() - start
        prior = topic_log_likelihoods(model, tokenizer, [CONTENT_FREE_TEXT], candidates)
        report["sets"][name] = {
            "texts": len(texts),
            "texts_per_topic": {t: int((labels == i).sum()) for i, t in enumerate(topic_of_candidate)},
            "lm_judge": scores((loglik - prior).softmax(dim=1), labels, topic_of_candidate),
            "lm_judge_uncalibrated": scores(loglik.softmax(dim=1), labels, topic_of_candidate),
            "minilm_judge": scores(
                minilm_probabilities(minilm, minilm_tokenizer, texts, candidates), labels, topic_of_candidate
            ),
            "lm_judge_seconds": round(lm_seconds, 1),
        }
        if name == "smollm2_written":
            report["sets"][name]["examples"] = [{"topic": t, "text": x} for x, t in rows[:: args.subjects_per_topic]]
    print(json.dumps(report, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
