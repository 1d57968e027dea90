"""MkDocs hook: render the math that `pymdownx.arithmatex` (generic mode) marks up as MathML, at build time.

Browsers draw MathML natively, so the site shows formulas with no script and no network (no MathJax, no CDN).
A formula that latex2mathml cannot convert, or that uses a command it does not know, is logged as a warning,
which fails `mkdocs build --strict`.
"""

from __future__ import annotations

import html
import logging
import re

from latex2mathml.converter import convert

log = logging.getLogger("mkdocs.hooks.mathml")

# arithmatex's generic output: inline `<span class="arithmatex">\(...\)</span>`, display `<div ...>\[...\]</div>`
_ARITHMATEX = re.compile(r'<(span|div) class="arithmatex">\s*\\[(\[](.*?)\\[)\]]\s*</\1>', re.DOTALL)
_UNKNOWN_COMMAND = re.compile(r">(\\[A-Za-z]+)<")


def on_page_content(content: str, page, config, files) -> str:
    def render(match: re.Match) -> str:
        tag, tex = match.group(1), html.unescape(match.group(2)).strip()
        try:
            mathml = convert(tex, display="block" if tag == "div" else "inline")
        except Exception as error:  # latex2mathml raises a variety of errors on malformed TeX
            log.warning("%s: cannot render the formula %r as MathML: %s", page.file.src_uri, tex, error)
            return match.group(0)
        unknown = _UNKNOWN_COMMAND.findall(mathml)
        if unknown:  # latex2mathml prints a command it does not know as text
            log.warning("%s: the formula %r uses %s, unknown to latex2mathml", page.file.src_uri, tex, unknown)
        # the TeX source stays in the title attribute: shown on hover, and there to copy
        return f'<{tag} class="arithmatex" title="{html.escape(tex)}">{mathml}</{tag}>'

    return _ARITHMATEX.sub(render, content)
