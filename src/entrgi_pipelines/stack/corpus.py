"""Real English text for the embedded stack, from Debian's text packages.

Sources (all fetched with ``apt-get download`` and unpacked with ``dpkg -x``; no root install):

- ``bible-kjv-text`` + ``bible-kjv`` (the King James Bible and the program that decodes its data file;
  the text is in the public domain, the program's licence is "unrestricted use"),
- ``fortunes`` and ``fortunes-min`` (BSD fortune cookie files; BSD licence, individual quotes as credited),
- ``wordnet-base`` (WordNet 3.0 example sentences; the WordNet licence, permissive with attribution).

Every document gets a ``source`` and, where the corpus labels it, a ``topic`` that the held-out judge is
trained on. The held-out split is decided by a hash of the text, so it is the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("bible-kjv-text", "bible-kjv", "fortunes", "fortunes-min", "wordnet-base")

# Fortune files grouped into the topics the judge learns; the Bible is the "religion" topic.
TOPIC_FILES = {
    "computers": ("computers", "linux", "perl"),
    "food": ("food",),
    "love": ("love", "men-women"),
    "politics": ("politics", "law"),
    "science": ("science",),
    "work": ("work",),
    "education": ("education",),
    "medicine": ("medicine", "drugs"),
    "sports": ("sports",),
}
UNTOPICAL_FILES = (
    "art",
    "cookie",
    "definitions",
    "fortunes",
    "humorists",
    "kids",
    "literature",
    "miscellaneous",
    "people",
    "platitudes",
    "riddles",
    "songs-poems",
    "wisdom",
    "zippy",
    "tao",
    "startrek",
)
TOPICS = ("religion",) + tuple(TOPIC_FILES)

_WS = re.compile(r"\s+")
_ATTRIBUTION = re.compile(r"\s--\s.*$")


def fetch_corpus(dest: str | Path) -> Path:
    """Download and unpack the Debian text packages into ``dest`` and decode the Bible to plain text.

    Returns the folder holding ``kjv.txt``, ``fortunes/`` and ``wordnet/``.
    """
    dest = Path(dest).resolve()
    if (dest / "kjv.txt").exists() and (dest / "fortunes").is_dir() and (dest / "wordnet").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True, capture_output=True)
        root = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        kjv = subprocess.run(
            [str(root / "usr/bin/bible"), "-f", "-p", str(root / "usr/lib"), "gen1:1-rev22:21"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (dest / "kjv.txt").write_text(kjv)
        (dest / "fortunes").mkdir(exist_ok=True)
        for name in UNTOPICAL_FILES + sum(TOPIC_FILES.values(), ()):
            src = root / "usr/share/games/fortunes" / name
            (dest / "fortunes" / name).write_bytes(src.read_bytes())
        (dest / "wordnet").mkdir(exist_ok=True)
        for pos in ("noun", "verb", "adj", "adv"):
            src = root / "usr/share/wordnet" / f"data.{pos}"
            (dest / "wordnet" / f"data.{pos}").write_bytes(src.read_bytes())
    return dest


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _kjv_documents(path: Path, verses_per_doc: int = 4) -> Iterator[dict]:
    chapter, verses = None, []
    for line in path.read_text().splitlines():
        ref, _, verse = line.partition(" ")
        if not verse:
            continue
        this_chapter = ref.split(":")[0]
        if this_chapter != chapter and verses:
            yield from _chunks(verses, verses_per_doc)
            verses = []
        chapter = this_chapter
        verses.append(_clean(verse))
    yield from _chunks(verses, verses_per_doc)


def _chunks(verses: list[str], size: int) -> Iterator[dict]:
    for i in range(0, len(verses), size):
        yield {"text": " ".join(verses[i : i + size]), "source": "kjv", "topic": "religion"}


def _fortune_documents(folder: Path) -> Iterator[dict]:
    topic_of = {name: topic for topic, names in TOPIC_FILES.items() for name in names}
    for name in UNTOPICAL_FILES + tuple(topic_of):
        raw = (folder / name).read_text(encoding="latin-1")
        for entry in raw.split("\n%\n"):
            # Fortunes that rely on layout (ASCII art, dialogue tables) do not survive whitespace folding.
            if entry.count("\t") > 3 or "|" in entry or "___" in entry:
                continue
            text = _clean(_ATTRIBUTION.sub("", _clean(entry)))
            if 3 <= len(text.split()) <= 120:
                yield {"text": text, "source": f"fortunes/{name}", "topic": topic_of.get(name)}


def _wordnet_documents(folder: Path) -> Iterator[dict]:
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue  # licence header
            gloss = line.partition(" | ")[2]
            for example in re.findall(r'"([^"]{12,})"', gloss):
                yield {"text": _clean(example), "source": f"wordnet/{pos}", "topic": None}


def is_held_out(text: str, fraction: float = 0.03) -> bool:
    """Deterministic split: a document is held out when its hash falls in the first ``fraction``."""
    digest = hashlib.sha1(text.encode()).digest()
    return int.from_bytes(digest[:4], "big") < fraction * 2**32


def load_documents(corpus_dir: str | Path) -> list[dict]:
    """All documents of the corpus folder made by :func:`fetch_corpus`, each with its split."""
    corpus_dir = Path(corpus_dir)
    docs = [
        *_kjv_documents(corpus_dir / "kjv.txt"),
        *_fortune_documents(corpus_dir / "fortunes"),
        *_wordnet_documents(corpus_dir / "wordnet"),
    ]
    for doc in docs:
        doc["split"] = "heldout" if is_held_out(doc["text"]) else "train"
    return docs


def write_jsonl(docs: list[dict], path: str | Path) -> None:
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Fetch the Debian text corpus and write it as JSONL.", allow_abbrev=False
    )
    parser.add_argument("--dest", default="corpus", help="folder for the unpacked text")
    parser.add_argument("--output", default=None, help="JSONL path (default: DEST/documents.jsonl)")
    args = parser.parse_args()
    folder = fetch_corpus(args.dest)
    documents = load_documents(folder)
    write_jsonl(documents, args.output or folder / "documents.jsonl")
    by_source: dict[str, int] = {}
    for d in documents:
        key = d["source"].split("/")[0] + ("/heldout" if d["split"] == "heldout" else "")
        by_source[key] = by_source.get(key, 0) + 1
    print(json.dumps(by_source))
