"""Hugging Face Hub: saved pipelines that load by repo id, the embedded stack as Hub repos, and a local Hub cache.

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

`EntRGiPipeline.from_pretrained(repo)` never runs the shims: the class asked for is the installed one, so it reads
those entries back as the installed classes (no `trust_remote_code` needed unless the dLLM is remote code).
`DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)` runs them and returns an `EntRGiPipeline`;
without `trust_remote_code=True` no file of the repo is executed and diffusers' error says to pass it.

**The embedded stack as Hub repos.** [`export_embedded_stack`] (`entrgi export DIR`) writes `DIR/pipeline`,
`DIR/reward` and `DIR/judge`, safetensors only, each with a model card. The reward and judge repos carry
`modeling_minilm_pair.py` (self-contained: torch and transformers only) and an `auto_map` in `config.json`, so they
load with `AutoModelForSequenceClassification.from_pretrained(repo)` after `import entrgi_pipelines`, or with
`trust_remote_code=True` without this package.

**A local Hub cache.** [`add_to_hub_cache`] lays a folder out as a download from the Hub would (`refs/<branch>`,
`snapshots/<commit>/`, blobs and the tree listing), so that an exported repo can be loaded by repo id offline before
it is uploaded (and so that the tests do exactly that).
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
MINILM_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Module prefixes of classes that transformers and diffusers load from a repo's own files (trust_remote_code=True).
REMOTE_CODE_PREFIXES = ("transformers_modules.", "diffusers_modules.")
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


def write_repo_code(pipeline: Any, save_directory: str | os.PathLike) -> dict[str, list[str]]:
    """Writes the code files that let diffusers find a pipeline's classes from its repo; returns the new entries.

    The returned `model_index.json` entries are `[module, class]` pairs whose `module.py` this wrote: the pipeline
    class (`_class_name`) and each component whose class comes from `entrgi_pipelines` or from remote code.
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
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        # Read by `download` and `load_config`: the pipeline class asked for is this one, so the repo's entry point
        # (`[pipeline_entrgi, EntRGiPipeline]`) is not needed and must not run.
        config = super()._dict_from_json_file(json_file)
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
        >>> from entrgi_pipelines.hub import add_to_hub_cache

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


# --------------------------------------------------------------------------------------------------------------------
# The embedded stack as Hub repos
# --------------------------------------------------------------------------------------------------------------------


def embedded_repo_ids(namespace: str = "entrgi") -> dict[str, str]:
    """The repo ids that [`export_embedded_stack`] writes into the model cards, by folder name."""
    if not isinstance(namespace, str) or not namespace or "/" in namespace:
        raise ValueError(f"`namespace` must be a Hub user or organisation name (no '/'), got {namespace!r}.")
    return {kind: f"{namespace}/entrgi-embedded-{kind}" for kind in ("pipeline", "reward", "judge")}


def _card(data: dict[str, Any], body: str):
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(language="en", license="apache-2.0", base_model=MINILM_BASE_MODEL, **data)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


_INSTALL = "pip install entrgi-pipelines"

