"""Fluency metrics of the benchmark: perplexity under a bigram model of held-out corpus text, and distinct-n.

The bigram model is fitted on the held-out split of the Debian corpus (text the diffusion LM never trained on),
over MiniLM's WordPiece tokens, with interpolated Kneser-Ney smoothing (discount 0.75) and an add-one floor on the
continuation distribution so that every token of the 30522-token vocabulary has a probability.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

HELDOUT_FILE = Path(__file__).parent / "data" / "heldout.jsonl.gz"


class BigramLM:
    """Interpolated Kneser-Ney bigram model over token ids."""

    def __init__(self, sequences: Iterable[Sequence[int]], vocab_size: int, discount: float = 0.75, bos: int = -1):
        self.discount, self.vocab_size, self.bos = discount, vocab_size, bos
        bigrams: Counter = Counter()
        for seq in sequences:
            seq = [bos, *seq]
            bigrams.update(zip(seq[:-1], seq[1:]))
        self.bigrams = bigrams
        self.context_count: Counter = Counter()
        self.context_types: Counter = Counter()
        continuation: Counter = Counter()
        for (v, w), c in bigrams.items():
            self.context_count[v] += c
            self.context_types[v] += 1
            continuation[w] += 1
        self.continuation = continuation
        self.num_bigram_types = len(bigrams)

    def prob(self, prev: int, token: int) -> float:
        p_cont = (self.continuation[token] + 1) / (self.num_bigram_types + self.vocab_size)
        count = self.context_count[prev]
        if count == 0:
            return p_cont
        seen = max(self.bigrams[(prev, token)] - self.discount, 0.0) / count
        return seen + self.discount * self.context_types[prev] / count * p_cont

    def perplexity(self, tokens: Sequence[int]) -> float:
        """Per-token perplexity of one sequence (the first token is conditioned on the start symbol)."""
        if not tokens:
            return float("nan")
        seq = [self.bos, *tokens]
        nll = -sum(math.log(self.prob(v, w)) for v, w in zip(seq[:-1], seq[1:]))
        return math.exp(nll / len(tokens))


def distinct_n(tokens: Sequence, n: int = 2) -> float:
    """Unique n-grams over all n-grams of one sequence (1.0: no repetition; nan when shorter than n)."""
    grams = list(zip(*(tokens[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else float("nan")


def write_heldout(documents: list[dict], path: str | Path = HELDOUT_FILE) -> Path:
    """Ships the held-out documents' text (for the fluency model) as gzipped JSONL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for doc in documents:
            if doc["split"] == "heldout":
                f.write(json.dumps({"text": doc["text"], "source": doc["source"]}) + "\n")
    return path


def load_fluency_model(tokenizer, path: str | Path = HELDOUT_FILE) -> BigramLM:
    """The bigram model of the shipped held-out text, over `tokenizer`'s ids."""
    with gzip.open(path, "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return BigramLM(ids, vocab_size=len(tokenizer))
