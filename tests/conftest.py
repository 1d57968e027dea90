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


def tiny_minilm_pair(tokenizer, reward_type: str = "similarity", topics=None, max_positions: int = 64):
    """A seeded one-layer MiniLM pair reward model of the embedded stack (imported here: the stack needs
    transformers 5, and the oldest-versions CI run loads this file too)."""
    from entrgi_pipelines.stack.modeling_minilm_pair import MiniLMPairConfig, MiniLMPairRewardModel

    torch.manual_seed(0)
    config = MiniLMPairConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        reward_type=reward_type,
        topics=topics,
        cls_token_id=tokenizer.cls_token_id,
    )
    return MiniLMPairRewardModel(config).eval()


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
