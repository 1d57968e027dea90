"""Checks the native Dream and LLaDA classes against the published modeling code, on tiny checkpoints it writes.

The published code (Dream-v0-Instruct-7B's `configuration_dream.py`, `modeling_dream.py`, `generation_utils.py`;
LLaDA-8B-Instruct's `configuration_llada.py`, `modeling_llada.py`) is NOT part of this repository: pass the folder
holding copies of it, laid out as `<published>/dream/*.py` and `<published>/llada/*.py`. Without it the script says
so and exits 0. The published code targets transformers 4.x, so the first stage needs a transformers 4 install.

Two stages, each in its own process (both the published code and `entrgi_pipelines` register the model type
"llada" with `AutoConfig`, so they cannot share one):

1. `published`: builds tiny random models with the published classes (2 layers, hidden 32; Dream with grouped
   key/value heads, LLaDA with LLaDA-8B-Instruct's config fields), saves each with its own `save_pretrained`
   (float32 and bfloat16 folders, `auto_map` and the published parameter names) and records their logits.
2. `native`: `import entrgi_pipelines`, then `AutoModel.from_pretrained(folder)` without `trust_remote_code`; checks
   that the native class was built with no missing or unexpected key, and compares logits (float32: 1e-4) without a
   mask, with the inputs `EntRGiPipeline.model_inputs` passes for a left-padded batch, and in bfloat16.

Example (both stages on transformers 4.56, then the native stage again on the venv's transformers 5, against the
logits recorded by the first run):

    PYTHONPATH=/tmp/oldest python studies/verify_native_models.py --published /tmp/published --work /tmp/verify_models
    python studies/verify_native_models.py --published /tmp/published --work /tmp/verify_models --stage native
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

TOLERANCE = 1e-4
DREAM_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py")
LLADA_FILES = ("configuration_llada.py", "modeling_llada.py")
VOCAB, MASK_ID, PAD_ID = 96, 95, 94
PADDING = (0, 3, 5)  # left padding of each row of the batch
SEQ_LEN = 12


def _missing(published: Path) -> list[str]:
    wanted = [f"dream/{f}" for f in DREAM_FILES] + [f"llada/{f}" for f in LLADA_FILES]
    return [name for name in wanted if not (published / name).is_file()]


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    import transformers

    return {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids, left-padded with PAD_ID per PADDING, and the (B, S) padding mask."""
    ids = torch.randint(0, VOCAB - 2, (len(PADDING), SEQ_LEN), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(PADDING):
        ids[row, :pad], mask[row, :pad] = PAD_ID, 0
    return ids, mask


def _pipeline_inputs(model, mask: torch.Tensor) -> dict:
    """Exactly what the pipeline passes to `model` for this padding mask."""
    from entrgi_pipelines import EntRGiPipeline

    return EntRGiPipeline.model_inputs(SimpleNamespace(model=model), mask)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of order one (the published inits give near-zero logits, which would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name or "ln_f" in name else 0.3 * noise)


def _per_row(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Each row's real tokens alone, without padding: the logits a padded row's real positions should get."""
    return [model(ids[row : row + 1, pad:]).logits[0] for row, pad in enumerate(PADDING)]


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1: the published code
# ---------------------------------------------------------------------------------------------------------------------


def published_stage(published: Path, work: Path) -> None:
    import transformers

    sys.path.insert(0, str(published))
    from dream.configuration_dream import DreamConfig
    from dream.modeling_dream import DreamModel
    from llada.configuration_llada import LLaDAConfig
    from llada.modeling_llada import LLaDAModelLM

    dream_config = DreamConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        mask_token_id=MASK_ID,
        pad_token_id=PAD_ID,
        bos_token_id=PAD_ID,
        eos_token_id=PAD_ID,
        architectures=["DreamModel"],
    )
    # LLaDA-8B-Instruct's config.json fields, at toy width
    llada_config = LLaDAConfig(
        activation_type="silu",
        alibi=False,
        alibi_bias_max=8.0,
        architectures=["LLaDAModelLM"],
        attention_dropout=0.0,
        attention_layer_norm=False,
        attention_layer_norm_with_affine=True,
        bias_for_layer_norm=False,
        block_group_size=1,
        block_type="llama",
        d_model=32,
        embedding_dropout=0.0,
        embedding_size=VOCAB,
        eos_token_id=PAD_ID,
        flash_attention=False,
        include_bias=False,
        include_qkv_bias=False,
        init_cutoff_factor=None,
        init_device="meta",
        init_fn="mitchell",
        init_std=0.02,
        input_emb_norm=False,
        layer_norm_type="rms",
        layer_norm_with_affine=True,
        mask_token_id=MASK_ID,
        max_sequence_length=256,
        mlp_hidden_size=64,
        mlp_ratio=4,
        multi_query_attention=None,
        n_heads=4,
        n_kv_heads=4,
        n_layers=2,
        pad_token_id=PAD_ID,
        precision="amp_bf16",
        residual_dropout=0.0,
        rms_norm_eps=1e-05,
        rope=True,
        rope_full_precision=True,
        rope_theta=500000.0,
        scale_logits=False,
        vocab_size=VOCAB,
        weight_tying=False,
    )
    ids, mask = _batch()
    record = {"transformers": transformers.__version__, "ids": ids, "mask": mask}
    for name, config_cls, model_cls, config, seed in (
        ("dream", DreamConfig, DreamModel, dream_config, 0),
        ("llada", LLaDAConfig, LLaDAModelLM, llada_config, 1),
    ):
        config_cls.register_for_auto_class()
        model_cls.register_for_auto_class("AutoModel")
        model = model_cls(config).eval()
        _randomize(model, seed)
        model.save_pretrained(work / name, safe_serialization=True)
        with torch.no_grad():
            record[f"{name}/plain"] = model(ids).logits
            record[f"{name}/rows"] = _per_row(model, ids)
            if name == "dream":
                # Dream's own generate() passes the pairwise mask and cumsum positions, as the pipeline does
                valid = mask.bool()
                pairwise = valid[:, None, :, None] & valid[:, None, None, :]
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                record["dream/pipeline"] = model(ids, attention_mask=pairwise, position_ids=position_ids).logits
            else:
                # the published LLaDA forward takes a (B, S) mask but no position ids
                record["llada/mask"] = model(ids, attention_mask=mask).logits
            model.to(torch.bfloat16).save_pretrained(work / f"{name}-bf16", safe_serialization=True)
            # the reference is the published class *loaded* in bf16, as a user gets it: `model.to(bfloat16)` would
            # also round Dream's float32 RoPE `inv_freq` buffer, which loading in bf16 leaves in float32
            loaded = model_cls.from_pretrained(work / f"{name}-bf16", **_dtype_kwarg(torch.bfloat16)).eval()
            record[f"{name}/bf16"] = loaded(ids).logits.float()
    torch.save(record, work / "published_logits.pt")
    print(f"published stage: transformers {transformers.__version__}, folders and logits in {work}")


# ---------------------------------------------------------------------------------------------------------------------
# Stage 2: the native classes
# ---------------------------------------------------------------------------------------------------------------------


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def native_stage(work: Path) -> dict:
    import transformers
    from transformers import AutoModel

    import entrgi_pipelines  # noqa: F401  (registers the native classes)

    record = torch.load(work / "published_logits.pt")
    ids, mask = record["ids"], record["mask"]
    results = {"published_transformers": record["transformers"], "native_transformers": transformers.__version__}
    for name in ("dream", "llada"):
        model, info = AutoModel.from_pretrained(work / name, output_loading_info=True)
        if not type(model).__module__.startswith("entrgi_pipelines."):
            raise AssertionError(f"{name}: AutoModel built {type(model)}, not the native class")
        if any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")):
            raise AssertionError(f"{name}: loading reported {info}")
        model.eval()
        out = {"class": f"{type(model).__module__}.{type(model).__name__}"}
        with torch.no_grad():
            out["plain"] = _diff(model(ids).logits, record[f"{name}/plain"])
            pipe = model(ids, **_pipeline_inputs(model, mask)).logits
            # real positions of each padded row, against the same row without padding, run by the published code
            out["pipeline_vs_unpadded_rows"] = max(
                _diff(pipe[row, pad:], published)
                for row, (pad, published) in enumerate(zip(PADDING, record[f"{name}/rows"]))
            )
            real = mask.bool()
            if name == "dream":
                # the same inputs to both; the published code gives NaN on padded query rows, so compare real ones
                out["pipeline_same_inputs_real_positions"] = _diff(pipe[real], record["dream/pipeline"][real])
            else:
                out["mask_only_real_positions"] = _diff(
                    model(ids, attention_mask=mask).logits[real], record["llada/mask"][real]
                )
            bf16 = AutoModel.from_pretrained(work / f"{name}-bf16", **_dtype_kwarg(torch.bfloat16)).eval()
            if next(bf16.parameters()).dtype != torch.bfloat16:
                raise AssertionError(f"{name}: the bf16 load is not in bfloat16")
            bf16_logits = bf16(ids).logits
            out["bf16_plain"] = _diff(bf16_logits, record[f"{name}/bf16"])
            out["bf16_reference_scale"] = record[f"{name}/bf16"].abs().max().item()
        results[name] = out
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published", type=Path, default=Path("/tmp/published"), help="folder with dream/, llada/")
    parser.add_argument("--work", type=Path, default=Path("/tmp/verify_native_models"), help="checkpoints, logits")
    parser.add_argument("--stage", choices=("all", "published", "native"), default="all")
    parser.add_argument("--output", type=Path, help="write the native stage's results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.stage in ("all", "published"):
        missing = _missing(args.published)
        if missing:
            print(f"skipped: the published code is not in {args.published} (missing {', '.join(missing)})")
            return 0
    if args.stage == "all":
        for stage in ("published", "native"):
            command = [sys.executable, __file__, "--published", str(args.published), "--work", str(args.work)]
            command += ["--stage", stage] + (["--output", str(args.output)] if args.output else [])
            code = subprocess.call(command, env=os.environ.copy())
            if code:
                return code
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "published":
        published_stage(args.published.resolve(), args.work)
        return 0
    if not (args.work / "published_logits.pt").is_file():
        print(f"skipped: no published_logits.pt in {args.work}; run the published stage first")
        return 0
    results = native_stage(args.work)
    print(json.dumps(results, indent=2))
    if args.output:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    failed = [
        f"{name}/{key}"
        for name in ("dream", "llada")
        for key, value in results[name].items()
        if isinstance(value, float) and not key.startswith("bf16") and not value <= TOLERANCE
    ]
    if failed:
        print(f"FAILED (> {TOLERANCE}): {', '.join(failed)}")
        return 1
    print(f"all float32 comparisons within {TOLERANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
