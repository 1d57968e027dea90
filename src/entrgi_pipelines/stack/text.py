"""Readable text from the embedded dLLM's decoded responses: the spacing that WordPiece decoding leaves, cleaned up.

The embedded stack's tokenizer (MiniLM's uncased WordPiece) splits every punctuation mark into its own token, and its
decoder glues only `,` `.` `!` `?` back to the previous word, so a decoded response reads "i ' m happy", "it ' s",
"well - known", `" hi "` or "3. 5". [`readable_text`] joins those pieces for display. It only moves spaces (and drops
a punctuation mark repeated at once, "day,, sunny" -> "day, sunny"); it never changes a word. Rewards and judge
scores are computed on the pipeline's own decoded text, before this clean-up, so showing the readable text changes
no number.

Example:
    ```py
    >>> from entrgi_pipelines.stack.text import readable_text
    >>> readable_text("i ' m happy, it ' s a warm day,, sunny. don ' t go")
    "i'm happy, it's a warm day, sunny. don't go"
    >>> readable_text('a well - known " quiet " place ( near the sea ) : 3. 5 miles')
    'a well-known "quiet" place (near the sea): 3.5 miles'
    ```
"""

from __future__ import annotations

import re

# "i ' m", "don ' t", "we ' ll": an apostrophe between a word and one of the English clitics.
_CLITIC = re.compile(r"(\w) ' (m|s|t|d|ll|ve|re)\b")
# "friends ' house": a plural possessive (an apostrophe after an s-word, before a word).
_PLURAL_POSSESSIVE = re.compile(r"(\ws) '(?= \w)")
# "day,, sunny", "day , , sunny" (after the space before `,` is gone): one mark, not two.
_REPEATED = re.compile(r"([,;:!?])(?:\s*\1)+")
# "well - known", "e - mail": a hyphen between two words.
_HYPHEN = re.compile(r"(\w) - (?=\w)")
# "3. 5", "1, 000": a decimal point or a thousands separator between digits.
_NUMBER = re.compile(r"(\d)([.,]) (?=\d)")
_SPACE_BEFORE = re.compile(r" +([,.;:!?%)\]}])")
_SPACE_AFTER = re.compile(r"([(\[{$]) +")
_SPACES = re.compile(r"\s+")
_QUOTE = re.compile(r' ?" ?')


def _pair_quotes(text: str) -> str:
    """`"` marks alternate opening and closing: no space inside the pair, one space outside it."""
    pieces = _QUOTE.split(text)
    if len(pieces) % 2 == 0:  # an odd number of quotes: which one is unpaired is unknown, leave them
        return text
    out = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        if i % 2 == 0:  # opening: a space before it unless it starts the text
            out += (" " if out else "") + '"' + piece
        else:  # closing: a space after it unless punctuation or the end follows
            out += '"' + ("" if not piece or piece[0] in ",.;:!?)" else " ") + piece
    return out


def readable_text(text: str) -> str:
    """`text` (a decoded response) with WordPiece spacing artefacts removed, for display. See the module docstring."""
    text = _SPACES.sub(" ", text).strip()
    text = _CLITIC.sub(r"\1'\2", text)
    text = _PLURAL_POSSESSIVE.sub(r"\1'", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER.sub(r"\1", text)
    text = _REPEATED.sub(r"\1", text)
    text = _HYPHEN.sub(r"\1-", text)
    text = _NUMBER.sub(r"\1\2", text)
    return _pair_quotes(text)
