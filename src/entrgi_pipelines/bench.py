"""`entrgi-bench`: EntRGi against APS, the expectation and Best-of-N on prompts of a JSONL file or of datasets.

Every method samples the same prompts with the same seeds. For every (method, seed, prompt) it records the K samples
and their guidance rewards (on discrete tokens); the table reports Top@1 (best of K) and Avg@N (mean of K) reward
with 95% intervals over prompts x seeds. The last line on stdout is one JSON object of mean Top@1 per method.

**Models** (`--dllm`, `--reward-model`, `--eval-reward-model`) are an embedded stack model (the default), a folder
written by `save_pretrained`, or a Hub repo id (`--revision`, `--reward-revision`, `--eval-reward-revision`); with
`HF_HUB_OFFLINE=1` a repo id is read from the local Hub cache. No repository code runs unless `--trust-remote-code`:
Dream and LLaDA load as this package's native classes, and a dLLM tokenizer whose config names its own class (Dream's
`DreamTokenizer`) loads as transformers' `Qwen2TokenizerFast` over the same `vocab.json` and `merges.txt`.

**Devices**: every model goes to `--device` (default: the accelerate process's device, i.e. CUDA when available,
else CPU) in `--dtype` (default bfloat16 on CUDA, float32 on CPU). Across processes, ``accelerate launch
--num_processes N -m entrgi_pipelines.bench ...`` (one per GPU, or ``--cpu``) splits the batches of every (method,
seed) between the processes and gathers every record, in prompt order, into the main process's output. Each batch
draws from its own generator (:func:`batch_generator`), so the records do not depend on N.

**Prompts**: `--dataset NAME[:SPLIT[:FIELD]]` (repeatable) reads a column of a `datasets` dataset: a Hub dataset id
(by name online, from the local Hub cache or `datasets`' own cache offline), or a folder (written by `save_to_disk`,
or of data files). The paper's three benchmarks are presets (`rm-bench`, `judgebench`, `reward-bench-2`, or their
ids: SPLIT and FIELD filled in). `--num-prompts N` takes N prompts of each: the first N (`--prompt-order fixed`, the
default: the same prompts for every seed), or the first N after a shuffle by the seed (`--prompt-order paper`, the
authors' draw: each seed has its own prompts). A prompt without a target is scored as the chat (user: prompt,
assistant: response).

**Held-out scores**: `--eval-reward-model` scores every sample's decoded text with a reward model that did not
guide, through its own chat template (`eval_rewards` per record; `eval_top1`, the held-out score of the sample the
guiding reward ranked best, and `eval_avg`, the mean over K). The summary holds them per method and per dataset,
with paired intervals against the baseline method (Best-of-N, `none`). The embedded stack's topic judges (the
MiniLM classifier, `judge_minilm`, and the SmolLM2 LM judge, `judge_lm`: `judge` is the one held out from the
guidance reward) and perplexity models (a bigram model, `perplexity`, and SmolLM2, `perplexity_smollm`) score the
best sample when they apply: with the embedded dLLM, with `--judge`, or with `--stack-judges` (the topic
classifier on `--device`; the SmolLM2 judges and the bigram model on CPU, where the stack computes them).

`--paper` sets the paper's settings (its models, its three benchmarks with 64 prompts each drawn per seed, seeds
1-3, K=4, T=L=128, M=3, eta 0.5, tau 0.7, top-p 0.95, Dream's `time_floor` commit counts and entropy confidence,
4 prompts per call); a flag given beside it wins. docs/reproduce.md runs the paper with it.

Example (the embedded offline stack, a couple of minutes on 2 cores)::

    entrgi-bench --methods none entrgi --num-prompts 12 --seeds 0 1 --output bench.json

With `--resample smc` (and `--resample-every`, `--resample-ess`, `--resample-temperature`, `--potential`) every method
runs with SMC resampling over each prompt's K samples; each record then holds the steps where the samples were
weighed, the prompt's ESS and resampling decision at each, and the final samples' ancestry (`smc`). Every record
holds the diversity of the prompt's K samples: distinct-2 over all of them (`distinct2_samples`) and the number of
distinct texts (`distinct_samples`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import sys
import time
from importlib import resources
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .checkpoint import BenchCheckpoint, write_json_atomic, write_text_atomic
from .guidance.entrgi import GUIDANCE_METHODS
from .runs import (
    add_resampling_arguments,
    add_reward_argument,
    add_sampling_arguments,
    check_decoding,
    check_resampling,
    dllm_choice,
    guided_samples,
    judge_scores,
    load_reward,
    resampling_kwargs,
)
from .validation import (
    StrictArgumentParser,
    existing_file,
    exit_on_bad_input,
    is_repo_id,
    model_folder,
    model_source,
    positive_int,
    read_jsonl,
)

# The bundled prompts per embedded dLLM version: v1 continues King-James-style text, v2 answers requests.
DEFAULT_PROMPTS = {"v1": "data/prompts.jsonl", "v2": "data/prompts_v2.jsonl"}
# The paper's benchmarks: (split, field) of their prompts, and short names.
DATASET_PRESETS = {
    "THU-KEG/RM-Bench": ("train", "prompt"),
    "ScalerLab/JudgeBench": ("gpt", "question"),
    "allenai/reward-bench-2": ("test", "prompt"),
}
DATASET_ALIASES = {
    "rm-bench": "THU-KEG/RM-Bench",
    "judgebench": "ScalerLab/JudgeBench",
    "reward-bench-2": "allenai/reward-bench-2",
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PROMPT_ORDERS = ("fixed", "paper")
# `--paper`: the settings of the paper's scripts (flags given beside it win). Its weight schedule (w recomputed at
# every Adam step) is the pipeline's `entropy_weight="step"` where the pipeline has that argument
# (`paper_pipeline_kwargs`); this project's default keeps w fixed per denoising step (docs/methods.md).
PAPER_SETTINGS = {
    "dllm": "Dream-org/Dream-v0-Instruct-7B",
    "reward_model": "Skywork/Skywork-Reward-V2-Qwen3-1.7B",
    "methods": ["none", "expectation", "aps", "entrgi"],
    "seeds": [1, 2, 3],
    "num_prompts": 64,
    "prompt_order": "paper",
    "batch_size": 4,
    "num_samples": 4,
    "steps": 128,
    "gen_length": 128,
    "guidance_steps": 3,
    "eta": 0.5,
    "tau": 0.7,
    "top_p": 0.95,
    "commit_schedule": "time_floor",
    "confidence": "entropy",
}
PAPER_DATASETS = list(DATASET_PRESETS)
# Settings added after result files were written: left out of the recorded config at their default, so that such
# files still resume.
LATER_SETTINGS = {
    "dataset": None,
    "prompt_order": "fixed",
    "device": None,
    "dtype": None,
    "revision": None,
    "reward_revision": None,
    "eval_reward_model": None,
    "eval_reward_revision": None,
    "trust_remote_code": False,
    "stack_judges": False,
    "paper": False,
}


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def read_prompts(path: str | None, num_prompts: int | None, dllm: str | None = None) -> list[dict]:
    """The prompts of `path`, or the bundled ones for the embedded dLLM version `dllm` (default: the newest)."""
    from .stack.dllm import default_dllm_version

    bundled = DEFAULT_PROMPTS.get(dllm or "", DEFAULT_PROMPTS[default_dllm_version()])
    text = Path(path).read_text() if path else resources.files("entrgi_pipelines.stack").joinpath(bundled).read_text()
    rows = read_jsonl(path or bundled, text)
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"--prompts line {i + 1} has no non-empty 'prompt' string: {row}")
    if num_prompts is not None:
        if num_prompts > len(rows):
            raise ValueError(f"--num-prompts {num_prompts} exceeds the {len(rows)} prompts of the file.")
        rows = rows[:num_prompts]
    return rows


def dataset_spec(text: str) -> str:
    """argparse type of `--dataset NAME[:SPLIT[:FIELD]]`: the spec with the preset's split and field filled in.

    >>> dataset_spec("judgebench"), dataset_spec("org/name"), dataset_spec("data/folder::text")
    ('ScalerLab/JudgeBench:gpt:question', 'org/name:train:prompt', 'data/folder:train:text')
    """
    parts = text.split(":")
    if len(parts) > 3 or not parts[0].strip():
        raise argparse.ArgumentTypeError(f"expected NAME[:SPLIT[:FIELD]], got {text!r}")
    name = DATASET_ALIASES.get(parts[0], parts[0])
    split, field = DATASET_PRESETS.get(name, ("train", "prompt"))
    split = parts[1] if len(parts) > 1 and parts[1] else split
    field = parts[2] if len(parts) > 2 and parts[2] else field
    return f"{name}:{split}:{field}"


def _load_dataset_splits(name: str):
    """The splits of a dataset folder (`save_to_disk`, or data files) or Hub dataset id, as a dict-like of splits."""
    try:
        import datasets
    except ImportError:
        raise ValueError("--dataset reads prompts with the `datasets` package: pip install datasets") from None
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    folder = Path(name).expanduser()
    if folder.is_dir():
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            data = datasets.load_from_disk(str(folder))
        else:
            data = datasets.load_dataset(str(folder))
        return data if isinstance(data, datasets.DatasetDict) else {None: data}
    if not is_repo_id(name):
        raise ValueError(f"--dataset {name!r}: no such folder, and not a Hub dataset id ('org/name').")
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError) as error:
        if not constants.HF_HUB_OFFLINE:
            raise ValueError(f"--dataset {name}: {error}") from None
    # Offline, `datasets` reads only its own cache; a dataset downloaded with huggingface_hub is in the Hub cache.
    try:
        snapshot = snapshot_download(name, repo_type="dataset")
    except LocalEntryNotFoundError:
        raise ValueError(
            f"--dataset {name}: not in the local Hub cache, and HF_HUB_OFFLINE=1 forbids downloading it: download "
            f"it once (`hf download {name} --repo-type dataset`), or pass a folder written by save_to_disk."
        ) from None
    return datasets.load_dataset(snapshot)


def read_dataset(spec: str) -> list[str]:
    """The prompts of `--dataset NAME:SPLIT:FIELD` (as [`dataset_spec`] writes it): the field of every row.

    A folder holding one dataset without splits (`Dataset.save_to_disk`) is read whatever SPLIT says.
    """
    name, split, field = spec.rsplit(":", 2)
    splits = _load_dataset_splits(name)
    if None in splits:
        table = splits[None]
    elif split in splits:
        table = splits[split]
    else:
        raise ValueError(f"--dataset {name}: no split {split!r} (it has {sorted(splits)}): pass {name}:SPLIT.")
    if field not in table.column_names:
        raise ValueError(
            f"--dataset {name}:{split}: no field {field!r} (its fields: {table.column_names}): pass "
            f"{name}:{split}:FIELD."
        )
    prompts = list(table[field])
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
    if bad is not None:
        raise ValueError(
            f"--dataset {spec}: row {bad} of field {field!r} is not a non-empty string ({str(prompts[bad])[:60]!r}): "
            "pass the field that holds the prompt text."
        )
    return prompts


def prompt_sources(args) -> list[tuple[str, list[dict]]]:
    """`(name, rows)` of every prompt source, all rows: each `--dataset`, else the `--prompts` file or the bundled
    prompts. A source with fewer rows than `--num-prompts` is a `ValueError` naming it."""
    if getattr(args, "dataset", None):
        sources = [(spec, [{"prompt": p} for p in read_dataset(spec)]) for spec in args.dataset]
    else:
        sources = [(args.prompts or "bundled", read_prompts(args.prompts, None, args.dllm))]
    for name, rows in sources:
        if args.num_prompts is not None and args.num_prompts > len(rows):
            what = "the file" if not getattr(args, "dataset", None) else f"--dataset {name}"
            raise ValueError(
                f"--num-prompts {args.num_prompts} exceeds the {len(rows)} prompts of {what}: ask for at most "
                f"{len(rows)}."
            )
    return sources


def draw_prompts(sources: list[tuple[str, list[dict]]], num_prompts: int | None, order: str, seed: int) -> list[dict]:
    """The prompts of one seed: `num_prompts` of each source (all when `None`), each row with its `dataset`.

    `order="fixed"`: the first rows, the same for every seed. `order="paper"`: the first rows after a shuffle by
    the seed, the permutation of `numpy.random.default_rng(seed)` that `datasets.Dataset.shuffle(seed=seed)` draws.
    """
    import numpy as np

    prompts = []
    for name, rows in sources:
        index = range(len(rows)) if order == "fixed" else np.random.default_rng(seed).permutation(len(rows)).tolist()
        prompts += [{**rows[i], "dataset": name} for i in list(index)[:num_prompts]]
    return prompts


# --------------------------------------------------------------------------------------------------------------------
# Models and devices
# --------------------------------------------------------------------------------------------------------------------


def resolve_device(name: str | None, dtype_name: str | None) -> tuple[torch.device, torch.dtype]:
    """`(device, dtype)` of `--device` and `--dtype`, refused (ValueError naming the flag) where they cannot run.

    The default device is the accelerate process's (one GPU per process under `accelerate launch`, else CUDA when
    available, else CPU); `--device cuda` without an index means the process's GPU too. The default dtype is
    bfloat16 on CUDA and float32 elsewhere.
    """
    state_device = PartialState().device
    device = torch.device(name) if name else state_device
    if device.type == state_device.type and device.index is None:
        device = state_device
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here: pass --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here: pass --device cpu.")
    dtype_name = dtype_name or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    fix = "pass --dtype float32" if dtype_name != "float32" else "pass another --device"
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} does not support it: {fix}.")
    try:  # the operations guidance needs, in that dtype: a matrix product, a softmax and its gradient
        x = torch.ones(4, 4, device=device, dtype=dtype, requires_grad=True)
        (x @ x).softmax(-1).log().sum().backward()
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--dtype {dtype_name} does not run on {device} ({str(error)[:80]}): {fix}.") from None
    return device, dtype


def device_name(text: str) -> str:
    """argparse type: a torch device name (`cpu`, `cuda`, `cuda:1`, `mps`)."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    return text


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def repo_file(source: str, filename: str, revision: str | None = None) -> Path | None:
    """The local path of `filename` of a model folder or Hub repo (downloaded online; from the cache offline), or
    `None` when it has none (or, offline, when the cache has none)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / filename if (folder / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


def check_model_source(flag: str, source: str, revision: str | None, one_label: bool = False) -> dict:
    """The `config.json` of a model folder or repo id, before any model work: a ValueError naming `flag` when the
    repo is not in the local cache (offline) or on the Hub, or (`one_label`) when the model has more than one label."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    is_folder = Path(source).expanduser().is_dir()
    if is_folder and revision is not None:
        raise ValueError(f"{flag} {source} is a folder: its revision flag applies to Hub repo ids; drop it.")
    at = f" at revision {revision!r}" if revision else ""
    try:
        path = repo_file(source, "config.json", revision)
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ValueError(
            f"{flag} {source}{at}: {type(error).__name__} (check the repo id and revision; a gated repo needs "
            "`hf auth login`)."
        ) from None
    except OSError as error:
        raise ValueError(
            f"{flag} {source}: could not reach the Hub ({type(error).__name__}); with HF_HUB_OFFLINE=1 the local "
            "cache is read."
        ) from None
    if path is None and not is_folder and _offline():
        raise ValueError(
            f"{flag} {source}{at}: not in the local Hub cache, and HF_HUB_OFFLINE=1 forbids downloading it: "
            f"download it once (`hf download {source}`), unset HF_HUB_OFFLINE, or pass a model folder."
        )
    if path is None:
        raise ValueError(f"{flag} {source}{at} has no config.json: pass a model repo written by save_pretrained.")
    config = json.loads(path.read_text())
    if one_label:
        labels = len(config["id2label"]) if config.get("id2label") else config.get("num_labels", 2)
        if labels != 1:
            raise ValueError(
                f"{flag} {source} has {labels} labels: a reward model gives one score per text (a "
                "*ForSequenceClassification with num_labels=1); pass such a model."
            )
    return config


