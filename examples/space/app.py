"""EntRGi on the embedded offline stack (or on your own models): a Gradio Space.

    python examples/space/app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Samples a prompt without guidance (Best-of-N) and with reward guidance (EntRGi, APS or the expectation) toward a
target description, with the same seed, and shows the best answer of each side with the held-out judge's on-topic
probability and the reward, all K samples, and the denoising of both best answers as an animation. Everything it
computes comes from the package (`entrgi_pipelines.demo`, the same code as `entrgi animate`); this file is the page.

Visitors share one worker: a request runs alone (the pipeline keeps per-call state and one call uses every core).
Before running, the page shows the request's estimated time from a cost model fitted to measured requests
(docs/space_defaults.json) and scaled to this server's recent answers; a request estimated over the budget is refused
with the setting to lower. Stop, a closed tab and a cancelled or dropped API call end the running request at the next
denoising step and free the worker.

Environment variables:
    ENTRGI_PIPELINE_REPO, ENTRGI_REWARD_REPO, ENTRGI_JUDGE_REPO (optional): run on these Hub repos (a saved
        `EntRGiPipeline`, a one-label `*ForSequenceClassification` reward model, a (target, text) pair classifier
        whose first output is an on-topic probability) instead of the embedded stack; in bfloat16 on CUDA when a GPU is
        there. With the `spaces` package (Hugging Face ZeroGPU) the generation runs under `spaces.GPU`.
    ENTRGI_TRUST_REMOTE_CODE=1: let the pipeline repo's diffusion LM run its own code (Dream/LLaDA remote code).
    ENTRGI_SPACE_BUDGET_S: the longest estimated request accepted, in seconds (default 120).
    ENTRGI_SPACE_DEFAULTS: a JSON object overriding the form's defaults (and the cached examples' settings).
    ENTRGI_SPACE_SWEEP: the measured sweep to read (default: space_defaults.json here, else docs/ of the repo).

API (for `gradio_client`): `generate(prompt, target, method, num_samples, steps, gen_length, guidance_steps, eta,
seed, block_length=0, threshold=0, commit_schedule="time", confidence="entropy")` returns `(unguided, guided, samples,
animation)`: two texts, a table and the path of a GIF. `job.cancel()` stops a submitted request at its next step.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import statistics
import tempfile
import threading
import time
import uuid
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from entrgi_pipelines.demo import (
    METHOD_LABELS,
    CostModel,
    MethodSamples,
    RequestCancelled,
    compare_methods,
    denoising_gif,
    distinct_sides,
)
from entrgi_pipelines.runs import check_decoding, sampling_settings
from entrgi_pipelines.schedulers.scheduling_masked_diffusion import COMMIT_SCHEDULES, CONFIDENCE_RULES
from entrgi_pipelines.stack import EmbeddedStack, load_embedded_stack
from entrgi_pipelines.stack.text import readable_text

HERE = Path(__file__).resolve().parent
# The measured defaults sweep (studies/space_defaults.py): next to this file in a deployed Space, in docs/ in the repo.
SWEEP_FILES = [HERE / "space_defaults.json", HERE.parents[1] / "docs" / "space_defaults.json"]
if os.environ.get("ENTRGI_SPACE_SWEEP"):  # another measurement (e.g. on the Space's own hardware)
    SWEEP_FILES.insert(0, Path(os.environ["ENTRGI_SPACE_SWEEP"]))
# Chosen by the sweep (docs/space.md, `chosen` in docs/space_defaults.json; a test checks they agree): the largest
# held-out judge lift within 30 s per request on one core.
DEFAULTS = {
    "method": "entrgi",
    "num_samples": 4,
    "steps": 16,
    "gen_length": 16,
    "guidance_steps": 3,
    "eta": 2.0,
    "seed": 0,
}
DEFAULTS.update(json.loads(os.environ.get("ENTRGI_SPACE_DEFAULTS", "{}")))
BUDGET_S = float(os.environ.get("ENTRGI_SPACE_BUDGET_S", "120"))
# The examples: the first rows of the bundled v2 prompts (the same prompts the sweep measured), never hand-picked.
NUM_EXAMPLES = 3
KEEP_ANIMATIONS = 16  # our GIFs, once Gradio has copied them into its own cache
METHODS = [("EntRGi", "entrgi"), ("APS (straight-through)", "aps"), ("Expectation", "expectation"), ("None", "none")]
# The page's name of each argument (error messages use them) and its one-line explanation.
LABELS = {
    "prompt": ("Prompt", "What the model answers."),
    "target": ("Steer toward", "A short description of the topic the guided answer should be about."),
    "method": ("Guidance method", "How the reward steers: EntRGi (the paper's), its two baselines, or none."),
    "num_samples": ("Samples per side (K)", "Each side draws K answers and shows the one the reward ranks first."),
    "steps": ("Denoising steps (T)", "Rounds that unmask the answer: more rounds, more time."),
    "gen_length": ("Answer length in tokens (L)", "How long the answer is; time grows with it."),
    "guidance_steps": ("Reward steps per round (M)", "Adam steps on the reward at every round; 0 turns guidance off."),
    "eta": ("Guidance strength (eta)", "Learning rate of those steps: higher steers harder and can cost fluency."),
    "seed": ("Seed", "Both sides use it; the same seed gives the same answers."),
    "block_length": (
        "Block length",
        "Decode the answer in blocks of this many tokens, left to right; 0: one block.",
    ),
    "threshold": (
        "Confidence threshold",
        "Commit every position at least this confident, in (0, 1]; 0: a fixed number per step.",
    ),
    "commit_schedule": (
        "Commit schedule",
        "How many positions a step commits: time, even (LLaDA's), time_floor (Dream's).",
    ),
    "confidence": ("Confidence rule", "Which masked positions are committed first."),
}
ALIASES = {"num_inference_steps": "steps"}  # the pipeline's names for the page's settings
SLIDERS = {"num_samples": (1, 8), "steps": (1, 128), "gen_length": (1, 128), "guidance_steps": (0, 8)}
SAMPLES_HEADERS = ["method", "sample", "reward", "on-topic", "best", "text"]

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
LOG = logging.getLogger("entrgi-space")
for noisy in ("httpx", "huggingface_hub"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def label(name: str) -> str:
    return f"“{LABELS[name][0]}”"


def page_words(message: str) -> str:
    """A message from the package with each argument's name replaced by the page's label for it."""

    def words(match: re.Match) -> str:
        name = ALIASES.get(match.group(1), match.group(1))
        text = LABELS[name][0] if name in LABELS else match.group(1)
        return f"“{text}”" + (f" {match.group(2)}" if match.group(2) else "")

    return re.sub(r"`(\w+)(?:=([^`]*))?`", words, message)  # `name` and `name=value`


def refuse(message: str, title: str = "Please change a setting") -> gr.Error:
    """The error to raise for a refused request: one line in the log (no traceback), the message on the page.

    API clients get the title too; the page's toast says "Error" whatever the title (Gradio 6.31's frontend reads a
    field the server does not send), so every message names the setting in the page's words by itself.
    """
    LOG.info("refused: %s", message.replace("\n", " "))
    return gr.Error(message, title=title, print_exception=False)


# ----------------------------------------------------------------------------------------------------------------------
# Models: the embedded stack, or Hub repos named by environment variables
# ----------------------------------------------------------------------------------------------------------------------


def load_stack() -> tuple[EmbeddedStack, bool]:
    """The models, and whether they are the embedded stack (whose WordPiece text gets cleaned up for display)."""
    repos = {name: os.environ.get(f"ENTRGI_{name.upper()}_REPO") for name in ("pipeline", "reward", "judge")}
    if not repos["pipeline"]:
        if repos["reward"] or repos["judge"]:
            raise SystemExit("ENTRGI_REWARD_REPO / ENTRGI_JUDGE_REPO need ENTRGI_PIPELINE_REPO (the diffusion LM) too.")
        stack = load_embedded_stack()
        stack.pipe.set_progress_bar_config(disable=True)
        return stack, True
    if not repos["reward"]:
        raise SystemExit("ENTRGI_PIPELINE_REPO needs ENTRGI_REWARD_REPO (the reward model that guides) too.")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from entrgi_pipelines import EntRGiPipeline

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    remote = os.environ.get("ENTRGI_TRUST_REMOTE_CODE") == "1"
    pipe = EntRGiPipeline.from_pretrained(repos["pipeline"], torch_dtype=dtype, trust_remote_code=remote)
    pipe.set_progress_bar_config(disable=True)

    def classifier(repo: str, dtype: torch.dtype):
        model = AutoModelForSequenceClassification.from_pretrained(repo, torch_dtype=dtype, use_safetensors=True)
        return model.eval(), AutoTokenizer.from_pretrained(repo)

    reward, reward_tokenizer = classifier(repos["reward"], dtype)
    # the judge reads a few decoded texts once per request: it stays on the CPU in float32, where its inputs are
    judge, judge_tokenizer = classifier(repos["judge"], torch.float32) if repos["judge"] else (None, None)
    if cuda:
        pipe.to("cuda")
        reward.to("cuda")
    LOG.info("models: %s, on %s in %s", repos, "cuda" if cuda else "cpu", dtype)
    return EmbeddedStack(pipe, reward, reward_tokenizer, judge, judge_tokenizer), False


STACK, EMBEDDED = load_stack()
ANIMATIONS = Path(tempfile.mkdtemp(prefix="entrgi-space-"))


# ----------------------------------------------------------------------------------------------------------------------
# The measured sweep: the effect at the defaults, and the cost model
# ----------------------------------------------------------------------------------------------------------------------


def read_sweep() -> dict:
    for path in SWEEP_FILES:
        if path.is_file():
            return json.loads(path.read_text())
    raise SystemExit(
        f"space_defaults.json not found in {[str(p) for p in SWEEP_FILES]}: copy docs/space_defaults.json."
    )


def measured_requests(sweep: dict) -> list[dict]:
    """Every request the sweep timed on one thread (its configs' and the shapes timed for the cost model), in the
    form `CostModel.fit` reads."""
    shape = ("num_samples", "steps", "gen_length", "guidance_steps")
    timed = [({k: config[k] for k in shape}, r) for config in sweep["configs"].values() for r in config["records"]]
    timed += [({k: r[k] for k in shape}, r) for r in sweep.get("shape_timings", [])]
    return [
        {
            **settings,
            "prompt_tokens": r["prompt_tokens"],
            "unguided_s": r["unguided_cpu_s"],
            "guided_s": r["guided_cpu_s"],
            "extra_s": r["judge_cpu_s"] + r["animation_cpu_s"],
        }
        for settings, r in timed
    ]


def effect_statement(sweep: dict) -> str:
    """The measured typical effect at the chosen defaults, in words (from the sweep's JSON, not typed)."""
    chosen = sweep["chosen"]
    s = chosen["summary"]
    lift, ci = 100 * s["judge_lift"], 100 * s["judge_lift_ci"]
    settings = (
        f"{METHOD_LABELS[chosen['method']]}, K={chosen['num_samples']}, T=L={chosen['steps']}, "
        f"M={chosen['guidance_steps']}, eta={chosen['eta']}"
    )
    return (
        f"**What to expect.** Over the first {s['n']} bundled prompts at the measured defaults ({settings}), guidance "
        f"raised the on-topic judge from **{s['judge_unguided']:.0%} to {s['judge_guided']:.0%}** on average "
        f"({lift:+.0f} points, 95% interval {lift - ci:+.0f} to {lift + ci:+.0f}); it rose for "
        f"{round(s['judge_raised_share'] * s['n'])} of the {s['n']} prompts, so a single answer can also fall."
    )


SWEEP = read_sweep()
COST = CostModel.fit(measured_requests(SWEEP))
# This server's speed against the sweep's single-threaded CPU seconds: the median of the last answers' ratios.
SPEED_RATIOS: deque[float] = deque(maxlen=8)
MIN_CALIBRATION_S = 5.0


def speed() -> float:
    return statistics.median(SPEED_RATIOS) if SPEED_RATIOS else 1.0


def calibrated() -> bool:
    """Whether estimates mean seconds here: the cost model was measured on the embedded stack on one CPU thread, so
    other models need one measured answer first."""
    return EMBEDDED or bool(SPEED_RATIOS)


def prompt_tokens(prompt: str) -> int:
    return len(STACK.pipe.tokenizer(prompt or "")["input_ids"])


def estimate_seconds(form: dict) -> float:
    model = CostModel(COST.unguided, COST.guided, COST.extra, speed=speed())
    return model.seconds(
        form["num_samples"],
        form["steps"],
        form["gen_length"],
        form["guidance_steps"],
        prompt_tokens(form["prompt"]),
        form["method"],
    )


def what_to_lower(form: dict) -> str:
    """The settings that, lowered alone, bring the request within the budget, with the largest value that fits."""
    options = []
    for name in ("steps", "gen_length", "num_samples", "guidance_steps"):
        lowest = 0 if name == "guidance_steps" else 1
        for value in range(int(form[name]) - 1, lowest - 1, -1):
            if estimate_seconds({**form, name: value}) <= BUDGET_S:
                options.append(f"{label(name)} to {value}")
                break
    if not options:
        return "Lower the settings in “Advanced settings” (fewer samples, steps or tokens)."
    return "Lower " + " or ".join(options) + " (in “Advanced settings”)."


def estimate_text(prompt, method, num_samples, steps, gen_length, guidance_steps) -> str:
    try:
        form = dict(
            prompt=prompt,
            method=method,
            num_samples=int(num_samples),
            steps=int(steps),
            gen_length=int(gen_length),
            guidance_steps=int(guidance_steps),
        )
        seconds = estimate_seconds(form)
    except (TypeError, ValueError):
        return ""
    if not calibrated():
        return "Estimated time: unknown until this server has answered one request (the cost model is the CPU one)."
    if seconds > BUDGET_S:
        return f"⚠️ Estimated time **{seconds:.0f} s**, over this Space's {BUDGET_S:.0f} s limit. {what_to_lower(form)}"
    return f"Estimated time: **about {max(seconds, 1):.0f} s** (limit {BUDGET_S:.0f} s)."


# ----------------------------------------------------------------------------------------------------------------------
# One request: checked, run in a worker thread that stops at the next step when the visitor leaves
# ----------------------------------------------------------------------------------------------------------------------

RUNNING: dict[str, set[threading.Event]] = {}  # session -> stop flags of its running requests
ONE_CALL = threading.Lock()  # the pipeline keeps per-call state: one call at a time, even after a cancellation


def shown(text: str) -> str:
    return readable_text(text) if EMBEDDED else text


def on_topic(side: MethodSamples, i: int) -> str:
    return "—" if side.judge[i] != side.judge[i] else f"{side.judge[i]:.0%}"


def describe(side: MethodSamples, prompt: str) -> str:
    best = side.best
    judge = "" if side.judge[best] != side.judge[best] else f"on-topic {side.judge[best]:.0%} · "
    return f"{judge}reward {side.rewards[best]:+.3f} (best of {len(side.texts)})\n\n{prompt} {shown(side.texts[best])}"


def samples_rows(sides: tuple[MethodSamples, MethodSamples]) -> list[list]:
    rows = []
    for side in distinct_sides(sides):  # method "none": one side
        for i in sorted(range(len(side.texts)), key=lambda i: -side.rewards[i]):
            best = "★" if i == side.best else ""
            rows.append([side.label, i + 1, round(side.rewards[i], 3), on_topic(side, i), best, shown(side.texts[i])])
    return rows


def animation_path() -> Path:
    for old in sorted(ANIMATIONS.glob("*.gif"), key=lambda p: p.stat().st_mtime)[:-KEEP_ANIMATIONS]:
        old.unlink(missing_ok=True)
    return ANIMATIONS / f"{uuid.uuid4().hex}.gif"


def check_form(
    prompt, target, method, num_samples, steps, gen_length, guidance_steps, eta, seed, *decoding: Any
) -> dict:
    """The form as the package takes it, or a `gr.Error` in the page's words (before any model work)."""
    block_length, threshold, commit_schedule, confidence = decoding
    # 0 (what an emptied number box sends) or None: blocks and threshold decoding off
    block_length = None if block_length in (None, 0) else block_length
    threshold = None if threshold in (None, 0) else threshold
    try:
        settings = sampling_settings(
            num_samples,
            steps,
            gen_length,
            guidance_steps,
            eta,
            block_length=block_length,
            threshold=threshold,
            commit_schedule=commit_schedule,
            confidence=confidence,
        )
        if commit_schedule not in COMMIT_SCHEDULES:
            raise ValueError(f"`commit_schedule` must be one of {COMMIT_SCHEDULES}, got {commit_schedule!r}.")
        if confidence not in CONFIDENCE_RULES:
            raise ValueError(f"`confidence` must be one of {CONFIDENCE_RULES}, got {confidence!r}.")
        check_decoding(settings)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("`prompt` must be a non-empty text, e.g. 'Describe a quiet Sunday afternoon.'")
        if not isinstance(target, str) or not target.strip():
            raise ValueError("`target` must be a non-empty description of a topic, e.g. 'food and eating'.")
        if method not in dict(METHODS).values():
            raise ValueError(f"`method` must be one of {[v for _, v in METHODS]}, got {method!r}.")
        if not isinstance(eta, (int, float)) or not eta > 0:
            raise ValueError(f"`eta` must be a number > 0, got {eta!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, float)) or seed != int(seed) or seed < 0:
            raise ValueError(f"`seed` must be a whole number >= 0, got {seed!r}.")
    except (ValueError, TypeError) as error:
        raise refuse(page_words(str(error))) from None
    form = dict(prompt=prompt, target=target, method=method, seed=int(seed), settings=settings, **vars(settings))
    seconds = estimate_seconds(form)
    if calibrated() and seconds > BUDGET_S:
        raise refuse(
            f"This request would take about {seconds:.0f} s, over this Space's limit of {BUDGET_S:.0f} s. "
            + what_to_lower(form),
            title="Too long for this Space",
        )
    return form


def run_request(form: dict, stop: threading.Event, progress, calibration: bool = False) -> tuple:
    """Both halves, the judge and the animation (in a worker thread); `RequestCancelled` once `stop` is set.

    Every answer predicted to take `MIN_CALIBRATION_S` or more (or any, with `calibration=True`) updates this
    server's speed against the cost model."""
    tokens = prompt_tokens(form["prompt"])
    model = CostModel(COST.unguided, COST.guided, COST.extra)
    halves = model.halves(form["num_samples"], form["steps"], form["gen_length"], form["guidance_steps"], tokens)
    started = time.perf_counter()
    with ONE_CALL:
        sides = compare_methods(
            STACK,
            form["prompt"],
            form["target"],
            form["method"],
            form["settings"],
            form["seed"],
            progress=lambda done, what: progress(done, desc=what),
            cancelled=stop.is_set,
            half_costs=halves,
        )
        gif = denoising_gif(STACK, sides, animation_path(), form["prompt"], form["target"], stacked=True)
    seconds = time.perf_counter() - started
    predicted = model.seconds(**{k: form[k] for k in SPEED_KEYS}, prompt_tokens=tokens)
    if calibration or predicted >= MIN_CALIBRATION_S:  # tiny requests are mostly fixed overheads: they mislead
        SPEED_RATIOS.append(seconds / predicted)
    LOG.info(
        "answered in %.1f s (%s, K=%d, T=%d, L=%d, M=%d; cost model %.1f s; speed %.3g)",
        seconds,
        form["method"],
        *(form[k] for k in SPEED_KEYS[:4]),
        predicted,
        speed(),
    )
    return sides, gif


SPEED_KEYS = ("num_samples", "steps", "gen_length", "guidance_steps", "method")
try:  # Hugging Face ZeroGPU: the generation holds a GPU only while it runs
    import spaces

    run_request = spaces.GPU(duration=int(BUDGET_S) + 60)(run_request)
    LOG.info("ZeroGPU: the generation runs under spaces.GPU")
except ImportError:
    spaces = None


def calibrate() -> None:
    """Other models than the embedded stack: one small request at start-up, so that estimates mean seconds here
    (not on ZeroGPU, which lends a GPU only to requests: there the first answer calibrates)."""
    form = dict(prompt="Describe a quiet Sunday afternoon.", target="food and eating", method="entrgi", seed=0)
    settings = sampling_settings(num_samples=2, steps=16, gen_length=16, guidance_steps=1, eta=1.0)
    run_request({**form, "settings": settings, **vars(settings)}, threading.Event(), lambda *a, **k: None, True)
    LOG.info("calibrated: this server runs at %.3g x the cost model's seconds", speed())


if not EMBEDDED and spaces is None:
    calibrate()


SCORES = re.compile(r"^(?:on-topic (\d+)% · )?reward ([+-]\d+\.\d+) \(best of (\d+)\)")


def view(unguided_text: str, guided_text: str, method: str) -> tuple:
    """The result boxes' labels from their texts (the API returns plain texts; the page dresses them): the change of
    the on-topic judge, the side more on topic highlighted (by the reward when there is no judge), and with method
    `none` one box that says so."""
    found = [SCORES.match(text or "") for text in (unguided_text, guided_text)]
    if not all(found):
        return gr.update(label="Without guidance", elem_classes=[]), gr.update(label="With guidance", elem_classes=[])
    if method == "none":
        note = "Without guidance (method “None”: guidance is off, so there is no guided answer to compare)"
        return gr.update(label=note, elem_classes=[]), gr.update(visible=False)
    judged = all(f.group(1) is not None for f in found)
    scores = [float(f.group(1) if judged else f.group(2)) for f in found]
    better = 1 if scores[1] > scores[0] else 0 if scores[0] > scores[1] else None
    change = f" · on-topic {scores[1] - scores[0]:+.0f} points" if judged else ""
    name = dict((v, k) for k, v in METHODS)[method] if method in dict(METHODS).values() else "reward"
    labels = [
        f"Without guidance (best of {found[0].group(3)})",
        f"With {name} guidance (best of {found[1].group(3)}){change}",
    ]
    mark = " ★ more on topic" if judged else " ★ higher reward"
    return tuple(
        gr.update(label=labels[i] + (mark if better == i else ""), elem_classes=["better"] if better == i else [])
        | ({"visible": True} if i == 1 else {})
        for i in range(2)
    )


async def generate(
    prompt,
    target,
    method,
    num_samples,
    steps,
    gen_length,
    guidance_steps,
    eta,
    seed,
    block_length=None,
    threshold=None,
    commit_schedule="time",
    confidence="entropy",
    request: gr.Request = None,
    progress=gr.Progress(),  # noqa: B008 (Gradio passes the request's progress tracker through this default)
):
    """Unguided (Best-of-N) vs guided samples of `prompt` toward `target`: texts, all samples, animation."""
    form = check_form(
        prompt,
        target,
        method,
        num_samples,
        steps,
        gen_length,
        guidance_steps,
        eta,
        seed,
        block_length,
        threshold,
        commit_schedule,
        confidence,
    )
    stop = threading.Event()
    session = getattr(request, "session_hash", None) or "-"
    RUNNING.setdefault(session, set()).add(stop)
    context = contextvars.copy_context()  # Gradio's progress tracker lives in the request's context
    work = asyncio.get_running_loop().run_in_executor(None, partial(context.run, run_request, form, stop, progress))
    try:
        sides, gif = await asyncio.shield(work)
    except asyncio.CancelledError:  # Stop, or the API client cancelled: stop at the next step, then free the worker
        stop.set()
        await finish(work)
        LOG.info("stopped: the request was cancelled")
        raise
    except RequestCancelled as reason:  # the visitor left (closed tab, dropped connection)
        LOG.info("stopped: the visitor left (%s)", reason)
        raise gr.Error("Stopped.", title="Stopped", print_exception=False) from None
    except (ValueError, TypeError) as error:  # e.g. a prompt too long for the model: the package's message
        raise refuse(page_words(str(error))) from None
    finally:
        RUNNING[session].discard(stop)
        if not RUNNING[session]:
            RUNNING.pop(session, None)
    unguided, guided = sides
    return describe(unguided, form["prompt"]), describe(guided, form["prompt"]), samples_rows(sides), str(gif)


async def finish(work: asyncio.Future) -> None:
    """Waits until the worker thread has stopped, whatever else is cancelled meanwhile."""
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            continue
        except Exception:
            return


def leave(request: gr.Request):
    """A closed tab or a dropped client: stop its running requests at their next step."""
    for stop in RUNNING.get(request.session_hash, ()):
        stop.set()


def stop_requests(request: gr.Request):
    leave(request)
    return idle_buttons()


def busy_buttons():
    return gr.update(value="Generating…", interactive=False), gr.update(interactive=True)


def idle_buttons():
    return gr.update(value="Generate", interactive=True), gr.update(interactive=False)


# ----------------------------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------------------------


def labelled(component, name: str):
    """Gradio's own range check, in the page's words and without a traceback in the server log."""
    check = component.preprocess

    def preprocess(payload):
        try:
            return check(payload)
        except gr.Error as error:
            raise refuse(f"{label(name)}: {error.message}") from None

    component.preprocess = preprocess
    return component


def field(component: type, name: str, *args, **kwargs):
    """A settings component with the page's label, help text and element id for `name`, its range check labelled."""
    text, info = LABELS[name]
    return labelled(component(*args, label=text, info=info, elem_id=name, **kwargs), name)


def whole_slider(name: str) -> gr.Slider:
    low, high = SLIDERS[name]
    return field(gr.Slider, name, low, high, step=1, precision=0, min_width=220)


def example_rows() -> list[list]:
    from entrgi_pipelines.bench import read_prompts

    settings = [DEFAULTS[k] for k in ("method", "num_samples", "steps", "gen_length", "guidance_steps", "eta", "seed")]
    return [[row["prompt"], row["target"], *settings] for row in read_prompts(None, NUM_EXAMPLES, "v2")]


REWARD_LINE = (
    "the cosine similarity (−1 to 1) of the answer's and the target's MiniLM sentence embeddings"
    if EMBEDDED
    else f"the score of the reward model {os.environ.get('ENTRGI_REWARD_REPO')}"
)
JUDGE_LINE = (
    "**On-topic** is a separate topic classifier's probability that the answer is about the target: it never steers, "
    "so it checks the guidance. "
    if STACK.judge is not None
    else ""
)
CSS = """
.better textarea { border: 2px solid #16a34a !important; background: #f0fdf4 !important; }
#animation img { max-width: 100%; height: auto; }
footer { flex-wrap: wrap; }
"""

with gr.Blocks(title="EntRGi: reward-guided diffusion LM", delete_cache=(600, 3600)) as demo:
    gr.Markdown(
        "# EntRGi: steering a diffusion language model toward a topic\n"
        "A small masked diffusion LM answers the prompt twice with the same seed: once on its own (the best of K "
        "answers by reward) and once with reward guidance pulling every denoising step toward the target."
    )
    if EMBEDDED:  # measured on the embedded stack only
        gr.Markdown(effect_statement(SWEEP), elem_id="effect")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=300):
            prompt = gr.Textbox(label=LABELS["prompt"][0], info=LABELS["prompt"][1], elem_id="prompt", lines=1)
            target = gr.Textbox(label=LABELS["target"][0], info=LABELS["target"][1], elem_id="target", lines=1)
        with gr.Column(scale=2, min_width=300):
            method = field(gr.Radio, "method", METHODS)
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        with gr.Row():
            num_samples, steps, gen_length = (whole_slider(n) for n in ("num_samples", "steps", "gen_length"))
        with gr.Row():
            guidance_steps = whole_slider("guidance_steps")
            eta = field(gr.Slider, "eta", 0.05, 2.0, step=0.05, min_width=220)
            seed = field(gr.Number, "seed", precision=0, minimum=0)
        gr.Markdown("Decoding (see docs/decoding.md)")
        with gr.Row():
            block_length = field(gr.Number, "block_length", 0, precision=0, minimum=0)
            threshold = field(gr.Number, "threshold", 0, minimum=0, maximum=1, step=0.05)
            commit_schedule = field(gr.Dropdown, "commit_schedule", list(COMMIT_SCHEDULES), value="time")
            confidence = field(gr.Dropdown, "confidence", list(CONFIDENCE_RULES), value="entropy")
    with gr.Row():
        run = gr.Button("Generate", variant="primary", elem_id="generate", scale=3, min_width=160)
        stop = gr.Button("Stop", variant="stop", elem_id="stop", interactive=False, scale=1, min_width=100)
    estimate = gr.Markdown(elem_id="estimate")
    status = gr.Markdown(elem_id="status")
    with gr.Row(equal_height=True):
        unguided = gr.Textbox(label="Without guidance", lines=6, elem_id="unguided", min_width=340, buttons=["copy"])
        guided = gr.Textbox(label="With guidance", lines=6, elem_id="guided", min_width=340, buttons=["copy"])
    gr.Markdown(
        f"{JUDGE_LINE}**Reward** is what guidance climbs: {REWARD_LINE}; higher is closer to the target.",
        elem_id="explain",
    )
    gr.Markdown("**The denoising, step by step** (top: without guidance, bottom: with it; grey blocks are masked)")
    animation = gr.Image(type="filepath", format="gif", elem_id="animation", show_label=False, buttons=[])
    samples = gr.Dataframe(
        headers=SAMPLES_HEADERS,
        label="All samples, each side best first",
        wrap=True,
        # pixels, not shares: on a phone the table keeps its columns and scrolls inside its box, not the page
        column_widths=[190, 72, 80, 88, 56, 700],
        elem_id="samples",
        interactive=False,
    )
    inputs = [prompt, target, method, num_samples, steps, gen_length, guidance_steps, eta, seed]
    decoding = [block_length, threshold, commit_schedule, confidence]  # after the nine: older API calls still work
    outputs = [unguided, guided, samples, animation]
    gr.Examples(
        example_rows(),
        inputs,
        outputs,
        fn=generate,
        cache_examples=True,
        example_labels=[f"{p} → {t}" for p, t, *_ in example_rows()],
        label="Examples (the first bundled prompts at the defaults; results cached)",
    )

    busy = run.click(busy_buttons, None, [run, stop], queue=False, show_progress="hidden", api_visibility="private")
    running = busy.then(
        generate, inputs + decoding, outputs, api_name="generate", show_progress_on=[status], concurrency_limit=1
    )
    for after in (running.then, running.failure):  # the page runs `then` only after a success
        after(idle_buttons, None, [run, stop], queue=False, show_progress="hidden", api_visibility="private")
    stop.click(stop_requests, None, [run, stop], cancels=[running], queue=False, api_visibility="private")
    estimate_inputs = [prompt, method, num_samples, steps, gen_length, guidance_steps]
    gr.on(
        [c.change for c in estimate_inputs] + [demo.load],
        estimate_text,
        estimate_inputs,
        estimate,
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )
    # dress the result boxes after every answer: a new request, a cached example, the first example at page load
    for answered in (running.success, unguided.change):
        answered(view, [unguided, guided, method], [unguided, guided], queue=False, api_visibility="private")
    demo.unload(leave)
    demo.queue(default_concurrency_limit=1)


if __name__ == "__main__":
    demo.launch(css=CSS)  # reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT
