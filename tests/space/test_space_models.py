"""The Space on models named by environment variables (as on a GPU Space), tested offline on CPU with tiny models.

The tiny pipeline, reward model and judge are saved as Hub repos and laid into a Hub-format cache (as a download
leaves it, `add_to_hub_cache`); the app loads them by repo id with `HF_HUB_OFFLINE=1`. A stand-in `spaces` package
on `PYTHONPATH` records every call of the function it wraps, as ZeroGPU's `spaces.GPU` would run it.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler  # noqa: E402
from entrgi_pipelines.demo import compare_methods, denoising_gif  # noqa: E402
from entrgi_pipelines.pipelines.hub_utils import add_to_hub_cache  # noqa: E402
from entrgi_pipelines.runs import sampling_settings  # noqa: E402
from entrgi_pipelines.stack import EmbeddedStack  # noqa: E402
from entrgi_pipelines.stack.export import save_reward_repo  # noqa: E402
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model  # noqa: E402

from ..conftest import tiny_minilm_pair  # noqa: E402
from .conftest import APP, BUDGET_S, form, running_app  # noqa: E402

FAKE_SPACES = """
import functools, os

def GPU(duration=None):
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with open(os.environ["FAKE_SPACES_LOG"], "a") as log:
                log.write(f"{fn.__name__} duration={duration}\\n")
            return fn(*args, **kwargs)
        return run
    return wrap
"""


@pytest.fixture(scope="module")
def hub_repos(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("repos")
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.save_pretrained(root / "pipeline")
    tiny_reward_model(len(tokenizer)).save_pretrained(root / "reward")
    tokenizer.save_pretrained(root / "reward")
    topics = ["food and eating", "religion and god", "computers and programs"]
    judge = tiny_minilm_pair(tokenizer, "topic", topics, max_positions=128)
    save_reward_repo(judge, tokenizer, root / "judge")
    cache = root / "hub"
    for kind in ("pipeline", "reward", "judge"):
        add_to_hub_cache(root / kind, f"org/tiny-{kind}", cache)
    (root / "site" / "spaces").mkdir(parents=True)
    (root / "site" / "spaces" / "__init__.py").write_text(FAKE_SPACES)
    return root


def test_the_space_runs_on_repos_named_by_environment_variables_under_spaces_gpu(hub_repos, tmp_path):
    calls = tmp_path / "spaces_calls.txt"
    env = {
        "HF_HUB_CACHE": str(hub_repos / "hub"),
        "ENTRGI_PIPELINE_REPO": "org/tiny-pipeline",
        "ENTRGI_REWARD_REPO": "org/tiny-reward",
        "ENTRGI_JUDGE_REPO": "org/tiny-judge",
        "PYTHONPATH": str(hub_repos / "site"),
        "FAKE_SPACES_LOG": str(calls),
    }
    with running_app(tmp_path, **env) as space:
        log = space.log_text()
        assert re.search(r"models: .*'pipeline': 'org/tiny-pipeline'.* on cpu in torch\.float32", log)
        assert "ZeroGPU: the generation runs under spaces.GPU" in log
        cached = len(calls.read_text().splitlines())  # the examples were made under spaces.GPU at start-up
        client = gradio_client.Client(space.url, verbose=False)
        unguided, guided, table, animation = client.predict(*form(), api_name="/generate")
        for text in (unguided, guided):
            assert re.match(r"on-topic \d+% · reward [+-]\d\.\d{3} \(best of 2\)\n\nDescribe a quiet", text)
        assert [row[0] for row in table["data"]] == ["Best-of-N (unguided)"] * 2 + ["EntRGi"] * 2
        # ZeroGPU holds the GPU for the Space's budget and a minute for loading and the judge
        assert calls.read_text().splitlines()[cached:] == [f"run_request duration={BUDGET_S + 60}"]
        assert "Traceback" not in space.log_text()


def test_without_spaces_and_without_a_judge_the_generation_runs_as_it_is(tokenizer, tmp_path):
    # the embedded-stack app of the other tests runs without `spaces`; here the judge-less path of the demo
    pipe = EntRGiPipeline(
        model=tiny_masked_lm(len(tokenizer)), tokenizer=tokenizer, scheduler=MaskedDiffusionScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    stack = EmbeddedStack(pipe, tiny_reward_model(len(tokenizer)), tokenizer, None, None)
    settings = sampling_settings(num_samples=2, steps=3, gen_length=4, guidance_steps=1)
    sides = compare_methods(stack, "the cat", "a dog", "entrgi", settings)
    assert all(math.isnan(j) for side in sides for j in side.judge)
    assert denoising_gif(stack, sides, tmp_path / "a.gif", "the cat", "a dog", stacked=True).stat().st_size > 0


def test_a_pipeline_repo_without_a_reward_repo_is_refused_at_start_up():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTRGI_")}
    env.update(ENTRGI_PIPELINE_REPO="org/tiny-pipeline", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(APP)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "needs ENTRGI_REWARD_REPO" in result.stderr