def load_dllm_tokenizer(source: str, revision: str | None = None, trust_remote_code: bool = False):
    """`(tokenizer, note)`: the dLLM's tokenizer without repository code unless `trust_remote_code`.

    A tokenizer config that names its own class in `auto_map` (Dream's `DreamTokenizer`) over byte-level BPE files
    (`vocab.json`, `merges.txt`) loads as transformers' `Qwen2TokenizerFast`, the same tokenizer; `note` says so
    (else it is `None`).
    """
    from transformers import AutoTokenizer, Qwen2TokenizerFast

    config_path = repo_file(source, "tokenizer_config.json", revision)
    config = json.loads(config_path.read_text()) if config_path else {}
    remote = (config.get("auto_map") or {}).get("AutoTokenizer")
    if not remote or trust_remote_code:
        return AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code), None
    name = config.get("tokenizer_class") or str(remote)
    if not all(repo_file(source, f, revision) for f in ("vocab.json", "merges.txt")):
        raise ValueError(
            f"--dllm {source}: its tokenizer is repository code ({name}) and not a byte-level BPE that loads "
            "without it: pass --trust-remote-code to run it."
        )
    tokenizer = Qwen2TokenizerFast.from_pretrained(source, revision=revision)
    note = (
        f"--dllm {source}: its tokenizer config names {name} (repository code); loaded as transformers' "
        "Qwen2TokenizerFast over the same vocab.json and merges.txt, without running repository code "
        "(--trust-remote-code runs it instead)."
    )
    return tokenizer, note


