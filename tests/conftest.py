import socket

import pytest
import torch

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler
from entrgi_pipelines.testing import (
    tiny_causal_lm,
    tiny_decoder_reward_model,
    tiny_masked_lm,
    tiny_reward_model,
    tiny_wordpiece_tokenizer,
)

torch.set_num_threads(2)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for a server or process group a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny models and SmolLM2 run fastest so, and on a busy shared machine two
    threads spin-wait at every layer (up to 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_wordpiece_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer():
    return tiny_wordpiece_tokenizer(chat_template=True)


def get_dummy_components(tokenizer, kind: str = "bert", **scheduler_kwargs) -> dict:
    model = tiny_masked_lm(len(tokenizer)) if kind == "bert" else tiny_causal_lm(len(tokenizer))
    return {"model": model, "tokenizer": tokenizer, "scheduler": MaskedDiffusionScheduler(**scheduler_kwargs)}


@pytest.fixture
def pipe(tokenizer):
    pipeline = EntRGiPipeline(**get_dummy_components(tokenizer))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def reward_model(tokenizer):
    return tiny_reward_model(len(tokenizer))


@pytest.fixture(scope="session")
def decoder_reward_model(tokenizer):
    return tiny_decoder_reward_model(len(tokenizer))
