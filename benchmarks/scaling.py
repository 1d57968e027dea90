"""Time and peak memory of a guided call against B*K, L, V and M, on CPU with tiny models (one process per point).

    PYTHONPATH=src python benchmarks/scaling.py --output docs/performance_scaling.json

Every point is one run of `benchmarks/bench_guidance.py` (tiny BERT dLLM and reward model from configs, hidden size
32, 2 layers, T=4, one thread) in its own process, so that its peak memory (RSS high-water) is its own. One dimension
varies at a time around B*K=4, L=32, V=30522, M=3: B*K in (1, 4, 16, 64), L in (32, 128, 512), V in (1536, 30522,
152064) and M in (1, 2, 3, 5), the last for the cost of each added Adam step. With models this small the floor is
mostly the vocabulary-wide part (the soft-embedding product and the softmax), so the table shows how the guidance
work itself scales. Prints a markdown table; the last line on stdout is one JSON object with every point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BASE = {"bk": 4, "L": 32, "V": 30522, "M": 3}
SWEEPS = {"bk": (1, 4, 16, 64), "L": (32, 128, 512), "V": (1536, 30522, 152064), "M": (1, 2, 3, 5)}


def points() -> list[dict]:
    """The base point once, then every other value of each dimension."""
    out = [dict(BASE)]
    for name, values in SWEEPS.items():
        out += [{**BASE, name: value} for value in values if value != BASE[name]]
    return out


def run_point(point: dict, args) -> dict:
    bk = point["bk"]
    B, K = (bk // 4, 4) if bk >= 4 else (1, bk)
    command = [
        sys.executable,
        str(Path(__file__).with_name("bench_guidance.py")),
        *("--dllm", "tiny", "--reward", "tiny", "--vocab", str(point["V"])),
        *("-B", str(B), "-K", str(K), "-L", str(point["L"]), "-T", str(args.steps), "-M", str(point["M"])),
        *("--repeats", str(args.repeats), "--threads", "1", "--no-breakdown"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        **point,
        "B": B,
        "K": K,
        **{k: result[k] for k in ("guided_s", "unguided_s", "floor_s", "overhead")},
        **{k: result[k] for k in ("guided_over_unguided", "tokens_per_s", "peak_mb", "masked_rows_P", "load_average")},
    }


def markdown(rows: list[dict], steps: int, before: list[dict] | None = None) -> str:
    """The table; with `before` (the points of an earlier run), its guided time, overhead and peak memory too."""
    key = lambda r: (r["bk"], r["L"], r["V"], r["M"])  # noqa: E731
    earlier = {key(r): r for r in before or []}
    extra = " guided s / step before | overhead before | peak MB before |" if before else ""
    lines = [
        "| B*K | L | V | M | P (avg masked rows) | guided s / step | unguided s / step | overhead | guided / unguided "
        "| peak MB |" + extra,
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if before else ""),
    ]
    for r in rows:
        line = (
            f"| {r['bk']} | {r['L']} | {r['V']} | {r['M']} | {r['masked_rows_P']} | {r['guided_s'] / steps:.4f} | "
            f"{r['unguided_s'] / steps:.4f} | {r['overhead']:.2f} | {r['guided_over_unguided']:.2f} | "
            f"{r['peak_mb']:.0f} |"
        )
        if before:
            b = earlier.get(key(r))
            line += f" {b['guided_s'] / steps:.4f} | {b['overhead']:.2f} | {b['peak_mb']:.0f} |" if b else " | | |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("-T", "--steps", type=int, default=4, help="denoising steps per call (default 4)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", help="write the points as JSON")
    parser.add_argument("--before", help="the JSON of an earlier run (e.g. older code): its figures as extra columns")
    parser.add_argument("--table-only", action="store_true", help="print the table of --output's points, run nothing")
    args = parser.parse_args(argv)
    before = json.loads(Path(args.before).read_text())["points"] if args.before else None
    if args.table_only:
        saved = json.loads(Path(args.output).read_text())
        print(markdown(saved["points"], saved["steps"], before))
        return saved
    rows = []
    for point in points():
        rows.append(run_point(point, args))
        print(f"done {point}: {rows[-1]['guided_s']:.2f} s, {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr)
    by_m = sorted(
        (r for r in rows if (r["bk"], r["L"], r["V"]) == (BASE["bk"], BASE["L"], BASE["V"])), key=lambda r: r["M"]
    )
    # the cost of each added Adam step: least-squares slope of guided time over M, per denoising step
    ms, ts = [r["M"] for r in by_m], [r["guided_s"] / args.steps for r in by_m]
    mean_m, mean_t = sum(ms) / len(ms), sum(ts) / len(ts)
    slope = sum((m - mean_m) * (t - mean_t) for m, t in zip(ms, ts)) / sum((m - mean_m) ** 2 for m in ms)
    summary = {"steps": args.steps, "points": rows, "seconds_per_adam_step_per_denoising_step": slope}
    print(markdown(rows, args.steps, before))
    print(f"each added Adam step: {slope * 1e3:.1f} ms per denoising step (B*K=4, L=32, V=30522)")
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