def _from_pretrained(cls, source: str, revision: str | None, args, dtype: torch.dtype, device: torch.device):
    # safetensors only; code from the repo only with --trust-remote-code (never an interactive prompt)
    trust = bool(getattr(args, "trust_remote_code", False))
    model = cls.from_pretrained(source, revision=revision, use_safetensors=True, trust_remote_code=trust, dtype=dtype)
    return model.to(device).eval()


def load_reward_model(source: str, revision: str | None, args, device: torch.device, dtype: torch.dtype):
    """`(model, tokenizer)` of a one-label sequence classifier (folder or repo id), on `device` in `dtype`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = _from_pretrained(AutoModelForSequenceClassification, source, revision, args, dtype, device)
    trust = bool(getattr(args, "trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoder classifiers find the last token by it
    return model, tokenizer


def stack_dllm_is_embedded(args) -> bool:
    """Whether `--dllm` names an embedded dLLM version (or none: the newest)."""
    from .stack.dllm import DLLM_VERSIONS

    return args.dllm is None or args.dllm in DLLM_VERSIONS


def stack_judges_apply(args) -> bool:
    """Whether the embedded stack's topic judges and perplexity models score the run: with the embedded dLLM, with
    `--judge`, or with `--stack-judges`."""
    return (
        stack_dllm_is_embedded(args) or bool(getattr(args, "judge", None)) or bool(getattr(args, "stack_judges", False))
    )


def load_components(args, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """`(pipe, (reward_model, reward_tokenizer), (judge, judge_tokenizer) or None)`, every model on `device`.

    The topic judge loads only where [`stack_judges_apply`]. `device` and `dtype` default to `--device` and
    `--dtype` (see [`resolve_device`]).
    """
    from transformers import (
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from .models import use_repository_code
    from .pipelines.entrgi import EntRGiPipeline
    from .schedulers import MaskedDiffusionScheduler
    from .stack import reward_models as stack_rewards  # registers the MiniLM pair models with the Auto classes
    from .stack.dllm import DLLM_VERSIONS, load_embedded_dllm

    if device is None or dtype is None:
        device, dtype = resolve_device(getattr(args, "device", None), getattr(args, "dtype", None))
    trust = bool(getattr(args, "trust_remote_code", False))
    revision = getattr(args, "revision", None)
    if args.dllm is None or args.dllm in DLLM_VERSIONS:
        model, tokenizer = load_embedded_dllm(version=args.dllm)
        model = model.to(device=device, dtype=dtype)
    else:
        tokenizer, note = load_dllm_tokenizer(args.dllm, revision, trust)
        if note and PartialState().is_main_process:
            print(note, file=sys.stderr)
        # Repository code may name only AutoModel (Dream's does); the native classes answer AutoModelForMaskedLM.
        auto_map = json.loads(repo_file(args.dllm, "config.json", revision).read_text()).get("auto_map") or {}
        remote_model_only = trust and "AutoModel" in auto_map and "AutoModelForMaskedLM" not in auto_map
        cls = AutoModel if remote_model_only else AutoModelForMaskedLM
        with use_repository_code() if trust else contextlib.nullcontext():
            model = _from_pretrained(cls, args.dllm, revision, args, dtype, device)
    if args.reward_model:
        reward = load_reward_model(args.reward_model, getattr(args, "reward_revision", None), args, device, dtype)
    else:
        reward_model, reward_tokenizer = load_reward(getattr(args, "reward", "similarity"))
        reward = (reward_model.to(device=device, dtype=dtype), reward_tokenizer)
    judge = None
    if getattr(args, "judge", None):
        judge_model = _from_pretrained(AutoModelForSequenceClassification, args.judge, None, args, dtype, device)
        judge = (judge_model, AutoTokenizer.from_pretrained(args.judge, trust_remote_code=False))
    elif stack_judges_apply(args):
        judge_model, judge_tokenizer = stack_rewards.load_topic_judge()
        judge = (judge_model.to(device=device, dtype=dtype), judge_tokenizer)
    mask_token_id = getattr(model.config, "mask_token_id", None)
    pipe = EntRGiPipeline(
        model=model, tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler(), mask_token_id=mask_token_id
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, reward, judge


@torch.no_grad()
def reward_model_scores(model, tokenizer, prompts: list[str], texts: list[str], batch_size: int = 16) -> list[float]:
    """The score of each response text by a one-label reward model, through its own chat template (user: the
    prompt, assistant: the text; a text pair for a tokenizer without one), `batch_size` rows per forward."""
    if getattr(tokenizer, "chat_template", None):
        chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": t}] for p, t in zip(prompts, texts)]
        columns = ([tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats],)
        options = {"add_special_tokens": False}  # the template already holds them
    else:
        columns, options = (prompts, texts), {}
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = [column[start : start + batch_size] for column in columns]
        enc = tokenizer(*batch, return_tensors="pt", padding=True, **options).to(model.device)
        scores += model(**enc).logits[:, 0].float().tolist()
    return scores


def paper_pipeline_kwargs(pipe, args) -> dict:
    """The pipeline arguments `--paper` adds beyond the sampling settings: the paper's weight schedule
    (`entropy_weight="step"`, w recomputed at every Adam step) where the pipeline takes it, else none."""
    if not getattr(args, "paper", False):
        return {}
    return {"entropy_weight": "step"} if "entropy_weight" in inspect.signature(pipe.__call__).parameters else {}


# --------------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------------


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval."""
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, 1.96 * std / math.sqrt(n)


