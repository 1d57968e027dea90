"""Time one answer of the Space (examples/space/app.py) at its defaults: wall-clock and CPU seconds.

    HF_HUB_OFFLINE=1 python benchmarks/space_timing.py --threads 1 --repeats 3
    python benchmarks/space_timing.py --url http://127.0.0.1:7860/ --repeats 3    # a running Space, through its API

In-process, it imports the app (which loads the embedded stack once, as at start-up) and calls its `generate`
function -- the function behind the `generate` API, without the HTTP round trip -- with the default form values,
and prints the wall and process CPU seconds of each call. With `--url` it sends the same request to a running
Space through `gradio_client` and prints the wall seconds. Each line has the load average, since on a shared
machine the wall time measures the neighbours too; with one thread, the CPU seconds bound the wall time on one
idle core.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

APP = Path(__file__).resolve().parents[1] / "examples" / "space" / "app.py"


def app_defaults() -> dict:
    """The app's `DEFAULTS`, read from its source without running it (which would load the stack)."""
    for node in ast.parse(APP.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DEFAULTS":
            return ast.literal_eval(node.value)
    raise SystemExit(f"no DEFAULTS in {APP}")


def report(calls: list[dict], defaults: dict, threads: int | None) -> None:
    middle = len(calls) // 2
    summary = {"defaults": defaults, "threads": threads, "cpu_count": os.cpu_count()}
    for key in calls[0]:
        summary[f"median_{key}"] = sorted(c[key] for c in calls)[middle]
    print(json.dumps(summary))


def time_api(args) -> None:
    from gradio_client import Client

    d = app_defaults()
    client = Client(args.url, verbose=False)
    form = [d["num_samples"], d["steps"], d["gen_length"], d["guidance_steps"], d["eta"], d["seed"]]
    calls = []
    for _ in range(args.repeats):
        wall = time.perf_counter()
        client.predict(args.prompt, args.target, "entrgi", *form, api_name="/generate")
        calls.append({"wall_s": round(time.perf_counter() - wall, 2)})
        print(json.dumps({**calls[-1], "load_average_1min": os.getloadavg()[0]}), flush=True)
    report(calls, d, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt", default="and he said unto them")
    parser.add_argument("--target", default="food and eating")
    parser.add_argument("--url", help="time a running Space through its API instead of in-process")
    args = parser.parse_args()
    if args.url:
        return time_api(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("space_app", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    d = app.DEFAULTS
    form = [d["num_samples"], d["steps"], d["gen_length"], d["guidance_steps"], d["eta"], d["seed"]]
    calls = []
    for _ in range(args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(app.generate(args.prompt, args.target, d["method"], *form, progress=lambda *a, **k: None))
        calls.append({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)})
        print(json.dumps({**calls[-1], "load_average_1min": os.getloadavg()[0]}), flush=True)
    report(calls, d, torch.get_num_threads())


if __name__ == "__main__":
    main()
