"""The Space (examples/space/app.py) started as a user starts it: a subprocess on 127.0.0.1 at a free port.

One server on the embedded stack serves the API and browser tests of this folder (session scope). Its defaults are
tiny (`ENTRGI_SPACE_DEFAULTS`: K=2, T=L=4, M=1) so that the cached examples are made in seconds at start-up, and
torch runs one thread (a busy 2-core machine spin-waits with two). The long requests that the Stop and cancel tests
interrupt are long only in their settings: they are stopped after a few steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "space" / "app.py"
TINY_DEFAULTS = {"num_samples": 2, "steps": 4, "gen_length": 4, "guidance_steps": 1, "eta": 1.0}
# Long enough to be stopped mid-way on any machine (minutes), well within the test server's budget.
LONG = {"num_samples": 4, "steps": 96, "gen_length": 96, "guidance_steps": 1}
# Between LONG's estimate and the largest request's, so that LONG runs and the largest is
# refused however fast the machine is: an idle core estimated the largest at 789 s, under a 1000 s budget it passed.
BUDGET_S = 500


@dataclass
class Space:
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text()

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log_text(), flags=re.MULTILINE))

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 60) -> float:
        """Seconds until the log holds `count` lines matching `pattern` (fails after `timeout`)."""
        start = time.monotonic()
        while self.count(pattern) < count:
            if time.monotonic() - start > timeout:
                pytest.fail(f"no {count} x {pattern!r} in the app log after {timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        return time.monotonic() - start


@contextlib.contextmanager
def running_app(folder: Path, **env_extra: str):
    """Starts the app in `folder` (its working directory: the examples cache goes there), stops it at the end."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "ENTRGI_CACHE": str(folder / "cache"),
        "ENTRGI_SPACE_DEFAULTS": json.dumps(TINY_DEFAULTS),
        "ENTRGI_SPACE_BUDGET_S": str(BUDGET_S),
        **env_extra,
    }
    log = folder / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(APP)], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer at {url}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        app = Space(url, log, process)
        # Gradio serves before the examples are cached; it says "public link ... share=True" once launch() is done
        app.wait_for_log("share=True", timeout=max(deadline - time.monotonic(), 1))
        yield app
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def space(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("space")) as app:
        yield app


@pytest.fixture(scope="session")
def client(space):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(space.url, verbose=False)


def form(prompt="Describe a quiet Sunday afternoon.", target="food and eating", method="entrgi", seed=0, **sizes):
    """The `generate` API's nine arguments, in their order."""
    sizes = {**TINY_DEFAULTS, **sizes}
    keys = ("num_samples", "steps", "gen_length", "guidance_steps", "eta")
    return [prompt, target, method, *(sizes[k] for k in keys), seed]