def _stack_fields(method: str, rows: list[dict]) -> dict:
    """The topic judges' and perplexities' means (records of runs where the embedded stack's judges applied)."""
    judge = mean_ci([r["judge"] for r in rows])
    # Records written before the SmolLM2 judges carry only the MiniLM judge, which was then the held-out one.
    judge_minilm = mean_ci([r.get("judge_minilm", r["judge"]) for r in rows])
    judge_lm = mean_ci([r.get("judge_lm", math.nan) for r in rows])
    held_out = {r.get("held_out_judge", "minilm") for r in rows}
    if len(held_out) > 1:
        raise ValueError(
            f"Records of {method!r} have different held-out judges {sorted(held_out)}: summarise "
            "runs of one guidance reward at a time."
        )
    log_ppl = mean_ci([math.log(r["perplexity"]) for r in rows if r["perplexity"] == r["perplexity"]])
    log_ppl_lm = mean_ci([math.log(p) for r in rows if (p := r.get("perplexity_smollm", math.nan)) == p])
    return {
        "judge": judge[0],
        "judge_ci": judge[1],
        "held_out_judge": held_out.pop() if held_out else "minilm",
        "judge_minilm": judge_minilm[0],
        "judge_minilm_ci": judge_minilm[1],
        "judge_lm": judge_lm[0],
        "judge_lm_ci": judge_lm[1],
        "perplexity": math.exp(log_ppl[0]),
        "perplexity_smollm": math.exp(log_ppl_lm[0]),
    }


