"""Tiny offline components for tests, docs and examples: a WordPiece tokenizer and random models from configs."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE, WordPiece
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "the a an and or but of to in on at by for with from up down over under is was are were be been has have had "
    "do does did will would can could shall should may might must i you he she it we they me him her us them my "
    "your his its our their this that these those there here what who which when where why how all some no not "
    "one two three many more most other such only own same so than too very just now then again once cat dog bird "
    "fish man woman child king queen lord god house tree sea ship sun moon star day night water fire earth land "
    "city road book word love war peace food bread wine gold money work time life death good bad great small old "
    "new long little big high low first last said went came saw made took gave found told knew thought sat ran "
    "walked sang ate drank slept loved hated wanted called asked answered computer program code bug science "
    "light dark red green blue happy sad wise fool . , ! ? ' ; :"
).split()
SUBWORDS = ["##s", "##ed", "##ing", "##ly", "##er", "##est"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} <|end|>"
    "{% else %}<|assistant|> {{ m['content'] }} <|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_wordpiece_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    """A BERT-style uncased WordPiece tokenizer of ~260 tokens with `[MASK]`, and `[SEP]` as end of sequence.

    With `chat_template=True` it renders conversations as `<|user|> ... <|end|><|assistant|> ... <|end|>`.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS + SUBWORDS)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        eos_token="[SEP]",
        additional_special_tokens=SPECIAL_TOKENS[5:],
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


BPE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A cased byte-level BPE tokenizer (`Ġword`) with a ChatML chat template, trained here on `WORDS` (~600 tokens).

    Unlike `tiny_wordpiece_tokenizer` (an uncased WordPiece, as a dLLM's), it spells `god` and `king` only
    capitalised (`ĠGod`, `ĠKing`), `lovely` as one token (`Ġlovely`), has both `,` and `Ġ,`, and no `ing` piece: the
    cases a vocabulary bridge between the two meets. Deterministic; nothing is downloaded.
    """
    words = [w for w in WORDS if w.isalpha() and w not in ("god", "king")]
    lines = [" ".join(words)] * 4 + ["a lovely day , said the God of the King ."] * 4 + ["we ran . we sang !"] * 2
    backend = Tokenizer(BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(lines, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=special[0], bos_token=special[1], eos_token=special[2], pad_token=special[2]
    )
    tokenizer.chat_template = BPE_CHAT_TEMPLATE
    return tokenizer


def _scale_init(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    # A random reward model at the default initialisation is nearly flat; larger weights give it preferences.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(scale)
    return model


def tiny_bert_config(vocab_size: int, **kwargs) -> BertConfig:
    defaults = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertConfig(vocab_size=vocab_size, **{**defaults, **kwargs})


def tiny_masked_lm(vocab_size: int, seed: int = 0) -> BertForMaskedLM:
    """A random BERT masked LM (BERT-style diffusion LM: no logits shift)."""
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny_bert_config(vocab_size)).eval()


def tiny_llama_config(vocab_size: int, **kwargs) -> LlamaConfig:
    defaults = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaConfig(vocab_size=vocab_size, **{**defaults, **kwargs})


def tiny_causal_lm(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama LM, used as a Dream-style (shifted logits) model in tests."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size)).eval()


def tiny_reward_model(vocab_size: int, seed: int = 0, scale: float = 4.0) -> BertForSequenceClassification:
    """A random BERT reward model with one label (first-token pooling), initialised `scale` times larger."""
    torch.manual_seed(seed)
    return _scale_init(BertForSequenceClassification(tiny_bert_config(vocab_size, num_labels=1)), scale).eval()


def tiny_decoder_reward_model(vocab_size: int, seed: int = 0, scale: float = 4.0) -> LlamaForSequenceClassification:
    """A random Llama reward model with one label (last-token pooling), initialised `scale` times larger."""
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size, num_labels=1, pad_token_id=0)
    return _scale_init(LlamaForSequenceClassification(config), scale).eval()


def tiny_block_diffusion_lm(
    vocab_size: int, mask_token_id: int, kind: str = "sdar", block_size: int = 4, seed: int = 0
) -> torch.nn.Module:
    """A random block-diffusion LM of this package's native classes: SDAR (`kind="sdar"`, Qwen3 layers, no logit
    shift) or Fast-dLLM v2 (`"fast_dllm"`, Qwen2 layers, shifted logits), 2 layers, 32 wide."""
    from .models import Fast_dLLM_QwenConfig, Fast_dLLM_QwenForCausalLM, SDARConfig, SDARForCausalLM

    torch.manual_seed(seed)
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mask_token_id=mask_token_id,
    )
    if kind == "sdar":
        return SDARForCausalLM(SDARConfig(head_dim=8, block_size=block_size, **shape)).eval()
    if kind == "fast_dllm":
        return Fast_dLLM_QwenForCausalLM(Fast_dLLM_QwenConfig(bd_size=block_size, **shape)).eval()
    raise ValueError(f"`kind` must be 'sdar' or 'fast_dllm', got {kind!r}.")
