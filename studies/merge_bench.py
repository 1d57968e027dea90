"""Merges `entrgi-bench --output` files of the same settings (e.g. methods run in parallel processes).

PYTHONPATH=src python studies/merge_bench.py a.json b.json --output merged.json --markdown table.md
"""

import argparse
import json
from pathlib import Path

from entrgi_pipelines.bench import markdown_table, summarise


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--output", required=True)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    runs = [json.loads(Path(f).read_text()) for f in args.files]
    # Seeds may differ (a method run on fewer seeds): every record carries its own seed and n is reported.
    keys = (
        "prompts",
        "num_prompts",
        "num_samples",
        "steps",
        "gen_length",
        "guidance_steps",
        "eta",
        "tau",
        "top_p",
    )
    # Settings that older outputs lack take the value they then had.
    defaults = {"reward": "similarity", "dllm": None, "batch_size": 16}
    keys += tuple(defaults)

    def setting(run, key):
        return run["config"].get(key, defaults.get(key))

    for run in runs[1:]:
        differing = [k for k in keys if setting(run, k) != setting(runs[0], k)]
        if differing:
            raise ValueError(f"Runs differ in {differing}: only runs of the same settings can be merged.")
    order = ["none", "expectation", "aps", "entrgi"]
    methods = sorted({m for run in runs for m in run["summary"]}, key=order.index)
    records = [r for run in runs for r in run["records"]]
    keys_seen = set()
    for r in records:
        key = (r["method"], r["seed"], r["prompt"], r["target"])
        if key in keys_seen:
            raise ValueError(f"Two files hold {key} (method, seed, prompt, target): merge each run once.")
        keys_seen.add(key)
    summary = summarise(records, methods)
    seeds = sorted({s for run in runs for s in run["config"]["seeds"]})
    config = {**runs[0]["config"], "methods": methods, "seeds": seeds}
    Path(args.output).write_text(json.dumps({"config": config, "summary": summary, "records": records}, indent=1))
    table = markdown_table(summary)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