def summarise(records: list[dict], methods: list[str]) -> dict:
    """Per method: Top@1 / Avg@N reward with 95% intervals over prompts x seeds, the held-out reward's
    (`eval_top1`, `eval_avg`) and the stack's judge fields where the records have them, diversity and time."""
    summary = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        top1, avg = mean_ci([r["top1"] for r in rows]), mean_ci([r["avg"] for r in rows])
        entry = {"top1": top1[0], "top1_ci": top1[1], "avg": avg[0], "avg_ci": avg[1]}
        if rows and all("eval_top1" in r for r in rows):
            for field in ("eval_top1", "eval_avg"):
                entry[field], entry[f"{field}_ci"] = mean_ci([r[field] for r in rows])
        if rows and all("judge" in r for r in rows):
            entry |= _stack_fields(method, rows)
        summary[method] = entry | {
            "distinct2": mean_ci([r["distinct2"] for r in rows])[0],
            "seconds_per_prompt": sum(r["seconds"] for r in rows) / max(len(rows), 1),
            "nfe": mean_ci([r.get("nfe", math.nan) for r in rows])[0],
            # diversity among a prompt's K samples (records written before these fields: nan)
            "distinct2_samples": mean_ci([r.get("distinct2_samples", math.nan) for r in rows])[0],
            "distinct_samples": mean_ci([r.get("distinct_samples", math.nan) for r in rows])[0],
            "n": len(rows),
        }
    return summary


PAIRED_FIELDS = ("top1", "avg", "eval_top1", "eval_avg")


def baseline_method(methods: list[str]) -> str:
    """The method others are compared with: Best-of-N (`none`) when run, else the first."""
    return "none" if "none" in methods else methods[0]


def summarise_datasets(records: list[dict], methods: list[str]) -> dict:
    """Per dataset: [`summarise`] of its records, and per method other than the baseline, the paired difference
    to it (`vs_<baseline>`: mean and 95% interval of `method - baseline` over the same seeds and prompts) of Top@1,
    Avg@N and the held-out scores."""
    baseline = baseline_method(methods)
    result = {}
    for dataset in dict.fromkeys(r.get("dataset", "bundled") for r in records):
        rows = [r for r in records if r.get("dataset", "bundled") == dataset]
        summary = summarise(rows, methods)
        base = _by_seed_and_prompt(r for r in rows if r["method"] == baseline)
        for method in methods:
            if method == baseline:
                continue
            # a prompt listed twice pairs its first record with the baseline's first, its second with the second
            mine = _by_seed_and_prompt(r for r in rows if r["method"] == method)
            pairs = [pair for key, runs in mine.items() for pair in zip(runs, base.get(key, []))]
            paired = {}
            for field in PAIRED_FIELDS:
                if pairs and all(field in a and field in b for a, b in pairs):
                    diff, ci = mean_ci([a[field] - b[field] for a, b in pairs])
                    paired[field] = {"diff": diff, "ci": ci, "n": len(pairs)}
            summary[method][f"vs_{baseline}"] = paired
        result[dataset] = summary
    return result


def _by_seed_and_prompt(records) -> dict[tuple, list[dict]]:
    grouped = {}
    for record in records:
        grouped.setdefault((record["seed"], record["prompt"]), []).append(record)
    return grouped


JUDGE_NAMES = {"minilm": "MiniLM judge", "lm": "LM judge"}


def _fmt(value, spec: str) -> str:
    return "—" if value is None or value != value else format(value, spec)


def markdown_table(summary: dict) -> str:
    """The summary as a markdown table: Top@1 / Avg@N reward; the held-out reward's where scored; the stack's
    held-out judge first, then the other, and both perplexities of the best sample where they applied.

    Summaries written before the SmolLM2 judges (no `judge_lm`, `perplexity_smollm`) show "—" in those columns.
    """
    first = next(iter(summary.values()), {})
    held_out = first.get("held_out_judge", "minilm")
    other = "lm" if held_out == "minilm" else "minilm"
    columns = [
        ("method", lambda m, s: m),
        ("n", lambda m, s: str(s["n"])),
        ("Top@1 reward", lambda m, s: f"{s['top1']:.4f} ± {s['top1_ci']:.4f}"),
        ("Avg@N reward", lambda m, s: f"{s['avg']:.4f} ± {s['avg_ci']:.4f}"),
    ]
    if "eval_top1" in first:
        columns += [
            ("held-out reward Top@1", lambda m, s: f"{s['eval_top1']:.4f} ± {_fmt(s['eval_top1_ci'], '.4f')}"),
            ("held-out reward Avg@N", lambda m, s: f"{s['eval_avg']:.4f} ± {_fmt(s['eval_avg_ci'], '.4f')}"),
        ]
    if "judge" in first:
        columns += [
            (f"held-out {JUDGE_NAMES[held_out]} (best)", lambda m, s: f"{s['judge']:.3f} ± {s['judge_ci']:.3f}"),
            (f"{JUDGE_NAMES[other]} (best)", lambda m, s: _fmt(s.get(f"judge_{other}"), ".3f")),
            ("bigram perplexity (best)", lambda m, s: f"{s['perplexity']:.1f}"),
            ("SmolLM2 perplexity (best)", lambda m, s: _fmt(s.get("perplexity_smollm"), ".1f")),
        ]
    columns += [
        ("distinct-2 (best)", lambda m, s: f"{s['distinct2']:.3f}"),
        ("s / prompt", lambda m, s: f"{s['seconds_per_prompt']:.2f}"),
    ]
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(m, s) for _, cell in columns) + " |" for m, s in summary.items()]
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    """The run as markdown: which models scored what, the table over all prompts with the paired differences to the
    baseline method, and with several datasets the same per dataset."""
    models = result.get("models")
    parts = []
    if models:
        parts.append("\n".join(f"- {role}: {name}" for role, name in models.items() if name))
    by_dataset = result.get("by_dataset") or {}
    if len(by_dataset) == 1:  # one prompt source: its table is the run's
        parts.append("\n".join([markdown_table(result["summary"]), *_paired_lines(next(iter(by_dataset.values())))]))
    else:
        parts.append(markdown_table(result["summary"]))
        for dataset, summary in by_dataset.items():
            parts.append("\n".join([f"**{dataset}**", "", markdown_table(summary), *_paired_lines(summary)]))
    return "\n\n".join(parts)


