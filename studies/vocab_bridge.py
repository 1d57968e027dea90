"""How well the dLLM's WordPiece tokens bridge to SmolLM2's byte-level BPE (the LM-judge reward's vocabulary).

    PYTHONPATH=src python studies/vocab_bridge.py --num-prompts 16 --seed 0 -T 16 -L 16 --dllm-version v2

Reports, for the `VocabularyMap` from the embedded dLLM's tokenizer to SmolLM2's:

- the share of the dLLM vocabulary that maps (`mapped`), and that maps to a token of the same surface (`exact`: same
  text and the same space before it, as the response text shows it);
- the same shares over the tokens the dLLM *generates* (unguided samples of the bundled prompts, up to the first
  end-of-sequence token), the shares that matter to guidance;
- the share of responses whose round trip is exact: the mapped ids equal the reward tokenizer's ids of the decoded
  text (tokenised as the LM-judge template places it, after "Text: "), so that guidance and the reported reward
  see the same tokens; the most frequent tokens that are not mapped exactly.
"""

import argparse
import collections
import json
from pathlib import Path

import torch

from entrgi_pipelines import bench, runs
from entrgi_pipelines.guidance.rewards import visible_before_eos
from entrgi_pipelines.guidance.vocab import VocabularyMap, token_surfaces
from entrgi_pipelines.stack import load_embedded_stack
from entrgi_pipelines.stack.lm_reward import load_lm_judge_reward


def surface_exact(vmap: VocabularyMap, source, target) -> torch.BoolTensor:
    """Whether each source id maps to a target token of the same surface (recomputed, whatever the map says)."""
    source_surfaces, target_surfaces = token_surfaces(source), token_surfaces(target)
    exact = vmap.mapped.clone()  # special tokens mapped by role count as exact
    for i, surface in source_surfaces.items():
        exact[i] = bool(vmap.mapped[i]) and target_surfaces.get(int(vmap.ids[i])) == surface
    return exact


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    runs.add_sampling_arguments(parser, steps=16, gen_length=16)
    parser.add_argument("--dllm-version", default=None, help="embedded dLLM version (v1, v2; default the newest)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="JSON path for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    stack = load_embedded_stack(dllm_version=args.dllm_version)
    pipe = stack.pipe
    pipe.set_progress_bar_config(disable=True)
    reward, reward_tokenizer = load_lm_judge_reward()
    vmap = VocabularyMap.from_tokenizers(pipe.tokenizer, reward_tokenizer, source_size=pipe.vocab_size)
    exact = surface_exact(vmap, pipe.tokenizer, reward_tokenizer)

    rows = bench.read_prompts(None, args.num_prompts)
    out = pipe(
        [row["prompt"] for row in rows],
        num_inference_steps=args.steps,
        gen_length=args.gen_length,
        num_samples_per_prompt=args.num_samples,
        temperature=args.tau,
        top_p=args.top_p,
        generator=torch.Generator().manual_seed(args.seed),
    )
    sequences = out.sequences.flatten(0, 1)
    visible = visible_before_eos(sequences, pipe.eos_token_id)
    generated = sequences[visible]
    texts = sum(out.all_texts, [])
    round_trips = [
        reward_tokenizer(" " + text if text else text, add_special_tokens=False)["input_ids"]
        == vmap.ids[row[keep]].tolist()
        for text, row, keep in zip(texts, sequences, visible)
    ]
    # Why a round trip fails, first reason that applies: a token without an exact counterpart; a first token glued to
    # the previous word (the stripped text puts the template's space before it); else the reward tokenizer splits
    # the words otherwise (e.g. `walk ##ing` -> `Ġwalking`) or the decoder's clean-up changes the text.
    surfaces = token_surfaces(pipe.tokenizer)
    reasons = collections.Counter()
    for ok, row, keep in zip(round_trips, sequences, visible):
        if not ok:
            tokens = row[keep]
            if not exact[tokens].all():
                reasons["inexact_token"] += 1
            elif not surfaces.get(int(tokens[0]), ("", True))[1]:
                reasons["first_token_glued"] += 1
            else:
                reasons["segmentation_or_cleanup"] += 1
    missed = collections.Counter(pipe.tokenizer.convert_ids_to_tokens(generated[~exact[generated]].tolist()))
    figures = {
        "vocabulary": {"mapped": vmap.coverage, "exact": float(exact.float().mean())},
        "generated_tokens": {
            "n": generated.numel(),
            "mapped": float(vmap.mapped[generated].float().mean()),
            "exact": float(exact[generated].float().mean()),
        },
        "responses_exact_round_trip": sum(round_trips) / len(round_trips),
        "responses_not_round_trip_by_reason": dict(reasons),
        "most_frequent_inexact": missed.most_common(15),
        "config": vars(args),
    }
    print(json.dumps(figures, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
