"""Verified, atomically built cache folders for the embedded stack's models.

The stack materialises its models once (the dLLM from MiniLM and a shipped delta, SmolLM2 from a GGUF file, the
reward models and judge) and caches them as `from_pretrained` folders under ``$ENTRGI_CACHE``. [`cached_build`] makes
that safe:

- **Atomic**: a folder is built in a temporary sibling folder and renamed into place only when complete, so an
  interrupted build never leaves a half-written model under the cache name.
- **Concurrent**: builders of the same folder take an exclusive lock (``fcntl.flock`` on ``.<name>.lock`` next to
  it); the second process waits, then finds the first one's folder valid and uses it.
- **Verified**: every build writes ``entrgi_manifest.json`` (size and sha256 of each file). Each use checks that
  the files exist with their sizes (a few `stat` calls); the sha256 hashes are checked on the first use in a process
  and again whenever a file's size or modification time changes (about 0.2 s for the 90 MB dLLM and 1.4 s for the
  540 MB SmolLM2 folder on one CPU core). A folder that fails (a truncated or corrupted file, a missing or unexpected
  file, no manifest) is rebuilt with a warning saying why.

``ENTRGI_CACHE_VERIFY`` chooses when the hashes are checked: ``first`` (default: first use per process), ``always``
(every use) or ``size`` (never: sizes only).

Examples:
    ```py
    >>> import tempfile
    >>> from pathlib import Path
    >>> from entrgi_pipelines.stack.cache import cached_build, verify_folder

    >>> def build(folder: Path) -> None:
    ...     (folder / "weights.txt").write_text("1 2 3")

    >>> target = Path(tempfile.mkdtemp()) / "tiny"
    >>> folder = cached_build(target, build, description="a tiny stand-in")
    >>> (folder / "weights.txt").read_text(), verify_folder(folder)
    ('1 2 3', [])
    ```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the rename stays atomic and the loser keeps the winner's folder
    fcntl = None

logger = logging.getLogger(__name__)

MANIFEST_FILE = "entrgi_manifest.json"
MANIFEST_FORMAT = 1
VERIFY_MODES = ("first", "always", "size")
# Extensions of pickle-based checkpoints: the builders never write them and a cache folder holding one is refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# Folders whose hashes matched in this process, with the stat signature of their files at that moment.
_verified: dict[str, tuple] = {}


def cache_root() -> Path:
    """Where the stack's built folders live: `$ENTRGI_CACHE`, else `~/.cache/entrgi_pipelines`."""
    return Path(os.environ.get("ENTRGI_CACHE", Path.home() / ".cache" / "entrgi_pipelines"))


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files in `folder`, recursively, without hidden files and the manifest."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.startswith(".")
    )


def write_manifest(folder: str | Path) -> dict:
    """Writes `entrgi_manifest.json` with the size and sha256 of every file of `folder`; returns the manifest."""
    folder = Path(folder)
    files = {
        name: {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in _files(folder)
    }
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _read_manifest(folder: Path) -> tuple[dict | None, str | None]:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return None, f"it has no {MANIFEST_FILE} (built by an older version or interrupted)"
    except (OSError, ValueError) as error:
        return None, f"its {MANIFEST_FILE} is unreadable ({error})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or "files" not in manifest:
        return None, f"its {MANIFEST_FILE} is not a format-{MANIFEST_FORMAT} manifest"
    return manifest, None


def _signature(folder: Path, names) -> tuple:
    stats = [(folder / name).stat() for name in [MANIFEST_FILE, *names]]
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)