def _paired_lines(summary: dict) -> list[str]:
    """One line per method compared with the baseline: each paired difference with its 95% interval."""
    lines = []
    for method, s in summary.items():
        for key, paired in ((k, v) for k, v in s.items() if k.startswith("vs_") and v):
            cells = ", ".join(f"{f} {p['diff']:+.4f} ± {_fmt(p['ci'], '.4f')}" for f, p in paired.items())
            lines.append(f"- {method} {key.replace('_', ' ')} (paired, n={_pair_n(paired)}): {cells}")
    return lines


def _pair_n(paired: dict) -> int:
    return next((p["n"] for p in paired.values()), 0)


def models_used(args, stack: bool) -> dict:
    """Which model did what in a run, as the summary names them."""

    def named(source, revision):
        return None if source is None else f"{source}" + (f"@{revision}" if revision else "")

    embedded_reward = f"embedded {getattr(args, 'reward', 'similarity')} reward"
    return {
        "dLLM": named(args.dllm, getattr(args, "revision", None))
        if not stack_dllm_is_embedded(args)
        else f"embedded dLLM {args.dllm or '(newest)'}",
        "guidance reward (Top@1, Avg@N)": named(args.reward_model, getattr(args, "reward_revision", None))
        or embedded_reward,
        "held-out reward (eval_top1, eval_avg)": named(
            getattr(args, "eval_reward_model", None), getattr(args, "eval_reward_revision", None)
        ),
        "topic judges and perplexity (judge, perplexity)": None
        if not stack
        else (f"--judge {args.judge}" if getattr(args, "judge", None) else "the embedded MiniLM topic judge")
        + ", the embedded SmolLM2 judge; bigram and SmolLM2 perplexity",
    }


def vocabulary_bridge(pipe, reward_tokenizer) -> str:
    """How the dLLM's vocabulary maps onto the guidance reward's (as `RewardGuidance` maps it by default)."""
    from .guidance.vocab import VocabularyMap

    bridge = VocabularyMap.from_tokenizers(pipe.tokenizer, reward_tokenizer, source_size=pipe.vocab_size)
    if bridge.unmapped_token is None:
        return f"all {len(bridge.ids)} dLLM ids map onto the reward vocabulary"
    return (
        f"{bridge.coverage:.2%} of the {len(bridge.ids)} dLLM ids map onto the reward vocabulary; the rest become "
        f"{bridge.unmapped_token!r}"
    )


