"""Host syncs of a guided call, counted on CPU: none inside the Adam loop, at most one per denoising step.

On CUDA a host sync (reading a device value back: `.item()`, `bool()` of a tensor, the size of a `nonzero`...) stalls
the CPU until the GPU catches up, so a guided step that syncs in every Adam step cannot keep the GPU busy. The calls
that would sync a device are counted here on CPU with a `TorchFunctionMode` shim, so that the count is checked on
every machine (tests/test_cuda.py checks the Adam loop under `torch.cuda.set_sync_debug_mode("error")` on a GPU).

Counted: `Tensor.item`, `.tolist`, `.cpu`, `.numpy`, `bool()` / `int()` / `float()` / `operator.index` of a tensor,
`nonzero` / `argwhere` / `masked_select` / `unique` (their output size is data-dependent), indexing, assigning or
`index_put` with a boolean mask (a `nonzero` inside), and `torch.tensor` / `torch.as_tensor` (host data that, on a
device, is a host-to-device copy). Not counted: what runs inside the models' own forwards (the dLLM and the reward
model are the caller's; transformers' mask helpers test `attention_mask.all()` on the host: issue 25 item 4), which
the shim pauses in and counts apart.

Outside the loop, the set-up (prompt encoding, the reward prefix and suffix, the first timestep) and the end (the
lazy NaN check, decoding, scoring the texts) sync a bounded number of times per call, which the test reports.
"""

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode

from entrgi_pipelines import EntRGiPipeline, MaskedDiffusionScheduler, RewardGuidance
from entrgi_pipelines.guidance import reward_guidance
from entrgi_pipelines.pipelines.entrgi import pipeline_entrgi
from entrgi_pipelines.testing import tiny_masked_lm, tiny_reward_model, tiny_wordpiece_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

SYNCING = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "argwhere",
    "masked_select",
    "unique",
    "tensor",
    "as_tensor",
}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}


def _has_mask(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in items)


class SyncCounter(TorchFunctionMode):
    """Counts the calls that would synchronise a device, by phase; paused inside the models."""

    def __init__(self):
        super().__init__()
        self.phase, self.paused = "setup", 0
        self.counts: dict[str, list[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        syncs = name in SYNCING or (name in INDEXING and len(args) > 1 and _has_mask(args[1]))
        if syncs:
            self.counts.setdefault(self.phase if not self.paused else "models", []).append(name)
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1


@pytest.mark.parametrize(
    "scheduler_kwargs, call_kwargs",
    [
        ({}, dict(top_p=0.9)),  # the defaults, top-p sampling
        (dict(commit_schedule="time_floor", confidence="maskgit_plus"), dict(top_p=0.95, temperature=0.7)),
        (dict(confidence_temperature=0.5), dict(top_k=20)),  # Gumbel draws for the commits, top-k sampling
    ],
)
def test_a_guided_call_syncs_once_per_denoising_step_and_never_in_the_adam_loop(
    monkeypatch, scheduler_kwargs, call_kwargs
):
    tokenizer = tiny_wordpiece_tokenizer()
    dllm, reward_model = tiny_masked_lm(len(tokenizer)), tiny_reward_model(len(tokenizer))
    scheduler = MaskedDiffusionScheduler(**scheduler_kwargs)
    pipe = EntRGiPipeline(model=dllm, tokenizer=tokenizer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    counter = SyncCounter()
    steps, adam_steps = [], []

    def counted(fn, on_enter=None):
        def wrapper(*args, **kwargs):
            if on_enter is not None:
                on_enter()
            with counter.pause():
                return fn(*args, **kwargs)

        return wrapper

    def new_denoising_step():
        steps.append(len(steps))
        counter.phase = f"step {len(steps) - 1}"

    optimize_logits = reward_guidance.optimize_logits

    def adam_loop(*args, **kwargs):
        phase, counter.phase = counter.phase, f"adam loop of {counter.phase}"
        adam_steps.append(kwargs["num_steps"])
        try:
            return optimize_logits(*args, **kwargs)
        finally:
            counter.phase = phase

    check_lazily = pipeline_entrgi._check_lazily

    def loop_end(*args, **kwargs):
        counter.phase = "end"
        return check_lazily(*args, **kwargs)

    monkeypatch.setattr(dllm, "forward", counted(dllm.forward, new_denoising_step))
    monkeypatch.setattr(reward_model, "forward", counted(reward_model.forward))
    monkeypatch.setattr(reward_guidance, "optimize_logits", adam_loop)
    monkeypatch.setattr(pipeline_entrgi, "_check_lazily", loop_end)
    T, M = 4, 3
    guidance = RewardGuidance(reward_model, guidance="entrgi", guidance_steps=M)
    with counter:
        out = pipe(
            ["the cat", "a man walked to the sea"],
            callback_on_step_end=guidance,
            gen_length=12,
            num_inference_steps=T,
            num_samples_per_prompt=2,
            generator=torch.Generator().manual_seed(0),
            **call_kwargs,
        )
    assert (out.sequences != tokenizer.mask_token_id).all()
    assert len(steps) == T and adam_steps == [M] * T  # every step was guided, with M Adam steps
    counts = counter.counts
    report = {phase: len(calls) for phase, calls in counts.items()}
    print("host syncs per phase:", report)
    for step in range(T):
        assert f"adam loop of step {step}" not in counts, counts  # zero in the M Adam steps
        assert counts.get(f"step {step}", []) == ["nonzero"], counts  # the masked positions' nonzero only
    assert "models" in counts  # the shim does see inside the models (it pauses there): the exclusion is real
    assert len(counts["end"]) >= 1  # the lazy NaN check reads its two flags at the end of the loop