def verify_folder(folder: str | Path, hashes: bool = True) -> list[str]:
    """What is wrong with a cache folder, as readable problems (empty when it matches its manifest).

    Checks that every file of the manifest exists with its size, that no other (non-hidden) file is there, and no
    pickle checkpoint, and with `hashes=True` that every file has its sha256.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    manifest, problem = _read_manifest(folder)
    if problem:
        return [problem]
    expected = manifest["files"]
    present = set(_files(folder))
    problems = [f"{name} is missing" for name in sorted(set(expected) - present)]
    problems += [f"{name} is not in the manifest" for name in sorted(present - set(expected))]
    problems += [f"{name} is a pickle checkpoint" for name in sorted(present) if name.endswith(PICKLE_SUFFIXES)]
    for name in sorted(set(expected) & present):
        size = (folder / name).stat().st_size
        if size != expected[name]["size"]:
            problems.append(f"{name} has {size} bytes instead of {expected[name]['size']} (truncated or altered)")
        elif hashes and file_sha256(folder / name) != expected[name]["sha256"]:
            problems.append(f"{name} does not match its sha256 (corrupted)")
    return problems


def _verify_mode() -> str:
    mode = os.environ.get("ENTRGI_CACHE_VERIFY", "first").strip().lower() or "first"
    if mode not in VERIFY_MODES:
        raise ValueError(f"`ENTRGI_CACHE_VERIFY` must be one of {VERIFY_MODES}, got {mode!r}.")
    return mode


def check_folder(folder: Path) -> list[str]:
    """[`verify_folder`] with the hashes checked as `ENTRGI_CACHE_VERIFY` says (see the module docstring)."""
    mode = _verify_mode()
    key = str(folder.resolve())
    try:
        problems = verify_folder(folder, hashes=False)
        if problems or mode == "size":
            return problems
        signature = _signature(folder, list(_read_manifest(folder)[0]["files"]))
        if mode == "first" and _verified.get(key) == signature:
            return []
        problems = verify_folder(folder, hashes=True)
    except OSError as error:  # a file removed while it was checked: damage for now, checked again under the lock
        problems = [f"a file could not be read ({error})"]
    if problems:
        _verified.pop(key, None)
    else:
        _verified[key] = signature
    return problems


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """An exclusive inter-process lock for building `target` (a no-op without `fcntl`)."""
    if fcntl is None:
        yield
        return
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _install(tmp: Path, target: Path) -> None:
    """Renames the complete build `tmp` to `target`, moving a damaged `target` out of the way first."""
    trash = None
    if target.exists() or target.is_symlink():
        trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, trash)
    try:
        os.rename(tmp, target)
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def cached_build(target: str | Path, build: Callable[[Path], object], *, description: str | None = None) -> Path:
    """The folder `target`, built by `build(folder)` when it is missing or fails verification; returns `target`.

    `build` writes a complete folder into the empty folder it is given (a temporary sibling of `target`); a manifest
    is added and the folder renamed to `target`. See the module docstring for the locking and the checks.

    Args:
        target (`str` or `Path`): the cache folder.
        build (`Callable[[Path], object]`): writes the folder's files into the folder it is passed.
        description (`str`, *optional*): what is being built, for the log messages (defaults to the folder name).
    """
    target = Path(target)
    description = description or target.name
    problems = check_folder(target)
    if not problems:
        return target
    if target.exists() and not target.is_dir():
        raise ValueError(f"The cache path {target} is a file, not a folder: remove it or choose another cache folder.")
    # Never replace a folder that is not recognisably a model cache (a user's folder passed as `cache_dir`).
    if target.is_dir() and not (target / MANIFEST_FILE).exists() and not (target / "config.json").exists():
        if any(target.iterdir()):
            raise ValueError(
                f"The cache folder {target} exists and holds other files: pass a new or empty folder as `cache_dir`."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):
        # Another process may have built (or repaired) the folder while this one waited for the lock.
        problems = check_folder(target)
        if not problems:
            return target
        if target.exists():
            logger.warning(
                "The cached %s in %s is damaged: %s. Rebuilding it.", description, target, "; ".join(problems)
            )
        else:
            logger.info("Building the %s into %s (once).", description, target)
        if fcntl is not None:  # holding the lock: leftovers of killed builds of this folder can go
            for stale in target.parent.glob(f".{target.name}.building-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700), so a shared cache stays readable
        try:
            build(tmp)
            names = list(write_manifest(tmp)["files"])
            if fcntl is None and not check_folder(target):  # no lock: another process finished first, use its folder
                return target
            _install(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        problems = verify_folder(target, hashes=False)
        if problems:
            raise RuntimeError(f"The freshly built {description} in {target} fails verification: {'; '.join(problems)}")
        # The manifest's hashes were just computed from these files: no need to read them again in this process.
        _verified[str(target.resolve())] = _signature(target, names)
    return target
