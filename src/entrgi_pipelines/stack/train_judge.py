"""Train the held-out judge's topic head: a linear classifier on frozen all-MiniLM-L6-v2 sentence embeddings.

Documents with a topic (the corpus's ``TOPICS``) are embedded the sentence-transformers way (``[CLS] text [SEP]``,
mean pooling, L2 normalisation; what :class:`~entrgi_pipelines.stack.reward_models.MiniLMPairRewardModel`
computes per segment); each class is capped at ``--cap`` training documents (the Bible alone has thousands) and
the cross-entropy is weighted by inverse class frequency so that the small classes count as much. The head
trains full-batch with Adam and weight decay.

The judge also classifies the *target description* (``argmax`` of the head on segment A), a short phrase rather
than a document. All "religion" documents are King James verses, so without help a modern phrase such as
"religion and god" lands in another class; each topic's name is therefore added as a training example
(``--name-copies`` times). Accuracy is reported on the training documents, on the held-out ones
(``split == "heldout"``, overall and per class) and on the short descriptions of ``DESCRIPTIONS`` (never trained on).

Writes ``head.safetensors`` (``weight``, ``bias``, float32) and ``judge.json`` (topics and accuracies)::

    python -m entrgi_pipelines.stack.train_judge --documents corpus/documents.jsonl \\
        --output src/entrgi_pipelines/stack/weights/judge
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .corpus import TOPICS, read_jsonl
from .minilm import load_minilm_tokenizer
from .reward_models import JUDGE_HEAD_FILE, JUDGE_INFO_FILE, load_minilm_encoder

# Target descriptions the head should recognise; only used to measure it.
DESCRIPTIONS = {
    "religion": ("religion and god", "faith and prayer", "the bible", "god", "church and heaven", "the lord"),
    "computers": ("computers and programming", "software bugs", "linux", "a computer program"),
    "food": ("food and cooking", "eating dinner", "a recipe", "food"),
    "love": ("love and romance", "men and women", "marriage", "love"),
    "politics": ("politics and government", "elections", "the law", "politicians"),
    "science": ("science", "physics and chemistry", "scientists and experiments", "mathematics"),
    "work": ("work and jobs", "the office", "my boss", "working"),
    "education": ("education and school", "teachers", "university students", "learning"),
    "medicine": ("medicine and doctors", "drugs", "hospital", "illness"),
    "sports": ("sports", "football and baseball", "the game", "athletes"),
}


@torch.no_grad()
def embed_texts(texts: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """L2-normalised mean-pooled MiniLM embeddings ``(len(texts), 384)``."""
    tokenizer = load_minilm_tokenizer()
    encoder = load_minilm_encoder()
    # Batches of similar lengths waste little compute on padding.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        hidden = encoder(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out[rows] = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    return out


def select_documents(docs: list[dict], cap: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Topic-labelled training documents (at most ``cap`` per topic, drawn with ``seed``) and held-out ones."""
    rng = random.Random(seed)
    train, heldout = [], []
    for topic in TOPICS:
        in_topic = [d for d in docs if d.get("topic") == topic]
        train_docs = [d for d in in_topic if d["split"] == "train"]
        train += rng.sample(train_docs, min(cap, len(train_docs)))
        heldout += [d for d in in_topic if d["split"] == "heldout"]
    return train, heldout


def train_head(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 500, lr: float = 0.05, weight_decay: float = 1e-4
) -> torch.nn.Linear:
    """Full-batch Adam on a class-balanced cross-entropy with L2 weight decay."""
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_classes)
    counts = torch.bincount(y, minlength=num_classes).float()
    class_weights = counts.sum() / (num_classes * counts.clamp(min=1))
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y, weight=class_weights) + weight_decay * head.weight.square().sum()
        loss.backward()
        optimizer.step()
    return head.eval()


def accuracy(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Overall accuracy and accuracy per topic (topics without documents are left out)."""
    with torch.no_grad():
        correct = head(x).argmax(-1) == y
    per_class = {t: correct[y == c].float().mean().item() for c, t in enumerate(TOPICS) if (y == c).any()}
    return correct.float().mean().item(), per_class


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--documents", required=True, help="documents.jsonl written by entrgi_pipelines.stack.corpus")
    parser.add_argument("--output", required=True, help="folder for head.safetensors and judge.json")
    parser.add_argument("--cap", type=int, default=600, help="most training documents per topic")
    parser.add_argument("--name-copies", type=int, default=20, help="copies of each topic name in the training set")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train, heldout = select_documents(read_jsonl(args.documents), args.cap)
    start = time.time()
    descriptions = [(text, topic) for topic in TOPICS for text in DESCRIPTIONS[topic]]
    texts = [d["text"] for d in train + heldout] + list(TOPICS) + [text for text, _ in descriptions]
    x = embed_texts(texts)
    print(f"embedded {len(x)} texts in {time.time() - start:.0f}s")
    label = {t: i for i, t in enumerate(TOPICS)}
    y = torch.tensor([label[d["topic"]] for d in train + heldout] + list(range(len(TOPICS))))
    y = torch.cat([y, torch.tensor([label[topic] for _, topic in descriptions])])
    x_train, x_held, x_names, x_desc = x.split([len(train), len(heldout), len(TOPICS), len(descriptions)])
    y_train, y_held, y_names, y_desc = y.split([len(train), len(heldout), len(TOPICS), len(descriptions)])

    head = train_head(
        torch.cat([x_train, x_names.repeat(args.name_copies, 1)]),
        torch.cat([y_train, y_names.repeat(args.name_copies)]),
        len(TOPICS),
        steps=args.steps,
        weight_decay=args.weight_decay,
    )
    train_acc, _ = accuracy(head, x_train, y_train)
    held_acc, held_per_class = accuracy(head, x_held, y_held)
    desc_acc, _ = accuracy(head, x_desc, y_desc)
    info = {
        "topics": list(TOPICS),
        "train_documents": {t: int((y_train == i).sum()) for i, t in enumerate(TOPICS)},
        "heldout_documents": {t: int((y_held == i).sum()) for i, t in enumerate(TOPICS)},
        "train_accuracy": round(train_acc, 4),
        "heldout_accuracy": round(held_acc, 4),
        # The held-out split is mostly Bible; the class mean weighs every topic the same.
        "heldout_balanced_accuracy": round(sum(held_per_class.values()) / len(held_per_class), 4),
        "heldout_accuracy_per_topic": {t: round(a, 4) for t, a in held_per_class.items()},
        "description_accuracy": round(desc_acc, 4),
        "cap": args.cap,
        "name_copies": args.name_copies,
        "steps": args.steps,
        "weight_decay": args.weight_decay,
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(output / JUDGE_HEAD_FILE))
    (output / JUDGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
