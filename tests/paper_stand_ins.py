"""Shared by the bench tests: `benchmarks/paper_check.py` (the paper's models and benchmarks as tiny stand-ins in a
local Hub cache, by their real repo ids) and a fixture-style switch of this process and its subprocesses to it."""

import importlib.util
from pathlib import Path

import huggingface_hub

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("paper_check", ROOT / "benchmarks" / "paper_check.py")
paper_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper_check)


def use_hub_home(monkeypatch, home: Path) -> Path:
    """Points this process (huggingface_hub's and datasets' constants) and its subprocesses (env) at the `HF_HOME`
    folder `home`, offline; returns its Hub cache."""
    import datasets

    hub = home / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("transformers.utils.hub.TRANSFORMERS_CACHE", str(hub), raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    for name, value in (("HF_HOME", home), ("HF_HUB_CACHE", hub), ("HF_DATASETS_CACHE", home / "datasets")):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub
