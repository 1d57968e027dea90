"""The native Dream/LLaDA attention on CPU: what a mask and grouped-query attention cost SDPA, and the forward pass of
a small Dream-shaped model, optionally against another source tree (before/after a change), timed alternately.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/native_models.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/native_models.py --compare-src /tmp/before/src

`--compare-src` runs the forward timing in subprocesses, alternating this tree's package with the one under that
folder (e.g. `git archive <commit> src | tar -x -C /tmp/before`), so both see the same machine load. Ratios are what
count on a shared machine. The last line on stdout is one JSON object with every median (seconds) and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SHAPE = dict(batch=4, heads=8, kv_heads=2, seq=256, head_dim=64)
MODEL = dict(num_hidden_layers=4, hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=2)


def alternate(cases: dict, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each case, the cases interleaved so that load changes hit all of them alike."""
    for run in cases.values():
        run()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            for _ in range(inner):
                run()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def sdpa_cases(repeats: int) -> dict[str, float]:
    b, h, kv, s, d = (SHAPE[k] for k in ("batch", "heads", "kv_heads", "seq", "head_dim"))
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(b, n, s, d, generator=generator) for n in (h, kv, kv))
    keys = torch.ones(b, s, dtype=torch.bool)  # a padding mask that hides nothing
    pairwise = keys[:, None, :, None] & keys[:, None, None, :]
    sdpa = F.scaled_dot_product_attention

    def repeated(mask):
        return sdpa(query, key.repeat_interleave(h // kv, 1), value.repeat_interleave(h // kv, 1), attn_mask=mask)

    cases = {
        "gqa, no mask": lambda: sdpa(query, key, value, enable_gqa=True),
        "gqa, all-True (B,1,1,S) mask": lambda: sdpa(query, key, value, attn_mask=keys[:, None, None], enable_gqa=True),
        "gqa, all-True (B,1,S,S) mask": lambda: sdpa(query, key, value, attn_mask=pairwise, enable_gqa=True),
        "repeat_interleave, no mask": lambda: repeated(None),
        "repeat_interleave, all-True (B,1,S,S) mask": lambda: repeated(pairwise),
    }
    return alternate(cases, repeats, inner=5)


def forward_cases(repeats: int) -> dict[str, float]:
    """The forward pass of a random Dream-shaped model with each kind of attention mask the pipeline may pass."""
    from entrgi_pipelines.models import DreamConfig, DreamModel

    torch.manual_seed(0)
    config = DreamConfig(vocab_size=1024, mask_token_id=1023, pad_token_id=0, **MODEL)
    model = DreamModel(config).eval()
    b, s = SHAPE["batch"], SHAPE["seq"]
    ids = torch.randint(1, 1023, (b, s), generator=torch.Generator().manual_seed(1))
    padded = torch.ones(b, s, dtype=torch.long)
    padded[1:, : s // 4] = 0  # three rows left-padded by a quarter
    valid = padded.bool()
    positions = (padded.cumsum(-1) - 1).clamp(min=0)
    masks = {
        "no mask": None,
        "2D mask, no padding": torch.ones(b, s, dtype=torch.long),
        "2D mask, padded": padded,
        "pairwise mask, padded": valid[:, None, :, None] & valid[:, None, None, :],
    }

    def run(mask):
        with torch.no_grad():
            model(ids, attention_mask=mask, position_ids=None if mask is None else positions)

    return alternate({name: (lambda m=mask: run(m)) for name, mask in masks.items()}, repeats, inner=2)


def compare_forward(other_src: str, rounds: int, repeats: int) -> dict:
    """This tree's forward timing against `other_src`'s, in alternating subprocesses."""
    this_src = os.path.dirname(os.path.dirname(sys.modules["entrgi_pipelines"].__file__))
    trees = {"after": this_src, "before": other_src}
    medians = {tree: {} for tree in trees}
    for _ in range(rounds):
        for tree, src in trees.items():
            env = {**os.environ, "PYTHONPATH": src}
            command = [sys.executable, __file__, "--forward-only", "--repeats", str(repeats)]
            result = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
            for name, seconds in result.items():
                medians[tree].setdefault(name, []).append(seconds)
    before = {name: statistics.median(t) for name, t in medians["before"].items()}
    after = {name: statistics.median(t) for name, t in medians["after"].items()}
    return {"before": before, "after": after, "after / before": {k: after[k] / before[k] for k in after}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--compare-src", help="another tree's src folder to time the same forward pass with")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --compare-src")
    parser.add_argument("--forward-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.forward_only:
        print(json.dumps(forward_cases(args.repeats)))
        return
    import entrgi_pipelines  # noqa: F401  (the tree whose package is timed as "after")

    report = {"torch": torch.__version__, "shape": SHAPE, "model": MODEL, "sdpa": sdpa_cases(args.repeats)}
    none = report["sdpa"]["gqa, no mask"]
    report["sdpa, relative to gqa without a mask"] = {k: v / none for k, v in report["sdpa"].items()}
    if args.compare_src:
        report["forward"] = compare_forward(args.compare_src, args.rounds, args.repeats)
    else:
        report["forward"] = forward_cases(args.repeats)
    for section in ("sdpa, relative to gqa without a mask", "forward"):
        print(section, json.dumps(report[section], indent=1), file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
