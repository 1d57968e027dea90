"""How many dLLM calls threshold decoding saves on the embedded dLLM v2: unguided, one prompt per call.

For the first N bundled v2 prompts, K samples, T=32, L=32, blocks of 8, `maskgit_plus` confidence, seed 0: the number
of model calls (`out.nfe`) at fixed steps and at each threshold. Prints one line per setting (K, threshold, the nfe of
each prompt, their mean). Usage: HF_HUB_OFFLINE=1 python studies/threshold_nfe.py --num-prompts 8 -K 1
"""

from __future__ import annotations

import argparse

import torch

from entrgi_pipelines.bench import read_prompts
from entrgi_pipelines.schedulers import MaskedDiffusionScheduler
from entrgi_pipelines.stack import load_embedded_stack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("-K", "--num-samples", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_embedded_stack().pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = MaskedDiffusionScheduler.from_config(pipe.scheduler.config, confidence="maskgit_plus")
    rows = read_prompts(None, args.num_prompts)
    for k in args.num_samples:
        for threshold in [None, *args.thresholds]:
            nfe = [
                pipe(
                    row["prompt"],
                    num_samples_per_prompt=k,
                    num_inference_steps=32,
                    gen_length=32,
                    block_length=8,
                    threshold=threshold,
                    generator=torch.Generator().manual_seed(0),
                ).nfe
                for row in rows
            ]
            print(k, threshold, nfe, sum(nfe) / len(nfe), flush=True)


if __name__ == "__main__":
    main()
