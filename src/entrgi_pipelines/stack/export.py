"""The embedded stack as Hub repos: `entrgi export`, the model cards, and reward repos that load as remote code.

**The embedded stack as Hub repos.** [`export_embedded_stack`] (`entrgi export DIR`) writes `DIR/pipeline`,
`DIR/reward` and `DIR/judge`, safetensors only, each with a model card. The reward and judge repos carry
`modeling_minilm_pair.py` (self-contained: torch and transformers only) and an `auto_map` in `config.json`, so they
load with `AutoModelForSequenceClassification.from_pretrained(repo)` after `import entrgi_pipelines`, or with
`trust_remote_code=True` without this package.

The generic part, how a saved pipeline's repo names its classes so that it loads by repo id, is in
[`entrgi_pipelines.pipelines.hub_utils`]; this module only adds what is particular to this project's stack.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MINILM_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


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
    from . import modeling_minilm_pair

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
    from .cache import PICKLE_SUFFIXES

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
    from . import load_embedded_stack
    from .dllm import default_dllm_version

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
    "MINILM_BASE_MODEL",
    "check_safetensors_only",
    "embedded_repo_ids",
    "export_embedded_stack",
    "save_reward_repo",
]
