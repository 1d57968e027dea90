"""Atomic result files and resumable benchmark runs (`entrgi-bench --output F --resume`).

A run writes its output after every batch, atomically (a temporary file in the same folder, then `os.replace`), so
a killed run leaves either the previous complete file or a newer one, never a truncated JSON; while the run is
unfinished the file says `"partial": true`. `--resume` keeps the records already there (keyed by method, seed,
prompt and target) and skips the work they cover (`bench.run` says in which units, so that the records a resumed
run adds are those an uninterrupted run would have written).

A resumed run may also *extend* the saved one: more prompts (`--num-prompts`), seeds or methods, the rest of the
settings unchanged. Every batch draws from its own generator, seeded by the seed and the batch's first prompt, so
the saved batches are those a run of the larger settings would write and only the new ones are run (a saved last
batch that the larger run fills up is run again, whole).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Settings that change no record: a run may be resumed with different ones.
RESUMABLE_DIFFERENCES = ("output", "markdown", "resume", "threads")
# Settings a resumed run may enlarge (more prompts, seeds, methods), never shrink: saved records are never dropped.
EXTENSIBLE = ("num_prompts", "seeds", "methods")
# The permissions a plainly written file gets (a temporary file is created private).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Writes `text` to `path` so that readers see the old content or the new, never a part of it."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1))


def record_key(record: dict) -> tuple:
    return (record["method"], record["seed"], record["prompt"], record["target"])


class BenchCheckpoint:
    """
    The records of a benchmark run, saved after every batch, and what a resumed run can skip.

    Args:
        path (`str`, *optional*): the output file (nothing is written without one).
        config (`dict`): the run's settings; a resumed file must have the same ones (except
            `RESUMABLE_DIFFERENCES`).
        resume (`bool`): keep the records of an existing `path` instead of starting over.

    Raises `ValueError` (naming the file and the fix) for a file that cannot be resumed.
    """

    def __init__(self, path: str | None, config: dict, resume: bool = False):
        self.path, self.config = path, config
        self.done: dict[tuple, dict] = {}
        if resume and path is None:
            raise ValueError("--resume needs --output: the file whose records to keep.")
        if not (resume and Path(path).exists()):
            return
        try:
            saved = json.loads(Path(path).read_text())
            records, saved_config = saved["records"], saved["config"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"--resume: {path} is not an entrgi-bench output file ({error}); remove it or drop --resume."
            ) from None
        differing = sorted(
            k
            for k in set(config) | set(saved_config)
            if k not in RESUMABLE_DIFFERENCES + EXTENSIBLE and config.get(k) != saved_config.get(k)
        )
        if differing:
            raise ValueError(
                f"--resume: {path} was written with different settings ({', '.join(differing)}); "
                "resume with the same settings, or write to another --output."
            )
        shrunk = [f"{k}={saved_config.get(k)}" for k in EXTENSIBLE if not _covers(config.get(k), saved_config.get(k))]
        if shrunk:
            raise ValueError(
                f"--resume: {path} holds more than this run covers ({', '.join(shrunk)}); a resumed run may add "
                "prompts, seeds or methods but not leave saved ones out (its output replaces the file): include "
                "them, or write to another --output."
            )
        self.done = {record_key(r): r for r in records}

    def finished(self, keys: Iterable[tuple]) -> list[dict] | None:
        """The saved records of a batch when all of them are saved, else None."""
        found = [self.done.get(key) for key in keys]
        return None if any(r is None for r in found) else found

    def save(self, result: dict) -> None:
        """Writes the run so far (marked partial) after a batch."""
        if self.path is not None:
            write_json_atomic(self.path, {**result, "partial": True})


def _covers(value, saved) -> bool:
    """Whether a setting of the resumed run includes the saved one (a count at least as large, or a superset)."""
    if isinstance(saved, list):
        return isinstance(value, list) and set(saved) <= set(value)
    if value is None or saved is None:  # num_prompts None: the whole prompt file
        return value is None
    return value >= saved
