"""dLLM v3 (issue 23): the export check on the real SmolLM2 and a greedy block-by-block sample of a trained adapter.

1. The Fast-dLLM v2 folder rebuilt from SmolLM2 + an untrained adapter, loaded into transformers' `Qwen2ForCausalLM`
   (same tensor names, zero q/k/v biases): its causal logits against SmolLM2's own (a block of one token is the AR
   model), the mask column excluded.
2. With `--adapter`: the folder rebuilt from the trained adapter against the trained model's block-1 logits, and a
   greedy answer per prompt decoded block by block (`decode`, one token committed per pass).
3. With `--distill` too: the trainer's held-out evaluation (`slot_accuracy`, the same sets) of the adapter at each of
   `--block-sizes` (a model trained at block 4 read at blocks 2 and 8), and SmolLM2's own (causal) next-token
   accuracy on the same sets, the ceiling of slot 0.

    PYTHONPATH=src HF_HUB_OFFLINE=1 python studies/v3_check.py --adapter runs/v3/adapter --work /tmp/v3check \\
        --prompt "Describe a quiet Sunday afternoon." --distill corpus/distill.jsonl --eval-answers 29 \\
    --block-sizes 2 4 8 --output runs/v3_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from entrgi_pipelines.stack.smollm import load_smollm, smollm_path
from entrgi_pipelines.stack.train_block_dllm import (
    MASK_ID,
    BlockDiffusionLM,
    build_fast_dllm_folder,
    chat_prompt,
    decode,
    export_adapter,
    load_adapter,
    load_examples,
    qwen2_from_folder,
    slot_accuracy,
)

PROMPTS = ("Describe a quiet Sunday afternoon.", "Write a short story about a fisherman's morning.")


def max_logit_gap(reference, folder: Path, ids: torch.Tensor) -> float:
    qwen = qwen2_from_folder(folder)
    with torch.no_grad():
        a, b = reference(ids), qwen(ids).logits[0].float()
    keep = torch.arange(a.shape[-1]) != MASK_ID
    return float((a[:, keep] - b[:, keep]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--adapter", default=None, help="an export_adapter folder (runs/v3/adapter)")
    parser.add_argument("--work", default=None, help="where the rebuilt folders go (a temporary folder by default)")
    parser.add_argument("--prompt", action="append", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--distill", default=None, help="the distill JSONL: evaluate the adapter at --block-sizes")
    parser.add_argument("--eval-answers", type=int, default=40, help="held-out answers (the run's log says how many)")
    parser.add_argument("--eval-examples", type=int, default=40)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp())
    base, tokenizer = load_smollm()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = torch.tensor([chat_prompt(tokenizer, PROMPTS[0])])
    with torch.no_grad():
        smollm_logits = base(ids).logits[0].float()
    result = {}

    untrained = BlockDiffusionLM(load_smollm()[0], block_size=1)
    export_adapter(untrained, work / "zero-adapter")
    folder = build_fast_dllm_folder(smollm_path(), work / "zero-adapter", work / "zero-folder")
    result["untrained_folder_vs_smollm2_max_abs_logit_gap"] = max_logit_gap(lambda x: smollm_logits, folder, ids)

    if args.adapter:
        config = json.loads((Path(args.adapter) / "adapter_config.json").read_text())
        one = load_adapter(BlockDiffusionLM(load_smollm()[0], 1, config["rank"], config["alpha"]), args.adapter)
        folder = build_fast_dllm_folder(smollm_path(), args.adapter, work / "trained-folder")

        def block1(x):  # the trained model, every position its own block (causal): its shifted logits
            n = x.shape[1]
            i = torch.arange(n)[None]
            with torch.no_grad():
                mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
                return one.logits(one.hidden_states(x, mask, i))[0]

        result["trained_folder_vs_trained_block1_max_abs_logit_gap"] = max_logit_gap(block1, folder, ids)
        model = load_adapter(
            BlockDiffusionLM(load_smollm()[0], config["block_size"], config["rank"], config["alpha"]), args.adapter
        ).eval()
        samples = []
        for prompt in args.prompt or PROMPTS:
            t = time.time()
            new, passes = decode(model, chat_prompt(tokenizer, prompt), end, args.max_new_tokens)
            samples.append(
                {
                    "prompt": prompt,
                    "answer": tokenizer.decode(new),
                    "tokens": len(new),
                    "passes": passes,
                    "seconds": round(time.time() - t, 1),
                }
            )
        result["samples"] = samples
        if args.distill:
            _, _, evals, _ = load_examples(
                tokenizer, Path(args.distill), None, args.eval_examples, 0, eval_answers=args.eval_answers
            )
            # the ceiling of slot 0: SmolLM2 itself (causal, no adapter) on the same answers and texts
            result["smollm2_causal"] = {
                name: slot_accuracy(untrained.eval(), examples, end, 1.0)["slot0"] for name, examples in evals.items()
            }
            result["block_sizes"] = {}
            for b in args.block_sizes:
                model.block_size = b
                result["block_sizes"][b] = {
                    f"{name}/{label}": slot_accuracy(model, examples, end, fraction)
                    for name, examples in evals.items()
                    for label, fraction in (("half", 0.5), ("full", 1.0))
                }
    print(json.dumps(result, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
