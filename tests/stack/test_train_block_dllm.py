"""The block-diffusion trainer of dLLM v3 (`stack.train_block_dllm`) on a tiny random Llama: fast, no SmolLM2."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

from entrgi_pipelines.stack.train_block_dllm import (
    DATA_DIR,
    MASK_ID,
    BlockDiffusionLM,
    Example,
    StreamSampler,
    TrainConfig,
    batch_logits,
    build_fast_dllm_folder,
    chat_prompt,
    decode,
    export_adapter,
    layout_mask,
    load_examples,
    loss_terms,
    make_batch,
    merge_adapter,
    qwen2_from_folder,
    train,
)

END = 2
VOCAB = 64


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=END,
        pad_token_id=END,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    return LlamaForCausalLM(config).eval()


def examples(n: int = 6, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        # ids >= 17: never the mask (16) nor the end (2)
        prompt = torch.randint(17, VOCAB, (3 + i % 3,), generator=g).tolist()
        answer = torch.randint(17, VOCAB, (5 + 2 * i,), generator=g).tolist()
        out.append(Example(prompt, answer, finished=i % 2 == 0))
    return out


def block_model(block_size: int = 4, seed: int = 0, perturb: bool = True) -> BlockDiffusionLM:
    model = BlockDiffusionLM(tiny_llama(seed), block_size=block_size, rank=4, alpha=8.0)
    if perturb:  # a trained-looking adapter (B starts at zero)
        torch.manual_seed(seed + 1)
        for m in model.lora_modules().values():
            m.lora_b.data.normal_(0, 0.05)
    return model


def test_two_stream_mask_aligns_blocks_from_position_0_and_noisy_blocks_see_clean_past_only():
    # prompt of 3, answer of 9: positions 0..11, blocks [0, 4), [4, 8), [8, 12); the prompt is block 0's head
    batch = make_batch([Example([20, 21, 22], list(range(30, 39)), False)], 4, END, torch.Generator().manual_seed(0))
    mask = batch.attention_mask[0, 0]
    assert mask.shape == (12 + 12, 12 + 12)
    clean = [range(0, 4), range(4, 8), range(8, 12)]
    noisy = [range(12, 16), range(16, 20), range(20, 24)]
    allowed = {q: {k for k in range(24) if mask[q, k]} for q in range(24)}
    for k, block in enumerate(clean):  # clean block k: clean blocks <= k (block-causal, the prompt included)
        assert all(allowed[q] == {i for b in clean[: k + 1] for i in b} for q in block)
    for k, block in enumerate(noisy):  # noisy block k: clean blocks < k and noisy block k
        assert all(allowed[q] == {i for b in clean[:k] for i in b} | set(block) for q in block)
    # the noisy copy repeats the clean positions; its prompt tail is never masked nor a target
    assert torch.equal(batch.position_ids[0, 12:], batch.position_ids[0, :12])
    assert batch.answer_valid[0].tolist() == [False] * 3 + [True] * 9
    assert not batch.masked[0, :3].any() and torch.equal(batch.input_ids[0, 12:15], torch.tensor([20, 21, 22]))


def test_answers_are_cut_or_filled_to_a_block_boundary_of_the_whole_sequence():
    finished = make_batch([Example([20, 21, 22], [30, 31], True)], 4, END, torch.Generator().manual_seed(0))
    assert finished.targets[0].tolist() == [20, 21, 22, 30, 31, END, END, END]  # filled with the end id
    cut = make_batch([Example([20, 21, 22, 23, 24], [30, 31, 32, 33], False)], 4, END, torch.Generator())
    assert cut.targets[0].tolist() == [24, 30, 31, 32] and cut.tokens == 3  # the first block: prompt tail + 3
    with pytest.raises(ValueError, match="block boundary"):
        make_batch([Example([20, 21, 22, 23, 24], [30, 31], False)], 4, END, torch.Generator())


def test_padding_is_never_attended_and_pads_see_themselves():
    batch = make_batch(examples(3), 4, END, torch.Generator().manual_seed(0))
    mask = batch.attention_mask[:, 0]
    lc = batch.clean_length
    valid = batch.input_ids != -1
    for row, ex in enumerate(examples(3)):
        total = len(ex.prompt) + int(batch.answer_valid[row].sum())
        first = len(ex.prompt) // 4 * 4
        valid[row, total:lc] = False
        valid[row, lc + total - first :] = False
    assert not (mask & ~valid[:, None, :] & valid[:, :, None]).any()
    assert mask.any(-1).all()  # no empty softmax row


def test_layout_mask_of_block_size_one_is_causal():
    n = 7
    i = torch.arange(n)[None]
    mask = layout_mask(torch.zeros_like(i), i, torch.ones_like(i, dtype=torch.bool))
    assert torch.equal(mask[0, 0], torch.ones(n, n, dtype=torch.bool).tril())


def test_block_size_one_is_the_autoregressive_model():
    model = block_model(block_size=1, perturb=False)
    batch = make_batch(examples(4), 1, END, torch.Generator().manual_seed(0))
    logits = batch_logits(model, batch)
    for row, ex in enumerate(examples(4)):
        ids = torch.tensor([ex.prompt + ex.answer + [END] * ex.finished])
        reference = model.model(ids).logits[0].float()  # the wrapped model, adapter at zero: the base
        n = int(batch.answer_valid[row].sum())
        expected = reference[len(ex.prompt) - 1 : len(ex.prompt) - 1 + n]
        got = logits[row, :n]
        keep = torch.arange(VOCAB) != MASK_ID
        torch.testing.assert_close(got[:, keep], expected[:, keep], atol=1e-4, rtol=1e-4)


def test_mask_logit_is_excluded_and_mask_input_is_the_learnt_vector():
    model = block_model()
    batch = make_batch(examples(4), 4, END, torch.Generator().manual_seed(0))
    logits = batch_logits(model, batch)
    assert torch.isneginf(logits[..., MASK_ID]).all()
    assert torch.isfinite(logits[..., torch.arange(VOCAB) != MASK_ID]).all()
    # editing the tied matrix's row 16 changes nothing: the mask's input is the separate vector
    with torch.no_grad():
        model.model.get_input_embeddings().weight[MASK_ID] += 5.0
    edited = batch_logits(model, batch)
    torch.testing.assert_close(edited, logits)
    ids, _ = decode(model, examples(1)[0].prompt, END, max_new_tokens=8)
    assert MASK_ID not in ids


def test_training_step_lowers_the_loss_on_a_fixed_batch():
    model = block_model(perturb=False)
    batch = make_batch(examples(6), 4, END, torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for p in model.model.model.embed_tokens.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    first = loss_terms(model, batch)["loss"].item()
    for _ in range(10):
        optimizer.zero_grad()
        loss_terms(model, batch)["loss"].backward()
        optimizer.step()
    assert loss_terms(model, batch)["loss"].item() < first - 0.1


def test_kl_is_zero_for_the_base_model_read_causally():
    # the KL's teacher is the causal base: with the adapter at zero and blocks of one token (block-causal is
    # causal) the student is the teacher; at block 4 the prompt and the earlier blocks are read block-causally,
    # which the adapter has to learn to absorb, so the KL is not zero there
    batch = make_batch(examples(4), 1, END, torch.Generator().manual_seed(0))
    assert abs(loss_terms(block_model(block_size=1, perturb=False), batch)["kl"].item()) < 1e-5
    assert loss_terms(block_model(block_size=1), batch)["kl"].item() > 1e-4
    batch = make_batch(examples(4), 4, END, torch.Generator().manual_seed(0))
    assert loss_terms(block_model(perturb=False), batch)["kl"].item() > 1e-6


def test_fixed_fraction_masks_exactly_half_of_every_block():
    batch = make_batch(examples(4), 4, END, torch.Generator().manual_seed(0), fixed_fraction=0.5)
    per_block = (batch.masked & batch.answer_valid).view(len(examples(4)), -1, 4).sum(-1)
    answers = batch.answer_valid.view(len(examples(4)), -1, 4).sum(-1)
    assert torch.equal(per_block, answers.clamp(max=2))  # a first block with one answer token masks that one


def test_unmasked_training_logits_are_the_native_block_diffusion_forward(tmp_path):
    """The training layout is the native class's: with nothing masked, every target's logits (clean stream for
    slot 0, noisy stream for the others) equal `Fast_dLLM_QwenForCausalLM(sequence).logits`, shifted."""
    from transformers import AutoModelForCausalLM

    import entrgi_pipelines  # noqa: F401  (registers the native classes)

    model = block_model()
    with torch.no_grad():
        model.mask_embedding.normal_()
    tiny_llama().save_pretrained(tmp_path / "base")
    export_adapter(model, tmp_path / "adapter")
    folder = build_fast_dllm_folder(tmp_path / "base", tmp_path / "adapter", tmp_path / "v3")
    native = AutoModelForCausalLM.from_pretrained(folder)
    assert type(native).__name__ == "Fast_dLLM_QwenForCausalLM"
    batch = make_batch(examples(4), 4, END, torch.Generator().manual_seed(0), fixed_fraction=0.0)
    assert not batch.masked.any()
    ours = batch_logits(model, batch)
    keep = torch.arange(VOCAB) != MASK_ID
    for row, ex in enumerate(examples(4)):
        n = int(batch.answer_valid[row].sum())
        ids = batch.input_ids[row, : len(ex.prompt) + n][None]
        with torch.no_grad():
            reference = native(ids).logits[0, len(ex.prompt) - 1 : len(ex.prompt) - 1 + n]
        got = ours[row][batch.answer_valid[row]]
        torch.testing.assert_close(got[:, keep], reference[:, keep], atol=2e-3, rtol=1e-3)


def _config(tmp_path, **kw) -> TrainConfig:
    base = TrainConfig(
        output=str(tmp_path),
        block_size=4,
        rank=4,
        alpha=8.0,
        lr=1e-2,
        warmup_steps=2,
        batch_size=3,
        bf16=False,
        max_minutes=5.0,
        checkpoint_minutes=100.0,
        eval_minutes=100.0,
    )
    return replace(base, **kw)


def test_resume_continues_from_the_checkpoint(tmp_path):
    data = StreamSampler(examples(5), examples(4, seed=1), 3, 1, seed=0)
    straight = block_model(perturb=False, seed=3)
    log = train(straight, _config(tmp_path / "straight", max_steps=4), data, END)
    assert len(log["steps"]) == 4

    first = block_model(perturb=False, seed=3)
    train(first, _config(tmp_path / "resumed", max_steps=2), data, END)
    resumed = block_model(perturb=False, seed=3)
    with torch.no_grad():  # another initial adapter and mask vector: the checkpoint must replace them
        resumed.mask_embedding.normal_()
        for m in resumed.lora_modules().values():
            m.lora_a.normal_()
    log = train(resumed, _config(tmp_path / "resumed", max_steps=4), data, END)
    assert [s["step"] for s in log["steps"]] == [1, 2, 3, 4]
    assert [s["tokens"] for s in log["steps"]] == [
        s["tokens"] for s in json.loads((tmp_path / "straight" / "train_log.json").read_text())["steps"]
    ]
    for (name, a), b in zip(straight.trainable_state().items(), resumed.trainable_state().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)

    with pytest.raises(ValueError, match="block_size"):
        train(block_model(block_size=2), _config(tmp_path / "resumed", block_size=2, max_steps=5), data, END)


def test_export_round_trips_into_a_qwen2_folder(tmp_path):
    model = block_model()
    with torch.no_grad():
        model.mask_embedding.normal_()
    base_folder = tmp_path / "base"
    tiny_llama().save_pretrained(base_folder)  # the same seed: the frozen weights of `model`
    export_adapter(model, tmp_path / "adapter")
    size = sum(p.stat().st_size for p in (tmp_path / "adapter").iterdir())
    assert size < 0.6 * (base_folder / "model.safetensors").stat().st_size  # factors, not the full matrices

    folder = build_fast_dllm_folder(base_folder, tmp_path / "adapter", tmp_path / "v3")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "Fast_dLLM_Qwen" and config["bd_size"] == 4
    assert config["mask_token_id"] == MASK_ID and config["logits_shift"] and config["tie_word_embeddings"]

    state = load_file(str(folder / "model.safetensors"))
    # rebuilt == trained: the merged weights are base + delta (float16 factors), row 16 the mask vector
    for name, module in model.lora_modules().items():
        expected = module.base.weight.detach() + module.delta()
        torch.testing.assert_close(state[f"{name}.weight"], expected, atol=2e-4, rtol=1e-3, msg=name)
    torch.testing.assert_close(state["model.embed_tokens.weight"][MASK_ID], model.mask_embedding.detach())
    assert not state["model.layers.0.self_attn.q_proj.bias"].any()

    qwen = qwen2_from_folder(folder)
    assert isinstance(qwen, Qwen2ForCausalLM)
    assert torch.equal(qwen.lm_head.weight, state["model.embed_tokens.weight"])  # tied
    # a block of one token: the Qwen2 folder's causal logits are the trained model's shifted block-1 logits
    one = BlockDiffusionLM(tiny_llama(), block_size=1, rank=4, alpha=8.0)
    one.load_state_dict(model.state_dict())
    batch = make_batch(examples(3), 1, END, torch.Generator().manual_seed(0))
    ours = batch_logits(one, batch)
    keep = torch.arange(VOCAB) != MASK_ID
    for row, ex in enumerate(examples(3)):
        ids = torch.tensor([ex.prompt + ex.answer + [END] * ex.finished])
        n = int(batch.answer_valid[row].sum())
        reference = qwen(ids).logits[0, len(ex.prompt) - 1 : len(ex.prompt) - 1 + n]
        torch.testing.assert_close(ours[row, :n][:, keep], reference[:, keep], atol=2e-3, rtol=1e-3)


def test_merge_adapter_rejects_a_wrong_base(tmp_path):
    model = block_model()
    export_adapter(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="wrong base"):
        merge_adapter({"model.embed_tokens.weight": torch.zeros(VOCAB, 32)}, tmp_path / "adapter")


def test_decode_fills_whole_blocks_and_stops_at_the_end_token():
    model = block_model()
    ids, passes = decode(model, examples(1)[0].prompt, END, max_new_tokens=12)
    assert len(ids) <= 12 and END not in ids
    assert passes >= len(ids)  # one committed token per pass at most, without a threshold


def test_stream_sampler_batches_stay_the_same_as_the_distill_file_grows():
    primary, secondary = examples(12), examples(5, seed=1)
    short = StreamSampler(primary[:9], secondary, 4, 1, seed=0)
    grown = StreamSampler(primary, secondary, 4, 1, seed=0)
    for step in range(3):  # the records 9 of the short file holds cover three batches of 3
        assert short(step) == grown(step)
    assert sum(e in secondary for e in grown(0)) == 1
    with pytest.raises(ValueError, match="secondary_per_batch"):
        StreamSampler(primary, secondary, 4, 4, seed=0)


class _FakeTokenizer:
    """Characters as ids: enough for the data loading (no SmolLM2)."""

    def apply_chat_template(self, messages, **kwargs):
        return [17] + [17 + ord(c) % 40 for c in messages[0]["content"]]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [17 + ord(c) % 40 for c in text]}


def test_load_examples_never_trains_on_held_out_or_bundled_prompts(tmp_path):
    bundled = json.loads((DATA_DIR / "prompts_v2.jsonl").read_text().splitlines()[0])["prompt"]
    records = [
        {"prompt": "Tell me about dogs.", "response": "Dogs are loyal friends.", "finished": True, "split": "train"},
        {"prompt": bundled, "response": "A bundled prompt's answer.", "finished": True, "split": "train"},
        {"prompt": "Held out.", "response": "Never trained on.", "finished": True, "split": "heldout"},
        {"prompt": "Held out.", "response": "Marked train by mistake.", "finished": True, "split": "train"},
    ]
    path = tmp_path / "distill.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"prompt": "torn')  # a torn last line
    tok = _FakeTokenizer()
    train_set, corpus, evals, stats = load_examples(tok, path, None, eval_examples=4, seed=0)
    assert stats["distill_records"] == 4 and stats["distill_excluded_heldout_or_bundled_prompt"] == 2
    assert [e.prompt for e in train_set] == [chat_prompt(tok, "Tell me about dogs.")]
    assert [e.prompt for e in evals["answers"]] == [chat_prompt(tok, "Held out.")]
    assert corpus == [] and len(evals["other_text"]) == 4


def test_stream_sampler_resumed_on_a_grown_file_reads_the_new_records_next():
    primary, secondary = examples(12), examples(5, seed=1)
    straight = StreamSampler(primary[:6], secondary, 4, 1, seed=0)  # 3 records a batch: passes of 2 batches
    saved = straight.segments
    # unchanged file: the resumed run reads what the uninterrupted one reads
    same = StreamSampler(primary[:6], secondary, 4, 1, seed=0)
    same.resume(saved, 3)
    assert same(3) == straight(3) and same(4) == straight(4)
    # grown file after the pass wrapped (step 3 read records 3..5 again): records 6.. come next
    grown = StreamSampler(primary, secondary, 4, 1, seed=0)
    grown.resume(saved, 3)
    assert grown(3)[:3] == primary[6:9] and grown(4)[:3] == primary[9:12] and grown(5)[:3] == primary[0:3]
    # grown before the pass ended: it carries on where it was
    early = StreamSampler(primary, secondary, 4, 1, seed=0)
    early.resume(saved, 1)
    assert early(1)[:3] == primary[3:6] and early(2)[:3] == primary[6:9]
    with pytest.raises(ValueError, match="append-only"):
        StreamSampler(primary[:3], secondary, 4, 1, seed=0).resume(saved, 1)


def test_stream_sampler_grown_in_process_reads_what_a_resumed_run_reads():
    primary, secondary = examples(12), examples(5, seed=1)
    live = StreamSampler(primary[:6], secondary, 4, 1, seed=0)
    saved = [dict(s) for s in live.segments]
    live.grow(primary, 3)
    resumed = StreamSampler(primary, secondary, 4, 1, seed=0)
    resumed.resume(saved, 3)
    assert [live(s) for s in range(3, 7)] == [resumed(s) for s in range(3, 7)]
    assert live.segments == resumed.segments and live(3)[:3] == primary[6:9]
    live.grow(primary[:6], 7)  # not grown: nothing changes
    assert live.segments == resumed.segments
