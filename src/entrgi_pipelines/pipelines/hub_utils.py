"""Hub loading support for saved pipelines: the repo layout that loads by repo id, and a local Hub cache.

diffusers keeps such plumbing beside its pipelines (`diffusers.pipelines.pipeline_utils`); this module sits in
the same room as the pipelines and imports nothing above them, so any saved pipeline can use it. The export of
this project's own embedded stack (three repos with model cards) is in [`entrgi_pipelines.stack.export`].

**Repo layout of a saved pipeline.** diffusers records a pipeline's class in `model_index.json` as `_class_name`; a
bare class name is looked up in the `diffusers` package itself, which is why `DiffusionPipeline.from_pretrained` of
a plain `save_pretrained` folder failed with `module diffusers has no attribute EntRGiPipeline`. diffusers' own
format for a class that lives elsewhere is `[module, class]` with `module.py` in the repo, loaded only with
`trust_remote_code=True`; components from outside diffusers and transformers likewise as `[module, class]` with
`<component>/module.py`. [`HubPipelineMixin`] makes `save_pretrained` (and so `push_to_hub`) write that layout:

- `pipeline_entrgi.py` at the root and `scheduler/scheduling_masked_diffusion.py`: one-line shims that import the
  classes from the installed `entrgi_pipelines` package (`pip install entrgi-pipelines`); no code of ours is copied;
- a dLLM (or tokenizer) that is itself remote code (Dream, LLaDA: loaded with `trust_remote_code=True`) is
  recorded as `[modeling_file, class]` with its modeling files in `model/`, where diffusers finds them.
- a tokenizer that transformers 5 saves as `TokenizersBackend` is recorded as `PreTrainedTokenizerFast`, its extra
  special tokens under `additional_special_tokens`: names both transformers 4 and 5 read, so a repo saved on 5
  loads on the transformers 4 releases the package supports.

`EntRGiPipeline.from_pretrained(repo)` never runs the shims: the class asked for is the installed one, so it reads
those entries back as the installed classes (no `trust_remote_code` needed unless the dLLM is remote code).
`DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` runs them and returns an `EntRGiPipeline`;
without `trust_remote_code=True` no file of the repo is executed and diffusers' error says to pass it.

**A local Hub cache.** [`add_to_hub_cache`] lays a folder out as a download from the Hub would (`refs/<branch>`,
`snapshots/<commit>/`, blobs and the tree listing), so that a saved or exported repo can be loaded by repo id
offline before it is uploaded (and so that the tests do exactly that).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PIPELINE_MODULE = "pipeline_entrgi"
# Module prefixes of classes that transformers and diffusers load from a repo's own files (trust_remote_code=True).
REMOTE_CODE_PREFIXES = ("transformers_modules.", "diffusers_modules.")
# transformers 5 saves a tokenizer that is its `tokenizer.json` alone as `TokenizersBackend`, with its extra special
# tokens as a list under `extra_special_tokens`; transformers 4 (which the package still supports) knows the class
# as `PreTrainedTokenizerFast`, a name that 5 keeps as an alias, and the list as `additional_special_tokens`, a key
# that 5 still reads. A saved pipeline uses the names both understand.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
_SHIM_HEADER = '''"""Entry point of an EntRGi pipeline repo for diffusers' `trust_remote_code=True` loading.

The class comes from the installed package: `pip install entrgi-pipelines`.
"""

try:
    from {module} import {name}  # noqa: F401
except ImportError as error:
    raise ImportError("This repository needs the entrgi-pipelines package: pip install entrgi-pipelines") from error
'''


# --------------------------------------------------------------------------------------------------------------------
# Repo layout of a saved pipeline
# --------------------------------------------------------------------------------------------------------------------


def _package_module(cls: type) -> str:
    """Where a shim imports `cls` from: the package's public name when it has one, else the defining module."""
    import entrgi_pipelines

    return "entrgi_pipelines" if getattr(entrgi_pipelines, cls.__name__, None) is cls else cls.__module__


def _write_shim(path: Path, cls: type) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_SHIM_HEADER.format(module=_package_module(cls), name=cls.__name__), encoding="utf-8")


def _copy_remote_code(cls: type, folder: Path) -> str:
    """Copies the file defining a remote-code class (and the files it imports relatively) into `folder`."""
    from transformers.dynamic_module_utils import get_relative_import_files

    source = Path(inspect.getfile(cls))
    folder.mkdir(parents=True, exist_ok=True)
    for file in [source, *map(Path, get_relative_import_files(str(source)))]:
        if not (folder / file.name).exists() or (folder / file.name).read_bytes() != file.read_bytes():
            shutil.copyfile(file, folder / file.name)
    return source.stem


def write_portable_tokenizer_config(folder: str | os.PathLike) -> None:
    """Rewrites a saved tokenizer's `tokenizer_config.json` (if `folder` has one) with the class name and special
    tokens key that transformers 4 and 5 both read (see `PORTABLE_TOKENIZER_CLASSES`); the tokens are unchanged."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    portable = dict(config)
    if config.get("tokenizer_class") in PORTABLE_TOKENIZER_CLASSES:
        portable["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES[config["tokenizer_class"]]
    if isinstance(config.get("extra_special_tokens"), list):
        extra = portable.pop("extra_special_tokens")
        portable["additional_special_tokens"] = list(
            dict.fromkeys([*(config.get("additional_special_tokens") or []), *extra])
        )
    if portable != config:
        path.write_text(json.dumps(portable, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_repo_code(pipeline: Any, save_directory: str | os.PathLike) -> dict[str, list[str]]:
    """Writes the code files that let diffusers find a pipeline's classes from its repo; returns the new entries.

    The returned `model_index.json` entries are `[module, class]` pairs whose `module.py` this wrote: the pipeline
    class (`_class_name`) and each component whose class comes from `entrgi_pipelines` or from remote code; and a
    transformers tokenizer is recorded under the name that transformers 4 and 5 both load (its saved
    `tokenizer_config.json` too, [`write_portable_tokenizer_config`]).
    """
    folder = Path(save_directory)
    entries: dict[str, list[str]] = {}
    cls = type(pipeline)
    if cls.__module__ == "__main__":
        logger.warning(
            "%s is defined in __main__, so its repo cannot name a module to import it from; "
            "DiffusionPipeline.from_pretrained will not find it (%s.from_pretrained will).",
            cls.__name__,
            cls.__name__,
        )
    else:
        _write_shim(folder / f"{PIPELINE_MODULE}.py", cls)
        entries["_class_name"] = [PIPELINE_MODULE, cls.__name__]
    for name, value in pipeline.config.items():
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str)):
            continue
        component = getattr(pipeline, name, None)
        if component is None:
            continue
        component_cls = type(component)
        if component_cls.__module__.startswith("entrgi_pipelines."):
            module = component_cls.__module__.rsplit(".", 1)[-1]
            _write_shim(folder / name / f"{module}.py", component_cls)
            entries[name] = [module, component_cls.__name__]
        elif component_cls.__module__.startswith(REMOTE_CODE_PREFIXES):
            entries[name] = [_copy_remote_code(component_cls, folder / name), component_cls.__name__]
        elif value[0] == "transformers" and value[1] in PORTABLE_TOKENIZER_CLASSES:
            entries[name] = ["transformers", PORTABLE_TOKENIZER_CLASSES[value[1]]]
        if value[0] == "transformers":
            write_portable_tokenizer_config(folder / name)
    return entries


def _installed_module(module: str, class_name: str) -> str | None:
    """The installed module of an `entrgi_pipelines` class that a repo names through its shim, or None."""
    import entrgi_pipelines

    cls = getattr(entrgi_pipelines, class_name, None)
    if isinstance(cls, type) and cls.__module__.rsplit(".", 1)[-1] == module:
        return cls.__module__
    return None


class HubPipelineMixin:
    """Saves a pipeline in the repo layout described in this module and loads it back without running repo code.

    Mixed into [`EntRGiPipeline`] ahead of `DiffusionPipeline`; it changes what `model_index.json` records and how
    the pipeline class reads it, nothing else.
    """

    _repo_entries: dict[str, list[str]] | None = None

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """Writes `model_index.json` and the code files it names (see [`write_repo_code`]).

        `DiffusionPipeline.save_pretrained` calls this after saving the components and before any upload, so
        `save_pretrained(..., push_to_hub=True)` and `push_to_hub` upload the same layout.
        """
        self._repo_entries = write_repo_code(self, save_directory)
        try:
            super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self._repo_entries = None

    def to_json_string(self) -> str:
        text = super().to_json_string()
        if not self._repo_entries:
            return text
        return json.dumps({**json.loads(text), **self._repo_entries}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike, **kwargs) -> dict[str, Any]:
        # Read by `download` and `load_config`: the pipeline class asked for is this one, so the repo's entry point
        # (`[pipeline_entrgi, EntRGiPipeline]`) is not needed and must not run. (`kwargs`: diffusers before
        # 0.41 pass `dduf_entries`.)
        config = super()._dict_from_json_file(json_file, **kwargs)
        class_name = config.get("_class_name")
        if isinstance(class_name, (list, tuple)) and len(class_name) == 2 and class_name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return config

    @classmethod
    def load_config(cls, *args, **kwargs):
        # Components that the repo names through a shim (`[scheduling_masked_diffusion, MaskedDiffusionScheduler]`)
        # load from the installed package. Done here rather than in `_dict_from_json_file`: `download` checks that
        # every non-diffusers component names a file of the repo, which the shim entry does.
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        for name, value in list(config.items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0]:
                installed = _installed_module(value[0], value[1])
                if installed is not None:
                    config[name] = [installed, value[1]]
        return loaded


# --------------------------------------------------------------------------------------------------------------------
# A local Hub cache
# --------------------------------------------------------------------------------------------------------------------


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_to_hub_cache(
    folder: str | os.PathLike,
    repo_id: str,
    cache_dir: str | os.PathLike | None = None,
    branch: str = "main",
    tree_listing: bool = True,
) -> str:
    """Lays `folder` out in a Hub cache as a download of `repo_id` would, and returns the commit hash it made up.

    Writes `models--org--name/blobs/<sha1>`, `snapshots/<commit>/<files>` (relative symlinks to the blobs, copies
    where links are not allowed), `refs/<branch>` holding the commit and, with `tree_listing=True`, the tree
    listing that huggingface_hub caches at download (`trees/<commit>.json`). With `HF_HUB_OFFLINE=1`, every
    `from_pretrained(repo_id)` (and `revision=<branch or commit>`) then reads it. The commit hash is a digest of
    the files, so the same folder always gives the same commit.

    Args:
        folder: the repo folder, e.g. one written by `entrgi export`.
        repo_id: `"org/name"`.
        cache_dir: the Hub cache (default: `HF_HUB_CACHE`, e.g. `~/.cache/huggingface/hub`).
        branch: the ref that points at the commit (another branch keeps `main` where it was).
        tree_listing: also write the tree listing (as huggingface_hub >= 1.x does after a download).

    Examples:
        ```py
        >>> import tempfile
        >>> from pathlib import Path
        >>> from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache

        >>> repo = Path(tempfile.mkdtemp())
        >>> _ = (repo / "config.json").write_text("{}")
        >>> cache = tempfile.mkdtemp()
        >>> commit = add_to_hub_cache(repo, "org/name", cache)
        >>> (Path(cache) / "models--org--name" / "refs" / "main").read_text() == commit
        True
        ```
    """
    from huggingface_hub import constants

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"`repo_id` must look like 'org/name', got {repo_id!r}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`folder` must be an existing folder, got {str(folder)!r}.")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts)
    if not files:
        raise ValueError(f"`folder` {str(folder)!r} holds no files.")
    storage = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    listing = {}
    for path in files:
        data = path.read_bytes()
        listing[path.relative_to(folder).as_posix()] = {"size": len(data), "blob_id": _git_blob_sha1(data)}
    commit = hashlib.sha1(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    for relative, entry in listing.items():
        blob = storage / "blobs" / entry["blob_id"]
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(folder / relative, blob)
        target = snapshot / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            target.symlink_to(os.path.relpath(blob, target.parent))
        except OSError:  # no symlinks (e.g. Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, target)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / branch).write_text(commit)
    if tree_listing:
        (storage / "trees").mkdir(exist_ok=True)
        (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    return commit


__all__ = [
    "PIPELINE_MODULE",
    "PORTABLE_TOKENIZER_CLASSES",
    "REMOTE_CODE_PREFIXES",
    "HubPipelineMixin",
    "add_to_hub_cache",
    "write_portable_tokenizer_config",
    "write_repo_code",
]
