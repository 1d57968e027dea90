"""EntRGi on the embedded offline stack: a Gradio Space (CPU, nothing downloaded at run time).

    python examples/space/app.py          # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)

Samples a prompt without guidance (Best-of-N) and with reward guidance (EntRGi, APS or the expectation) toward a
target description, with the same seed, and shows the best sample of each side by side with its reward and the
held-out judge's score, all K samples, and the denoising of the guided sample as an animation. Everything it
computes comes from the package (`entrgi_pipelines.demo`, the same code as `entrgi animate`); this file is the page.

API (for `gradio_client`): `generate(prompt, target, method, num_samples, steps, gen_length, guidance_steps, eta,
seed)` returns `(unguided, guided, samples, animation)`: two texts, a table and the path of a GIF.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import gradio as gr

from entrgi_pipelines.demo import (
    SAMPLES_TABLE_HEADERS,
    MethodSamples,
    compare_methods,
    denoising_gif,
    samples_table,
    sampling_settings,
)
from entrgi_pipelines.guidance.entrgi import GUIDANCE_METHODS
from entrgi_pipelines.stack import load_embedded_stack

# Sized to answer within 30 s on 2 CPU cores (docs/space.md has the measurement); the sliders allow more.
DEFAULTS = {"num_samples": 4, "steps": 32, "gen_length": 32, "guidance_steps": 3, "eta": 0.5, "seed": 0}
EXAMPLES = [
    ["Describe a quiet Sunday afternoon.", "food and eating"],
    ["Tell me about an old bridge in a small town.", "science and nature"],
    ["Write a few sentences about a long road trip.", "sports and games"],
]
# One request at a time: the pipeline keeps per-call state (the scheduler's step) and one call already uses every
# core; further requests wait in the queue.
CONCURRENCY_LIMIT = 1
KEEP_ANIMATIONS = 16  # our GIFs, once Gradio has copied them into its own cache

STACK = load_embedded_stack()  # once, at start-up
STACK.pipe.set_progress_bar_config(disable=True)
ANIMATIONS = Path(tempfile.mkdtemp(prefix="entrgi-space-"))


def describe(side: MethodSamples, prompt: str) -> str:
    best = side.best
    return (
        f"reward {side.rewards[best]:+.4f} · judge {side.judge[best]:.3f} (best of {len(side.texts)})\n\n"
        f"{prompt} {side.texts[best]}"
    )


def animation_path() -> Path:
    for old in sorted(ANIMATIONS.glob("*.gif"), key=lambda p: p.stat().st_mtime)[:-KEEP_ANIMATIONS]:
        old.unlink(missing_ok=True)
    return ANIMATIONS / f"{uuid.uuid4().hex}.gif"


def whole_slider(name: str, minimum: int, maximum: int, label: str) -> gr.Slider:
    return gr.Slider(minimum, maximum, DEFAULTS[name], step=1, precision=0, label=label, elem_id=name)


def generate(
    prompt,
    target,
    method,
    num_samples,
    steps,
    gen_length,
    guidance_steps,
    eta,
    seed,
    progress=gr.Progress(),  # noqa: B008 (Gradio passes the request's progress tracker through this default)
):
    """Unguided (Best-of-N) vs guided samples of `prompt` toward `target`: texts, all samples, animation."""
    try:
        settings = sampling_settings(num_samples, steps, gen_length, guidance_steps, eta)
        sides = compare_methods(
            STACK, prompt, target, method, settings, seed, progress=lambda done, what: progress(done, desc=what)
        )
    except (ValueError, TypeError) as error:  # a bad value in the form: say what to change, no traceback
        raise gr.Error(str(error), title="Invalid input", print_exception=False) from None
    unguided, guided = sides
    gif = denoising_gif(STACK, sides, animation_path(), prompt, target)
    return describe(unguided, prompt), describe(guided, prompt), samples_table(sides), str(gif)


with gr.Blocks(title="EntRGi: reward-guided diffusion LM", delete_cache=(600, 3600)) as demo:
    gr.Markdown(
        "# EntRGi: entropy-aware reward guidance for a diffusion language model\n"
        "A small masked diffusion LM answers the **prompt**; a MiniLM similarity reward steers every denoising "
        "step toward the **target** description. Left: the best of K unguided samples (Best-of-N). Right: the best "
        "of K guided samples, same seed. The judge is a held-out topic classifier, never used for guidance."
    )
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0][0], elem_id="prompt")
            target = gr.Textbox(label="Target description", value=EXAMPLES[0][1], elem_id="target")
            method = gr.Radio(list(GUIDANCE_METHODS), value="entrgi", label="Guidance method", elem_id="method")
            run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=3):
            with gr.Row():
                num_samples = whole_slider("num_samples", 1, 8, "K: samples")
                steps = whole_slider("steps", 1, 128, "T: denoising steps")
                gen_length = whole_slider("gen_length", 1, 128, "L: new tokens")
            with gr.Row():
                guidance_steps = whole_slider("guidance_steps", 0, 8, "M: Adam steps")
                eta = gr.Slider(0.05, 2.0, DEFAULTS["eta"], step=0.05, label="eta: learning rate", elem_id="eta")
                seed = gr.Number(DEFAULTS["seed"], precision=0, minimum=0, label="seed", elem_id="seed")
    gr.Examples(EXAMPLES, [prompt, target])
    with gr.Row():
        unguided = gr.Textbox(label="Best-of-N (unguided)", lines=6, elem_id="unguided")
        guided = gr.Textbox(label="Guided (same seed)", lines=6, elem_id="guided")
    animation = gr.Image(label="Denoising, side by side", type="filepath", format="gif", elem_id="animation")
    samples = gr.Dataframe(headers=SAMPLES_TABLE_HEADERS, label="All samples", wrap=True, elem_id="samples")
    run.click(
        generate,
        [prompt, target, method, num_samples, steps, gen_length, guidance_steps, eta, seed],
        [unguided, guided, samples, animation],
        api_name="generate",
    )
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT)


if __name__ == "__main__":
    demo.launch()  # reads GRADIO_SERVER_NAME and GRADIO_SERVER_PORT
