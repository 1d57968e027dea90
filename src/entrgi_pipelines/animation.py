"""Denoising animations: masked positions (grey blocks) turning into tokens step by step, methods side by side.

The pipeline records the response tokens after every step with `output_trajectory=True`; this module draws one
panel per method from such a `(T, L)` trajectory and writes an animated GIF with Pillow. The layout of each panel
is fixed by its final tokens, so a masked position is a grey block the size of the word it becomes and nothing
moves while the tokens appear; the tokens committed at a step are highlighted in that step's frame.

Example:
    ```py
    >>> import torch
    >>> from entrgi_pipelines.animation import AnimationPanel, render_frames
    >>> from entrgi_pipelines.testing import tiny_wordpiece_tokenizer
    >>> tokenizer = tiny_wordpiece_tokenizer()
    >>> final = torch.tensor(tokenizer("the cat sat on the mat", add_special_tokens=False)["input_ids"])
    >>> mask = tokenizer.mask_token_id
    >>> steps = torch.stack([final.masked_fill(torch.arange(len(final)) >= k, mask) for k in (2, 4, len(final))])
    >>> frames = render_frames([AnimationPanel("unguided", "reward +0.10", steps)], tokenizer, mask, prompt="once")
    >>> len(frames), frames[0].mode
    (5, 'RGB')
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
TEXT = (24, 24, 27)
PROMPT_TEXT = (100, 100, 110)
FAINT = (175, 175, 182)
MASK = (203, 207, 214)
NEW_TOKEN = (253, 230, 138)
HEADER = (30, 58, 138)
RULE = (228, 228, 231)
PROGRESS = (96, 165, 250)


@dataclass
class AnimationPanel:
    """One column of the animation.

    Args:
        title (`str`): the method, e.g. `"EntRGi"`.
        subtitle (`str`): a second header line, e.g. `"reward +0.31 · judge 0.85"`.
        trajectory (`torch.LongTensor` of shape `(T, L)`): the response tokens after each step, masks included.
    """

    title: str
    subtitle: str
    trajectory: torch.LongTensor


def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    # DejaVu where the system has it (Pillow searches the system font folders), else Pillow's bundled font.
    try:
        return ImageFont.truetype("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def token_pieces(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """The text each token adds to the decoded sequence, leading space included, by decoding growing prefixes.

    Works for WordPiece (`##` continuations), SentencePiece and byte-level BPE alike; a token whose prefix does not
    extend the previous text (a split multi-byte character) falls back to its own decoding.
    """
    pieces, previous = [], ""
    for i in range(len(token_ids)):
        text = tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False)
        pieces.append(text[len(previous) :] if text.startswith(previous) else " " + tokenizer.decode(token_ids[i]))
        previous = text
    return pieces


def _layout(pieces: list[str], font, width: int, line_height: int) -> tuple[list[tuple[int, int, int, str]], int]:
    """Places pieces like wrapped text: `(x, y, width, text)` per piece (text without its leading space), height."""
    space = font.getlength(" ")
    words: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if not words or piece[:1].isspace():
            words.append([i])
        else:
            words[-1].append(i)
    boxes: list[tuple[int, int, int, str] | None] = [None] * len(pieces)
    x = y = 0.0
    for word in words:
        texts = [pieces[i].strip() or "·" for i in word]
        lengths = [max(font.getlength(t), 6.0) for t in texts]
        if x > 0 and x + sum(lengths) > width:
            x, y = 0.0, y + line_height
        for i, text, length in zip(word, texts, lengths):
            if x > 0 and x + length > width:  # a word wider than the panel breaks between its tokens
                x, y = 0.0, y + line_height
            boxes[i] = (round(x), round(y), round(length), text)
            x += length
        x += space
    return boxes, round(y) + line_height


def render_frames(
    panels: list[AnimationPanel],
    tokenizer: Any,
    mask_token_id: int,
    *,
    prompt: str = "",
    target: str | None = None,
    eos_token_id: int | None = None,
    panel_width: int = 400,
    font_size: int = 16,
) -> list[Image.Image]:
    """Frames of the animation: all masked, then one frame per step (new tokens highlighted), then the result.

    Args:
        panels (`list[AnimationPanel]`): the columns, left to right.
        tokenizer: decodes the tokens (any Hugging Face tokenizer).
        mask_token_id (`int`): the id of a masked position.
        prompt (`str`, *optional*): shown in the banner and, in grey, before every response.
        target (`str`, *optional*): the target description, shown in the banner.
        eos_token_id (`int`, *optional*): tokens from the first one on are drawn faint (they are not part of the
            response the pipeline returns).
        panel_width (`int`, defaults to 400): width of a column's text in pixels.
        font_size (`int`, defaults to 16): size of the text.

    Returns:
        `list[PIL.Image.Image]` of `T + 2` RGB frames of equal size.
    """
    if not panels:
        raise ValueError("`panels` must hold at least one `AnimationPanel`.")
    for panel in panels:
        if not torch.is_tensor(panel.trajectory) or panel.trajectory.dim() != 2 or panel.trajectory.shape[0] == 0:
            raise ValueError(
                f"`trajectory` of panel {panel.title!r} must be a `(T, L)` tensor of token ids, e.g. "
                "`out.trajectory[:, b, k]` of a pipeline call with `output_trajectory=True`."
            )
    text_font, bold, small = _font(font_size), _font(font_size, bold=True), _font(font_size - 3)
    line_height = round(font_size * 1.5)
    margin, gap = 20, 32

    prompt_words = [" " + w for w in prompt.split()]
    layouts = []
    for panel in panels:
        final = panel.trajectory[-1].tolist()
        pieces = token_pieces(tokenizer, final)
        if pieces:  # the response starts a new word after the prompt
            pieces[0] = " " + pieces[0].lstrip()
        boxes, height = _layout(prompt_words + pieces, text_font, panel_width, line_height)
        eos = [i for i, token in enumerate(final) if token == eos_token_id]
        faint_from = eos[0] if eos else len(final)
        layouts.append((boxes[: len(prompt_words)], boxes[len(prompt_words) :], faint_from, height))

    banner = 2 * line_height + 10
    header = 2 * line_height + 8
    width = 2 * margin + len(panels) * panel_width + (len(panels) - 1) * gap
    height = banner + header + max(h for *_, h in layouts) + 2 * margin
    steps = max(panel.trajectory.shape[0] for panel in panels)

    def draw_frame(step: int, highlight: bool) -> Image.Image:
        """`step` frames of the trajectory done (0: all masked)."""
        image = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        # Banner: prompt and target, the step counter and a progress line.
        banner_text = f"Prompt: {prompt}" + (f"     Target: {target}" if target else "")
        counter = f"step {step}/{steps}"
        room = width - 2 * margin - draw.textlength(counter, font=small) - 16
        while banner_text and draw.textlength(banner_text, font=text_font) > room:
            banner_text = banner_text[:-2] + "…"
        draw.text((margin, margin), banner_text, font=text_font, fill=TEXT)
        draw.text((width - margin, margin + 2), counter, font=small, fill=PROMPT_TEXT, anchor="ra")
        bar_y = margin + line_height + 4
        draw.line((margin, bar_y, width - margin, bar_y), fill=RULE, width=3)
        draw.line((margin, bar_y, margin + (width - 2 * margin) * step / steps, bar_y), fill=PROGRESS, width=3)

        for column, (panel, (prompt_boxes, boxes, faint_from, _)) in enumerate(zip(panels, layouts)):
            left = margin + column * (panel_width + gap)
            top = banner + margin
            draw.text((left, top - 4), panel.title, font=bold, fill=HEADER)
            draw.text((left, top + line_height - 4), panel.subtitle, font=small, fill=PROMPT_TEXT)
            top += header
            for x, y, _, text in prompt_boxes:
                draw.text((left + x, top + y), text, font=text_font, fill=PROMPT_TEXT)
            frames = panel.trajectory
            # Step k's frame is trajectory[k - 1]; a shorter trajectory stays on its last frame.
            current = frames[min(step, len(frames)) - 1] if step > 0 else None
            before = frames[min(step - 1, len(frames)) - 1] if step > 1 else None
            for i, (x, y, w, text) in enumerate(boxes):
                masked = current is None or int(current[i]) == mask_token_id
                if masked:
                    draw.rounded_rectangle(
                        (left + x, top + y + 3, left + x + w, top + y + line_height - 5), radius=3, fill=MASK
                    )
                    continue
                if highlight and (before is None or int(before[i]) == mask_token_id):
                    draw.rectangle(
                        (left + x - 1, top + y + 1, left + x + w + 1, top + y + line_height - 3), fill=NEW_TOKEN
                    )
                draw.text((left + x, top + y), text, font=text_font, fill=FAINT if i >= faint_from else TEXT)
        return image

    return [draw_frame(step, highlight=True) for step in range(steps + 1)] + [draw_frame(steps, highlight=False)]


def _palette() -> Image.Image:
    """The drawing colours exactly, plus the anti-aliasing blends of each foreground on each background.

    Pillow maps pixels to a given palette through a cache of coarse colour cells, so a blend closer than a cell to
    a drawing colour could stand in for it: such blends are left out.
    """
    foregrounds = (TEXT, PROMPT_TEXT, FAINT, HEADER, MASK, PROGRESS, RULE)
    base = [BACKGROUND, NEW_TOKEN, *foregrounds]
    colors = list(base)
    for background in (BACKGROUND, NEW_TOKEN):
        for foreground in foregrounds:
            for level in range(1, 8):
                blend = tuple(round(b + (f - b) * level / 8) for f, b in zip(foreground, background))
                if all(max(abs(x - y) for x, y in zip(blend, color)) > 8 for color in base) and blend not in colors:
                    colors.append(blend)
    palette = Image.new("P", (1, 1))
    palette.putpalette([channel for color in colors for channel in color] + [0, 0, 0] * (256 - len(colors)))
    return palette


def save_gif(frames: list[Image.Image], path: str | Path, *, frame_ms: int | None = None, hold_ms: int = 3000) -> Path:
    """Writes `frames` (from [`render_frames`]) as a looping GIF; the last frame is held for `hold_ms`.

    `frame_ms` defaults to about 5 s for the whole denoising (between 60 and 300 ms a frame). All frames share one
    palette, so the file stays small.
    """
    if len(frames) < 2:
        raise ValueError(f"`frames` must hold at least 2 frames, got {len(frames)}.")
    if frame_ms is None:
        frame_ms = min(300, max(60, 5000 // len(frames)))
    if frame_ms <= 0 or hold_ms <= 0:
        raise ValueError(f"`frame_ms` and `hold_ms` must be > 0, got {frame_ms} and {hold_ms}.")
    palette = _palette()
    indexed = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    durations[0] = max(durations[0], 600)  # let the reader see the prompt before tokens appear
    path = Path(path)
    indexed[0].save(path, save_all=True, append_images=indexed[1:], duration=durations, loop=0, optimize=True)
    return path
