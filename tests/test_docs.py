"""The documentation site: `mkdocs build --strict` succeeds, documents the public API and works offline."""

from __future__ import annotations

import importlib.util
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "_hooks"

# What docs/api.md promises to document, by the anchor mkdocstrings gives each object.
DOCUMENTED = [
    "entrgi_pipelines.EntRGiPipeline",
    "entrgi_pipelines.EntRGiPipeline.__call__",
    "entrgi_pipelines.EntRGiPipelineOutput",
    "entrgi_pipelines.MaskedDiffusionScheduler",
    "entrgi_pipelines.MaskedDiffusionScheduler.step",
    "entrgi_pipelines.MaskedDiffusionSchedulerOutput",
    "entrgi_pipelines.models.SDARForCausalLM",
    "entrgi_pipelines.models.SDARConfig",
    "entrgi_pipelines.models.Fast_dLLM_QwenForCausalLM",
    "entrgi_pipelines.models.Fast_dLLM_QwenConfig",
    "entrgi_pipelines.models.BlockKVCache",
    "entrgi_pipelines.models.BlockKVCache.select_rows",
    "entrgi_pipelines.RewardGuidance",
    "entrgi_pipelines.VocabularyMap",
    "entrgi_pipelines.guidance.entropy_weight",
    "entrgi_pipelines.guidance.entrgi_embeddings",
    "entrgi_pipelines.guidance.optimize_logits",
    "entrgi_pipelines.guidance.as_differentiable_reward",
    "entrgi_pipelines.guidance.SequenceClassifierReward",
    "entrgi_pipelines.guidance.CallableReward",
    "entrgi_pipelines.guidance.RewardTerm",
    "entrgi_pipelines.guidance.CausalLMReward",
    "entrgi_pipelines.guidance.RewardTemplate",
    "entrgi_pipelines.stack.load_embedded_stack",
    "entrgi_pipelines.stack.EmbeddedStack",
    "entrgi_pipelines.stack.dllm.load_embedded_dllm",
    "entrgi_pipelines.stack.reward_models.load_similarity_reward_model",
    "entrgi_pipelines.stack.reward_models.load_topic_judge",
    "entrgi_pipelines.stack.load_lm_judge_reward",
]


def _require_docs_tools():
    for module in ("mkdocs", "mkdocstrings_handlers.python", "pymdownx", "latex2mathml"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: `pip install -e '.[docs]'` installs the documentation tools")


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    _require_docs_tools()
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


def test_api_page_documents_the_public_names(site):
    html = (site / "api.html").read_text()
    missing = [name for name in DOCUMENTED if f'id="{name}"' not in html]
    assert not missing, f"the API page has no entry for {missing}"
    # diffusers-style argument types were read, not shown raw
    text = re.sub(r"<[^>]+>", "", html)
    assert "*optional*" not in text and "[`" not in text
    # the pipeline's example comes from EXAMPLE_DOC_STRING, as replace_example_docstring puts it at import time
    call = html[html.index('id="entrgi_pipelines.EntRGiPipeline.__call__"') :]
    assert "tiny_wordpiece_tokenizer" in call[: call.index('id="entrgi_pipelines.EntRGiPipelineOutput"')]


def test_every_formula_is_mathml_and_nothing_is_fetched(site):
    pages = {path.name: path.read_text() for path in site.glob("*.html")}
    assert pages["methods.html"].count("<math") >= 20
    for name, html in pages.items():
        # arithmatex leaves TeX in \( \) or \[ \] only where the MathML hook did not convert it
        assert not re.search(r'class="arithmatex">\s*\\[(\[]', html), name
        remote = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"', html)
        assert not remote, f"{name} loads {remote}"


def test_argument_types_lose_optional_and_defaults():
    _require_docs_tools()
    hook = _load_hook("griffe_diffusers")
    assert hook._argument_type("`int`, *optional*, defaults to 3") == "int"
    assert hook._argument_type("[`VocabularyMap`], *optional*") == "VocabularyMap"
    assert hook._argument_type("`torch.Tensor` of shape `(B, K)` or `None`") == "torch.Tensor of shape (B, K) or None"
    assert hook._argument_type("`dict[str, int]`, defaults to `{}`") == "dict[str, int]"


def test_indented_lists_become_markdown_lists_outside_sections_only():
    _require_docs_tools()
    hook = _load_hook("griffe_diffusers")
    text = "Rules:\n    - a: one\n      more\n    - b: two\n\nArgs:\n    x (`int`, *optional*): an x\n        - kept\n"
    lines = hook._rewrite(text).split("\n")
    assert lines[:5] == ["Rules:", "", "- a: one", "  more", "- b: two"]
    assert "    x (int): an x" in lines and "        - kept" in lines


def test_mathml_hook_converts_and_warns_on_bad_tex(caplog):
    _require_docs_tools()
    hook = _load_hook("mathml")

    class Page:
        class file:  # noqa: N801 - stands in for mkdocs' File
            src_uri = "page.md"

    html = '<p><span class="arithmatex">\\(w &lt; 1\\)</span></p><div class="arithmatex">\\[\\frac{1}{2}\\]</div>'
    out = hook.on_page_content(html, Page, None, None)
    assert out.count("<math") == 2 and 'display="block"' in out and "&#x0003C;" in out  # `<` unescaped, re-encoded
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.mathml"):
        malformed = hook.on_page_content('<span class="arithmatex">\\(x^\\)</span>', Page, None, None)
        hook.on_page_content('<span class="arithmatex">\\(\\nosuchcommand x\\)</span>', Page, None, None)
    assert "<math" not in malformed  # left as TeX, and the build fails on the warnings
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["page.md", "page.md"]
    assert "\\nosuchcommand" in caplog.records[1].getMessage()