_PIPELINE_CARD = """
# EntRGi embedded diffusion LM (pipeline)

A small masked diffusion language model for [EntRGi](https://arxiv.org/abs/2602.05000) (entropy-aware reward
guidance), as an `entrgi-pipelines` `EntRGiPipeline`: a BERT masked LM of 22.7 M parameters initialised from
all-MiniLM-L6-v2 and trained with the MDLM objective (version {dllm_version}) {dllm_training}. It is the default
model of `entrgi-pipelines`' offline stack; its companions are the guidance reward [`{reward}`](/{reward}) and the
held-out judge [`{judge}`](/{judge}).

Files: `model/` (the dLLM, safetensors), `tokenizer/`, `scheduler/` (`MaskedDiffusionScheduler`) and
`model_index.json`; `pipeline_entrgi.py` and `scheduler/scheduling_masked_diffusion.py` only import the classes
from the installed package.

## Usage

`{install}`, then:

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from entrgi_pipelines import EntRGiPipeline

pipe = EntRGiPipeline.from_pretrained("{pipeline}")
reward_model = AutoModelForSequenceClassification.from_pretrained("{reward}")
reward_tokenizer = AutoTokenizer.from_pretrained("{reward}")
out = pipe(
    "and he said unto them",
    reward_model=reward_model,
    reward_tokenizer=reward_tokenizer,
    reward_prompt="food and eating",  # what the reward asks the response to be about
    guidance="entrgi",
    num_inference_steps=16,
    gen_length=16,
    num_samples_per_prompt=2,
    guidance_steps=1,
    generator=torch.Generator().manual_seed(0),
)
print(out.texts[0], out.rewards[0].tolist())
```

diffusers' generic loader finds the class from this repo; it runs the repo's `pipeline_entrgi.py`, so it needs
`trust_remote_code=True` (and the package installed):

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{pipeline}", trust_remote_code=True)
print(type(pipe).__name__)  # EntRGiPipeline
```

## Limitations

A small model trained on a CPU budget: it writes short, loosely fluent English, often in the style of the King
James Bible, and does not follow instructions reliably. It is meant for trying the method and its baselines
offline, not for use as an assistant.
"""

_PAIR_CARD = """
# EntRGi embedded {title}

{summary} It reads a (target, response) pair as `tokenizer(target, response)` and embeds each side on its own
with all-MiniLM-L6-v2 (mean pooling, L2 normalised); the forward pass also takes `inputs_embeds`, differentiably,
for gradient-based reward guidance. Used by `entrgi-pipelines`' offline stack with the diffusion LM
[`{pipeline}`](/{pipeline}).

The model class is `MiniLMPairRewardModel` (model type `entrgi_minilm_pair`), defined in this repo's
`modeling_minilm_pair.py` (torch and transformers only) and in `entrgi-pipelines`.

## Usage

With `{install}` (importing the package registers the model type):

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import entrgi_pipelines  # noqa: F401  (registers the model type with the Auto classes)

model = AutoModelForSequenceClassification.from_pretrained("{repo}")
tokenizer = AutoTokenizer.from_pretrained("{repo}")
inputs = tokenizer(["food and eating"], ["and they did eat bread and drink wine"], return_tensors="pt")
with torch.no_grad():
    print(model(**inputs).logits[:, 0].tolist())  # {meaning}
```

Without the package, the repo's own modeling file (remote code) does the same:

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)  # it reads the config too
inputs = tokenizer(["food and eating"], ["and they did eat bread and drink wine"], return_tensors="pt")
with torch.no_grad():
    print(model(**inputs).logits[:, 0].tolist())
```
{details}"""

_CORPUS = "English text from Debian packages (the King James Bible, fortune cookies, WordNet example sentences)"
_DLLM_TRAINING = {
    "v1": f"on {_CORPUS}",
    "v2": f"on {_CORPUS}, then continued on prompt -> response pairs written by SmolLM2-135M-Instruct, mixed "
    "with that text",
}
_REWARD = dict(
    title="similarity reward",
    summary="The guidance reward of the EntRGi offline stack: the cosine similarity of the sentence embeddings of a "
    "target description and a response, in [-1, 1].",
    meaning="cosine similarity of the target's and the response's embeddings",
    details="",
)
_JUDGE = dict(
    title="topic judge",
    summary="The held-out judge of the EntRGi offline stack (never used for guidance): a linear topic classifier "
    "on the sentence embeddings; its score is the probability that the response is on the target's topic.",
    meaning="probability that the response is on the target's topic",
    details="\n## Topics\n\nThe head was trained on topics labelled in the training corpus: {topics}.\n",
)