# --------------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = StrictArgumentParser(prog="entrgi-bench", description=__doc__.split("\n\n")[0])
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument(
        "--prompts", type=existing_file, help="JSONL with {'prompt': ..., 'target': ...} per line (default: bundled)"
    )
    prompts.add_argument(
        "--dataset",
        action="append",
        type=dataset_spec,
        metavar="NAME[:SPLIT[:FIELD]]",
        help="prompts from a datasets dataset (repeatable): a Hub id or a folder (save_to_disk or data files); "
        "presets rm-bench, judgebench, reward-bench-2 (THU-KEG/RM-Bench:train:prompt, "
        "ScalerLab/JudgeBench:gpt:question, allenai/reward-bench-2:test:prompt); default SPLIT train, FIELD prompt",
    )
    prompts.add_argument(
        "--num-prompts", type=positive_int, default=12, help="prompts per file or dataset (default 12)"
    )
    prompts.add_argument(
        "--prompt-order",
        choices=PROMPT_ORDERS,
        default="fixed",
        help="fixed: the first N prompts, the same for every seed (default); paper: the first N after a shuffle by "
        "the seed (the authors' draw: each seed has its own prompts)",
    )
    parser.add_argument("--methods", nargs="+", default=["none", "entrgi"], choices=GUIDANCE_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    # Defaults sized for 12 prompts x 2 seeds x 2 methods in about 3 minutes on 2 CPU cores; docs/results.md uses
    # T = L = 32.
    add_sampling_arguments(parser, steps=16, gen_length=16)
    add_resampling_arguments(parser)
    models = parser.add_argument_group("models (a folder, or a Hub repo id read from the local cache offline)")
    models.add_argument(
        "--dllm",
        type=dllm_choice,
        help="embedded dLLM version (v1, v2), a diffusion LM folder or Hub repo id (default: the newest embedded)",
    )
    models.add_argument("--revision", help="branch, tag or commit of the --dllm repo")
    add_reward_argument(models)
    models.add_argument(
        "--reward-model",
        type=model_source,
        help="reward model (folder or repo id, one label) to guide with (default: the embedded --reward)",
    )
    models.add_argument("--reward-revision", help="branch, tag or commit of the --reward-model repo")
    models.add_argument(
        "--eval-reward-model",
        type=model_source,
        help="held-out reward model (folder or repo id, one label) that scores every sample's text and did not guide",
    )
    models.add_argument("--eval-reward-revision", help="branch, tag or commit of the --eval-reward-model repo")
    models.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the code of model repos (default: never; Dream and LLaDA load as native classes, Dream's "
        "tokenizer as Qwen2TokenizerFast)",
    )
    models.add_argument(
        "--judge", type=model_folder, help="topic classifier judge folder (default: the embedded MiniLM topic judge)"
    )
    models.add_argument(
        "--stack-judges",
        action="store_true",
        help="score with the embedded stack's topic judges and perplexity models even with another dLLM (they "
        "apply by default only to the embedded dLLM)",
    )
    run = parser.add_argument_group("running")
    run.add_argument(
        "--device",
        type=device_name,
        help="where every model runs (default: the accelerate process's device: CUDA when available, else CPU)",
    )
    run.add_argument("--dtype", choices=tuple(DTYPES), help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="prompts per pipeline call, each with its K samples (default 16). At the paper's shape (Dream 7B, a "
        "1.7B reward, K=4, L=128) 4 prompts need about 42 GB and fit one 80 GB GPU; 16 need over 100 GB "
        "(docs/reproduce.md)",
    )
    run.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    run.add_argument(
        "--paper",
        action="store_true",
        help="the paper's settings: its models and benchmarks, 64 prompts each drawn per seed, seeds 1-3, the four "
        "methods, K=4, T=L=128, M=3, eta 0.5, tau 0.7, top-p 0.95, time_floor commits, batch size 4 (flags given "
        "beside it win; docs/reproduce.md)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in --output and run only the rest (same settings, or more prompts, seeds or "
        "methods: see checkpoint.py)",
    )
    run.add_argument("--output", help="write every sample and the summary to this JSON file")
    run.add_argument("--markdown", help="also write the table to this file")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """`(parser, args)` of a command line; `--paper` makes the paper's settings the defaults (and its three
    datasets, when no `--dataset` is given)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--paper" in argv:
        parser.set_defaults(**PAPER_SETTINGS)
    args = parser.parse_args(argv)
    if args.paper and not args.dataset and not args.prompts:
        args.dataset = [dataset_spec(name) for name in PAPER_DATASETS]
    return parser, args


def bench_config(args) -> dict:
    """The settings recorded in the output (where the results go, and whether they were resumed, are not)."""
    return {
        k: v
        for k, v in vars(args).items()
        if k not in ("output", "markdown", "resume") and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])
    }


def check_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuses bad settings, files, datasets and models before any model work: exit status 2 and one line on
    stderr."""
    for name in ("methods", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name} lists {values}: give each once")
    if args.dataset and args.prompts:
        parser.error("--prompts and --dataset both give prompts: pass one of them")
    if args.dataset and len(set(args.dataset)) != len(args.dataset):
        parser.error(f"--dataset lists {args.dataset}: give each once")
    exit_on_bad_input(parser, check_decoding, args)
    exit_on_bad_input(parser, check_resampling, args, args.methods)
    if args.reward_model and args.reward != "similarity":
        parser.error(f"--reward-model replaces the embedded reward: drop it or --reward {args.reward}")
    for flag, path in (("--output", args.output), ("--markdown", args.markdown)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            parser.error(f"{flag} {path!r}: its folder does not exist")
    exit_on_bad_input(parser, resolve_device, args.device, args.dtype)
    from .stack.dllm import DLLM_VERSIONS

    external_dllm = args.dllm is not None and args.dllm not in DLLM_VERSIONS
    if args.revision and not external_dllm:
        parser.error("--revision applies to a --dllm Hub repo id: pass --dllm org/name, or drop --revision")
    for flag, source, revision, one_label in (
        ("--dllm", args.dllm if external_dllm else None, args.revision, False),
        ("--reward-model", args.reward_model, args.reward_revision, True),
        ("--eval-reward-model", args.eval_reward_model, args.eval_reward_revision, True),
    ):
        if source is not None:
            exit_on_bad_input(parser, check_model_source, flag, source, revision, one_label)
        elif revision is not None and flag != "--dllm":
            parser.error(f"{flag.replace('-model', '-revision')} needs {flag}: pass both, or drop it")
    exit_on_bad_input(parser, prompt_sources, args)
    exit_on_bad_input(parser, BenchCheckpoint, args.output, bench_config(args), args.resume)


def run(args) -> dict:
    """The benchmark of `args` (as [`build_parser`] parses them): `{"config", "summary", "by_dataset", "models",
    "records"}`, the records of every process gathered in the main one."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(getattr(args, "device", None), getattr(args, "dtype", None))
    sources = prompt_sources(args)
    order_rule = getattr(args, "prompt_order", "fixed")
    pipe, (reward_model, reward_tokenizer), judge_pair = load_components(args, device, dtype)
    eval_model = None
    if getattr(args, "eval_reward_model", None):
        eval_model, eval_tokenizer = load_reward_model(
            args.eval_reward_model, getattr(args, "eval_reward_revision", None), args, device, dtype
        )
    stack = judge_pair is not None
    if stack:
        from .stack.fluency import distinct_n, load_fluency_model
        from .stack.judges import default_topic_descriptions, load_smollm_judges

        judge, judge_tokenizer = judge_pair
        fluency = load_fluency_model(judge_tokenizer)
        # The LM topic judge chooses among the 10 benchmark topics and every target of the prompts (all rows, so
        # that the candidates do not depend on --num-prompts).
        all_targets = [row.get("target") or row["prompt"] for _, rows in sources for row in rows]
        lm_judges = load_smollm_judges(candidates=default_topic_descriptions() + all_targets)
        count_tokenizer = judge_tokenizer
    else:
        from .stack.fluency import distinct_n

        count_tokenizer = pipe.tokenizer  # distinct-2 over the dLLM's own tokens
    reward_name = getattr(args, "reward", "similarity")  # the held-out topic judge is the other one
    extra_kwargs = {**resampling_kwargs(args), **paper_pipeline_kwargs(pipe, args)}
    records, order = [], []  # `order`: (method, seed, prompt) positions, to merge the processes' records
    state = PartialState()  # one process, or those of `accelerate launch`: each runs its share of the batches
    prompts_of = {seed: draw_prompts(sources, args.num_prompts, order_rule, seed) for seed in args.seeds}
    progress = tqdm(
        total=len(args.methods) * sum(len(p) for p in prompts_of.values()),
        desc="entrgi-bench",
        unit="prompt",
        disable=not state.is_main_process,
    )
    config = bench_config(args)
    models = models_used(args, stack) | {"vocabulary bridge": vocabulary_bridge(pipe, reward_tokenizer)}
    # Saved after every batch; with --resume, batches already in the output file are skipped.
    checkpoint = BenchCheckpoint(args.output, config, getattr(args, "resume", False))
    if not state.is_main_process:
        checkpoint.path = None  # every process reads the saved records; only the main one writes its own
    for method_index, method in enumerate(args.methods):
        for seed_index, seed in enumerate(args.seeds):
            prompts = prompts_of[seed]
            starts = list(range(0, len(prompts), args.batch_size))  # each batch: prompts[start : start + batch_size]
            with state.split_between_processes(starts) as my_starts:
                batches = [(start, prompts[start : start + args.batch_size]) for start in my_starts]
            for batch_start, batch in batches:
                positions = [(method_index, seed_index, batch_start + i) for i in range(len(batch))]
                targets = [row.get("target") or row["prompt"] for row in batch]
                saved = checkpoint.finished((method, seed, row["prompt"], t) for row, t in zip(batch, targets))
                if saved is not None:
                    records.extend(saved)
                    order.extend(positions)
                    progress.update(len(batch))
                    continue
                generator = batch_generator(seed, batch_start)
                start = time.perf_counter()
                out = guided_samples(
                    pipe,
                    reward_model,
                    reward_tokenizer,
                    [row["prompt"] for row in batch],
                    targets,
                    method,
                    args,
                    generator,
                    **extra_kwargs,
                )
                seconds = (time.perf_counter() - start) / len(batch)
                fields = [{} for _ in batch]
                if eval_model is not None:
                    start = time.perf_counter()
                    K = len(out.all_texts[0])
                    flat = [text for texts in out.all_texts for text in texts]
                    asked = [row["prompt"] for row in batch for _ in range(K)]
                    scores = reward_model_scores(eval_model, eval_tokenizer, asked, flat, len(batch) * K)
                    eval_seconds = (time.perf_counter() - start) / len(batch)
                    for b, rewards in enumerate(out.rewards):
                        mine = scores[b * K : (b + 1) * K]
                        best = int(rewards.nan_to_num(nan=-math.inf).argmax())  # as the pipeline ranks them
                        fields[b] |= {
                            "eval_rewards": mine,
                            "eval_top1": mine[best],
                            "eval_avg": sum(mine) / K,
                            "eval_seconds": eval_seconds,
                        }
                if stack:
                    start = time.perf_counter()
                    judged = lm_judges.record_fields(
                        [row["prompt"] for row in batch],
                        targets,
                        out.texts,
                        judge_scores(judge, judge_tokenizer, targets, out.texts),
                        reward_name,
                    )
                    judge_seconds = (time.perf_counter() - start) / len(batch)
                    for b, (best, judge_fields) in enumerate(zip(out.texts, judged)):
                        best_ids = judge_tokenizer(best, add_special_tokens=False)["input_ids"]
                        fields[b] |= {**judge_fields, "perplexity": fluency.perplexity(best_ids)}
                        fields[b]["judge_seconds"] = judge_seconds
                for b, (row, target, best, texts, rewards) in enumerate(
                    zip(batch, targets, out.texts, out.all_texts, out.rewards)
                ):
                    best_ids = count_tokenizer(best, add_special_tokens=False)["input_ids"]
                    sample_ids = count_tokenizer(texts, add_special_tokens=False)["input_ids"]
                    records.append(
                        {
                            "method": method,
                            "seed": seed,
                            "dataset": row["dataset"],
                            "prompt": row["prompt"],
                            "target": target,
                            "texts": texts,
                            "rewards": rewards.tolist(),
                            "best": best,
                            "top1": float(rewards.max()),
                            "avg": float(rewards.mean()),
                            **fields[b],
                            "distinct2": distinct_n(best_ids, 2),
                            "seconds": seconds,
                            "nfe": out.nfe,  # the batch's dLLM calls (shared by its prompts)
                            "distinct2_samples": pooled_distinct_n(sample_ids, 2),
                            "distinct_samples": len(set(texts)),
                            **smc_fields(out, b),
                        }
                    )
                order.extend(positions)
                progress.update(len(batch))
                done = [m for m in args.methods if any(r["method"] == m for r in records)]
                checkpoint.save(
                    {"config": config, "models": models, "summary": summarise(records, done), "records": records}
                )
    progress.close()
    if state.num_processes > 1:
        gathered = gather_object(list(zip(order, records)))
        records = [record for _, record in sorted(gathered, key=lambda pair: tuple(pair[0]))]
    return {
        "config": config,
        "models": models,
        "summary": summarise(records, args.methods),
        "by_dataset": summarise_datasets(records, args.methods),
        "records": records,
    }


def pooled_distinct_n(samples: list[list[int]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of several token sequences (a prompt's K samples), none spanning two
    samples: 1.0 when no n-gram repeats within or across them, 1/K for K copies of one sample without repetition."""
    grams = [gram for ids in samples for gram in zip(*(ids[i:] for i in range(n)))]
    return len(set(grams)) / len(grams) if grams else math.nan


def smc_fields(out, prompt_index: int) -> dict:
    """The SMC record of one prompt of a pipeline output (empty without resampling): the steps where the samples
    were weighed, the prompt's ESS and whether it resampled at each, and each final sample's ancestor."""
    if out.ancestry is None:
        return {}
    return {
        "smc": {
            "steps": out.resample_steps,
            "ess": out.ess[:, prompt_index].tolist(),
            "resampled": [row[prompt_index] for row in out.resampled],
            "ancestry": out.ancestry[prompt_index].tolist(),
        }
    }


def batch_generator(seed: int, start: int) -> torch.Generator:
    """The random generator of the batch that starts at prompt `start`: seeded with `seed` for the first batch (a
    run in one batch draws as it always did) and with a seed derived from `(seed, start)` for the others.

    Every batch draws from its own generator, so its records depend on the seed and on the batch alone: the same
    whether the batches run in one process, in several (`accelerate launch`), or in a resumed run.
    """
    if start == 0:
        return torch.Generator().manual_seed(seed)
    digest = hashlib.sha256(f"{seed}:{start}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (returns nothing: a console script's return value becomes its exit status)."""
    parser, args = parse_args(argv)
    check_args(parser, args)
    result = run(args)
    if not PartialState().is_main_process:  # the main process writes the gathered records
        return
    report = markdown_report(result)
    print(report)
    if args.output:
        write_json_atomic(args.output, result)  # the complete run, without the resume progress
    if args.markdown:
        write_text_atomic(args.markdown, report + "\n")
    print(json.dumps({"top1": {m: s["top1"] for m, s in result["summary"].items()}}))


if __name__ == "__main__":
    main()
