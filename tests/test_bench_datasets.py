"""`entrgi-bench --dataset NAME[:SPLIT[:FIELD]]`: the presets, the `datasets` on-disk and Hub-cache formats offline,
`--num-prompts` per dataset and the two prompt orders."""

import datasets
import pytest

from entrgi_pipelines import bench

from .paper_stand_ins import paper_check, use_hub_home

PROMPTS = [f"question number {i}" for i in range(7)]


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    use_hub_home(monkeypatch, home)
    return home


def test_presets_fill_in_split_and_field():
    assert bench.dataset_spec("rm-bench") == "THU-KEG/RM-Bench:train:prompt"
    assert bench.dataset_spec("ScalerLab/JudgeBench") == "ScalerLab/JudgeBench:gpt:question"
    assert bench.dataset_spec("reward-bench-2::chosen") == "allenai/reward-bench-2:test:chosen"
    assert bench.dataset_spec("org/name:dev") == "org/name:dev:prompt"
    with pytest.raises(Exception, match="NAME"):
        bench.dataset_spec("a:b:c:d")


def test_a_dataset_dict_saved_to_disk(tmp_path, home):
    folder = tmp_path / "saved"
    splits = {"train": {"prompt": PROMPTS, "n": list(range(7))}, "dev": {"prompt": PROMPTS[:2], "n": [0, 1]}}
    datasets.DatasetDict({k: datasets.Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(str(folder))
    assert bench.read_dataset(bench.dataset_spec(str(folder))) == PROMPTS
    assert bench.read_dataset(f"{folder}:dev:prompt") == PROMPTS[:2]
    with pytest.raises(ValueError, match=r"no split 'test' \(it has \['dev', 'train'\]\)"):
        bench.read_dataset(f"{folder}:test:prompt")
    with pytest.raises(ValueError, match=r"no field 'question' \(its fields: \['prompt', 'n'\]\)"):
        bench.read_dataset(f"{folder}:train:question")
    with pytest.raises(ValueError, match="row 0 of field 'n' is not a non-empty string"):
        bench.read_dataset(f"{folder}:train:n")


def test_a_dataset_without_splits_saved_to_disk(tmp_path, home):
    folder = tmp_path / "one"
    datasets.Dataset.from_dict({"question": PROMPTS}).save_to_disk(str(folder))
    assert bench.read_dataset(f"{folder}:whatever:question") == PROMPTS


def test_the_presets_by_name_from_the_hub_cache_offline(tmp_path, home):
    paper_check.build_datasets(tmp_path / "repos", home / "hub", rows=4)
    for name, (split, field) in paper_check.DATASETS.items():
        assert bench.dataset_spec(name) == f"{name}:{split}:{field}"  # the stand-ins sit where the presets look
        prompts = bench.read_dataset(bench.dataset_spec(name))
        assert len(prompts) == 4 and name.split("/")[1] in prompts[0]
    with pytest.raises(ValueError, match="not in the local Hub cache, and HF_HUB_OFFLINE=1"):
        bench.read_dataset("org/missing:train:prompt")


def test_prompt_orders(tmp_path):
    rows = [{"prompt": p} for p in PROMPTS]
    sources = [("a", rows), ("b", rows[:5])]
    fixed = [bench.draw_prompts(sources, 3, "fixed", seed) for seed in (1, 2)]
    assert fixed[0] == fixed[1] == [{"prompt": p, "dataset": d} for d in "ab" for p in PROMPTS[:3]]
    paper = {seed: bench.draw_prompts(sources, 3, "paper", seed) for seed in (1, 2, 3)}
    for seed, drawn in paper.items():  # datasets' own shuffle by the seed, then the first N
        for name, source in sources:
            shuffled = datasets.Dataset.from_list(source).shuffle(seed=seed)
            assert [r["prompt"] for r in drawn if r["dataset"] == name] == list(shuffled["prompt"][:3])
    assert len({tuple(r["prompt"] for r in drawn) for drawn in paper.values()}) == 3  # each seed its own prompts


def test_num_prompts_is_per_dataset_and_bounded_by_each(tmp_path, home):
    paper_check.build_datasets(tmp_path / "repos", home / "hub", rows=4)
    parser, args = bench.parse_args(["--dataset", "rm-bench", "--dataset", "judgebench", "--num-prompts", "3"])
    sources = bench.prompt_sources(args)
    assert [len(rows) for _, rows in sources] == [4, 4]
    assert len(bench.draw_prompts(sources, args.num_prompts, args.prompt_order, 0)) == 6
    args.num_prompts = 5
    with pytest.raises(ValueError, match="--num-prompts 5 exceeds the 4 prompts of --dataset THU-KEG/RM-Bench"):
        bench.prompt_sources(args)


def test_paired_differences_per_dataset_pair_the_same_seed_and_prompt():
    """`by_dataset[...][method]["vs_none"]`: method minus Best-of-N over the same (seed, prompt); a prompt listed
    twice pairs in order; each dataset on its own."""

    def record(method, seed, dataset, prompt, top1):
        return {"method": method, "seed": seed, "dataset": dataset, "prompt": prompt, "top1": top1, "avg": top1 / 2,
                "distinct2": 1.0, "seconds": 0.1}  # fmt: skip

    keys = [(0, "a", "p"), (0, "a", "q"), (1, "a", "p"), (0, "b", "p"), (0, "b", "p")]  # "p" twice in b
    base = [record("none", s, d, p, float(i)) for i, (s, d, p) in enumerate(keys)]
    gains = [0.5, -0.25, 1.0, 2.0, 3.0]
    guided = [record("entrgi", s, d, p, float(i) + g) for i, ((s, d, p), g) in enumerate(zip(keys, gains))]
    result = bench.summarise_datasets(base + guided, ["none", "entrgi"])
    assert set(result) == {"a", "b"} and "vs_none" not in result["a"]["none"]
    for dataset, expected in (("a", gains[:3]), ("b", gains[3:])):
        paired = result[dataset]["entrgi"]["vs_none"]
        assert paired["top1"]["n"] == len(expected)
        assert (paired["top1"]["diff"], paired["top1"]["ci"]) == pytest.approx(bench.mean_ci(expected), nan_ok=True)
        assert paired["avg"]["diff"] == pytest.approx(sum(expected) / len(expected) / 2)
        assert "eval_top1" not in paired  # no held-out scores in these records
