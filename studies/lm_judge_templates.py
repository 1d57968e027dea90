"""Which wording makes SmolLM2-135M-Instruct a discriminating LM-judge reward? Measured on labelled corpus passages.

    PYTHONPATH=src python studies/lm_judge_templates.py --per-topic 4 --words 24 --output templates.json

Takes `--per-topic` held-out passages of every judge topic from the corpus (`corpus/documents.jsonl`, built by
`python -m entrgi_pipelines.stack.corpus`), cut to their first `--words` words (about the length of a response), and
scores every passage against every target description of the bundled prompts (religion and god, food and eating,
...) through the reward exactly as guidance computes it (`RewardTerm.reward_of_texts`). For each wording it reports:

- `row_accuracy`: the share of passages whose own topic's description scores highest, and the mean margin (own
  score minus the best other, nats);
- `column_auc`: for each description, the probability that an on-topic passage outscores an off-topic one, averaged
  over descriptions. This is what guidance relies on (it compares responses for one target).

Wordings: the likelihood of the description after "This text is about" (the response inside the user turn, question
first or text first), and the yes/no question "Is this text about {target}?" scored by log p(Yes) - log p(No).
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from entrgi_pipelines import bench
from entrgi_pipelines.guidance import CausalLMReward, RewardTemplate, RewardTerm
from entrgi_pipelines.stack.lm_reward import LM_JUDGE_TEMPLATE
from entrgi_pipelines.stack.smollm import load_smollm

ASSISTANT_ABOUT = {"role": "assistant", "content": "This text is about {target}"}
LIKELIHOOD = {
    "question_then_text": LM_JUDGE_TEMPLATE,
    "text_then_question": RewardTemplate(
        messages=[{"role": "user", "content": "Text: {response}\nWhat is this text about?"}, ASSISTANT_ABOUT],
        score="target",
    ),
    "summarise": RewardTemplate(
        messages=[
            {"role": "user", "content": "Summarise the topic of this text in a few words.\n\n{response}"},
            {"role": "assistant", "content": "The topic is {target}"},
        ],
        score="target",
    ),
}
# The answer goes in the {prompt} slot, scored; the target description sits in the question, before the response.
YES_NO = RewardTemplate(
    messages=[
        {"role": "user", "content": "Is this text about {target}? Answer yes or no.\nText: {response}"},
        {"role": "assistant", "content": "{prompt}"},
    ],
    score="prompt",
)


def passages(path: str, per_topic: int, words: int) -> list[tuple[str, str]]:
    """`(topic, text)` pairs: the first held-out documents of each topic in a fixed (hashed) order."""
    docs = [json.loads(line) for line in Path(path).read_text().splitlines()]
    docs = [d for d in docs if d.get("topic") and d.get("split") == "heldout"]
    docs.sort(key=lambda d: hashlib.sha256(d["text"].encode()).hexdigest())
    chosen: dict[str, list[str]] = {}
    for doc in docs:
        texts = chosen.setdefault(doc["topic"], [])
        if len(texts) < per_topic:
            texts.append(" ".join(doc["text"].split()[:words]))
    return [(topic, text) for topic in sorted(chosen) for text in chosen[topic]]


def score_matrix(model, tokenizer, template, texts, targets, answers=None, batch_size=40) -> torch.Tensor:
    """`(len(texts), len(targets))` rewards through `RewardTerm` (prefix cache on), in batches of rows."""
    term = RewardTerm(CausalLMReward(model, template), tokenizer)
    rows = [(text, target) for text in texts for target in targets]
    scores = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        term.prepare([target for _, target in batch], "cpu", [answers or "" for _ in batch])
        with torch.no_grad():
            scores.append(term.reward_of_texts([text for text, _ in batch]))
    return torch.cat(scores).reshape(len(texts), len(targets))


def metrics(scores: torch.Tensor, truth: torch.LongTensor) -> dict:
    own = scores.gather(1, truth[:, None])[:, 0]
    others = scores.scatter(1, truth[:, None], float("-inf")).amax(1)
    aucs = []
    for j in range(scores.shape[1]):
        on, off = scores[truth == j, j], scores[truth != j, j]
        if len(on) and len(off):
            aucs.append(float((on[:, None] > off[None, :]).float().mean()))
    return {
        "row_accuracy": float((own > others).float().mean()),
        "mean_margin": float((own - others).mean()),
        "column_auc": sum(aucs) / len(aucs),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--documents", default="corpus/documents.jsonl")
    parser.add_argument("--per-topic", type=int, default=4)
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm()
    targets = sorted({row["target"] for row in bench.read_prompts(None, None)})
    pairs = passages(args.documents, args.per_topic, args.words)
    topic_of_target = [target.split()[0] for target in targets]  # "religion and god" -> "religion"
    truth = torch.tensor([topic_of_target.index(topic) for topic, _ in pairs])
    texts = [text for _, text in pairs]
    results = {}
    for name, template in LIKELIHOOD.items():
        start = time.perf_counter()
        scores = score_matrix(model, tokenizer, template, texts, targets)
        results[name] = {**metrics(scores, truth), "seconds": time.perf_counter() - start}
        print(name, results[name], flush=True)
    start = time.perf_counter()
    yes = score_matrix(model, tokenizer, YES_NO, texts, targets, answers="Yes")
    no = score_matrix(model, tokenizer, YES_NO, texts, targets, answers="No")
    results["yes_no"] = {**metrics(yes - no, truth), "seconds": time.perf_counter() - start}
    print("yes_no", results["yes_no"], flush=True)
    figures = {"n_texts": len(texts), "targets": targets, "results": results, "config": vars(args)}
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
