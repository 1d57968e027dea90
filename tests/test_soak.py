"""Smoke test of the soak benchmark (benchmarks/soak.py): it runs and reports its figures. The 300-call soak itself
is a benchmark (docs/reliability.md), not a test."""

import importlib.util
import json
from pathlib import Path

import pytest

SOAK = Path(__file__).parents[1] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_reports_its_figures_as_the_last_json_line(soak, capsys, tmp_path):
    output = tmp_path / "soak.json"
    report = soak.main(["--calls", "3", "--warmup", "1", "-T", "2", "-L", "4", "--output", str(output)])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == report == json.loads(output.read_text())
    assert report["calls"] == 3 and report["warmup_calls"] == 1
    for key in ("rss_growth_percent", "python_objects_delta", "torch_tensors_delta", "rss_trace_mib"):
        assert key in report
    for snapshot in (report["after_warmup"], report["end"]):
        assert snapshot["rss_mib"] > 0 and snapshot["python_objects"] > 0 and snapshot["torch_tensors"] > 0
    # Guidance only ever optimises a copy of the logits: neither model may change.
    assert report["weights_identical"] is True


def test_state_hash_sees_a_one_bit_change(soak):
    import torch

    model = torch.nn.Linear(3, 2)
    before = soak.state_hash(model)
    with torch.no_grad():
        model.weight.view(-1)[0] = torch.nextafter(model.weight.view(-1)[0], torch.tensor(1.0))
    assert soak.state_hash(model) != before


def test_soak_refuses_a_run_without_calls_after_the_warm_up(soak):
    with pytest.raises(SystemExit) as error:
        soak.main(["--calls", "5", "--warmup", "5"])
    assert error.value.code == 2
