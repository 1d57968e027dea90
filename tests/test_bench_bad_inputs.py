"""`entrgi-bench`'s refusals of bad datasets, models, devices and dtypes (issue 24, item 7): exit status 2 and one line
naming the flag and the fix, before any model is loaded; two of them as the installed command runs them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import Qwen3Config, Qwen3ForSequenceClassification

from entrgi_pipelines import bench

from .paper_stand_ins import use_hub_home
from .test_bad_inputs import run_main


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A dataset of 3 prompts saved to disk, a reward model with two labels, and an empty offline Hub cache."""
    use_hub_home(monkeypatch, tmp_path / "hf_home")
    datasets.Dataset.from_dict({"prompt": ["a", "b", "c"]}).save_to_disk(str(tmp_path / "three"))
    config = Qwen3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    Qwen3ForSequenceClassification(config).save_pretrained(tmp_path / "two_labels")
    return tmp_path


CASES = {
    "unknown_field": (["--dataset", "{tmp}/three:train:question"], "--dataset {tmp}/three:train: no field 'question'"),
    "too_few_prompts": (
        ["--dataset", "{tmp}/three", "--num-prompts", "5"],
        "--num-prompts 5 exceeds the 3 prompts of --dataset {tmp}/three:train:prompt: ask for at most 3",
    ),
    "two_labels": (["--reward-model", "{tmp}/two_labels"], "--reward-model {tmp}/two_labels has 2 labels"),
    "eval_two_labels": (["--eval-reward-model", "{tmp}/two_labels"], "--eval-reward-model {tmp}/two_labels has 2"),
    "repo_not_cached": (
        ["--dllm", "org/not-downloaded"],
        "--dllm org/not-downloaded: not in the local Hub cache, and HF_HUB_OFFLINE=1 forbids downloading it",
    ),
    "reward_repo_not_cached": (["--reward-model", "org/none"], "--reward-model org/none: not in the local Hub cache"),
    "dataset_not_cached": (["--dataset", "org/none"], "--dataset org/none: not in the local Hub cache"),
    "dataset_not_a_name": (["--dataset", "{tmp}/missing/x"], "no such folder, and not a Hub dataset id"),
    "revision_of_a_folder": (
        ["--reward-model", "{tmp}/two_labels", "--reward-revision", "v2"],
        "is a folder: its revision flag applies to Hub repo ids",
    ),
    "revision_without_model": (["--eval-reward-revision", "v2"], "--eval-reward-revision needs --eval-reward-model"),
    "dllm_revision_embedded": (["--revision", "v2"], "--revision applies to a --dllm Hub repo id"),
    "prompts_and_dataset": (["--prompts", "{tmp}/three/state.json", "--dataset", "rm-bench"], "pass one of them"),
    "bad_device": (["--device", "toaster"], "--device: not a torch device: 'toaster'"),
    "unknown_dtype": (["--dtype", "float8"], "--dtype: invalid choice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_before_model_work_naming_the_flag(files, capsys, monkeypatch, case):
    argv, message = CASES[case]
    status, err = run_main(bench.main, [a.replace("{tmp}", str(files)) for a in argv], capsys, monkeypatch)
    assert status == 2 and err.count("\n") == 1 and err.startswith("entrgi-bench: error: ")
    assert message.replace("{tmp}", str(files)) in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu(files, capsys, monkeypatch):
    status, err = run_main(bench.main, ["--device", "cuda"], capsys, monkeypatch)
    assert status == 2 and "--device cuda: no CUDA device is available here: pass --device cpu" in err


def test_a_dtype_the_device_cannot_run(files, capsys, monkeypatch):
    """Where the device has no kernel for the dtype (as older CPUs for float16), the probe says which flag to change."""
    softmax = torch.Tensor.softmax

    def no_half(self, *args, **kwargs):
        if self.dtype is torch.float16:
            raise RuntimeError("\"softmax_lastdim_kernel_impl\" not implemented for 'Half'")
        return softmax(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "softmax", no_half)
    status, err = run_main(bench.main, ["--device", "cpu", "--dtype", "float16"], capsys, monkeypatch)
    assert status == 2 and "--dtype float16 does not run on cpu" in err and "pass --dtype float32" in err


def test_the_installed_command_refuses_with_status_2(files):
    command = shutil.which("entrgi-bench", path=str(Path(sys.executable).parent)) or shutil.which("entrgi-bench")
    command = [command] if command else [sys.executable, "-m", "entrgi_pipelines.bench"]
    cases = {
        "repo id not in the cache": (["--reward-model", "Skywork/not-here"], "not in the local Hub cache"),
        "unknown field": (["--dataset", f"{files}/three::question"], "no field 'question'"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(command + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for name, (argv, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, (name, err)
        assert err.count("\n") == 1 and cases[name][1] in err and "Traceback" not in err, (name, err)