def save_reward_repo(model, tokenizer, folder: str | os.PathLike) -> None:
    """Saves a MiniLM pair reward model (reward or judge) as a Hub repo folder that also loads as remote code.

    Besides `save_pretrained` of the model and tokenizer, copies the self-contained `modeling_minilm_pair.py` into
    the folder and names it in `config.json`'s `auto_map`, so that `AutoModelForSequenceClassification
    .from_pretrained(repo, trust_remote_code=True)` loads it without `entrgi_pipelines`.
    """
    from .stack import modeling_minilm_pair

    if not isinstance(model, modeling_minilm_pair.MiniLMPairRewardModel):
        raise TypeError(f"`model` must be a MiniLMPairRewardModel (the stack's reward or judge), got {type(model)}.")
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    module = Path(modeling_minilm_pair.__file__)
    shutil.copyfile(module, folder / module.name)
    # `auto_map` names the repo's own copy of the classes (written into the file, the model's config is untouched).
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": f"{module.stem}.{type(model.config).__name__}",
        "AutoModelForSequenceClassification": f"{module.stem}.{type(model).__name__}",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_safetensors_only(folder: str | os.PathLike) -> None:
    """Raises `ValueError` if `folder` holds a pickle-based checkpoint file (`.bin`, `.pt`, ...)."""
    from .stack.cache import PICKLE_SUFFIXES

    pickled = sorted(str(p) for p in Path(folder).rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ValueError(f"Only safetensors weights may be exported, found pickle-based files: {pickled}")


def export_embedded_stack(out_dir: str | os.PathLike, namespace: str = "entrgi") -> dict[str, Path]:
    """Writes the embedded stack as three Hub repo folders, ready to upload as they are.

    `out_dir/pipeline` (the `EntRGiPipeline` on the embedded dLLM: `model_index.json`, dLLM, tokenizer, scheduler),
    `out_dir/reward` (the similarity reward) and `out_dir/judge` (the topic judge), safetensors only, each with a
    model card (`README.md`) whose usage snippets name the repos `<namespace>/entrgi-embedded-{pipeline,reward,judge}`
    (see [`embedded_repo_ids`]): upload each folder to that repo, e.g.
    `hf upload <namespace>/entrgi-embedded-pipeline out_dir/pipeline .`.

    Args:
        out_dir: where to write the three folders; existing ones are replaced.
        namespace: the Hub user or organisation the repos will live under (as written in the cards).

    Returns:
        The three folders, by name (`"pipeline"`, `"reward"`, `"judge"`).
    """
    from .stack import load_embedded_stack
    from .stack.dllm import default_dllm_version

    repo_ids = embedded_repo_ids(namespace)
    out_dir = Path(out_dir)
    folders = {kind: out_dir / kind for kind in repo_ids}
    for folder in folders.values():
        if folder.exists():
            shutil.rmtree(folder)
    stack = load_embedded_stack()
    version = default_dllm_version()  # what load_embedded_stack() loads

    stack.pipe.save_pretrained(folders["pipeline"])
    save_reward_repo(stack.reward_model, stack.reward_tokenizer, folders["reward"])
    save_reward_repo(stack.judge, stack.judge_tokenizer, folders["judge"])

    names = dict(**repo_ids, install=_INSTALL)
    cards = {
        "pipeline": _card(
            dict(library_name="diffusers", pipeline_tag="text-generation", tags=_tags("diffusion-language-model")),
            _PIPELINE_CARD.format(dllm_version=version, dllm_training=_DLLM_TRAINING.get(version, ""), **names),
        ),
        "reward": _card(
            dict(library_name="transformers", pipeline_tag="text-classification", tags=_tags("reward-model")),
            _PAIR_CARD.format(repo=repo_ids["reward"], **names, **_REWARD),
        ),
        "judge": _card(
            dict(library_name="transformers", pipeline_tag="text-classification", tags=_tags("topic-classification")),
            _PAIR_CARD.format(
                repo=repo_ids["judge"],
                **names,
                **{**_JUDGE, "details": _JUDGE["details"].format(topics=", ".join(stack.judge.config.topics))},
            ),
        ),
    }
    for kind, card in cards.items():
        card.save(folders[kind] / "README.md")
        check_safetensors_only(folders[kind])
    return folders


def _tags(*extra: str) -> list[str]:
    return ["entrgi", "entrgi-pipelines", "reward-guidance", "masked-diffusion", *extra]


__all__ = [
    "HubPipelineMixin",
    "add_to_hub_cache",
    "check_safetensors_only",
    "embedded_repo_ids",
    "export_embedded_stack",
    "save_reward_repo",
    "write_repo_code",
]
