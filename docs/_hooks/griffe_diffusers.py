"""Griffe extension: read diffusers-style docstrings as the Google-style ones mkdocstrings renders.

diffusers writes `name (`type`, *optional*, defaults to X): ...`, links with [`Name`], indents bullet lists under
a sentence, and fills `Examples:` from a module constant with `@replace_example_docstring(EXAMPLE_DOC_STRING)`.
On the docstring text griffe reads (the source files are not touched), this extension:

- keeps an argument's type and drops `*optional*` and `defaults to X` (the page shows the signature's default);
- turns [`Name`] and [`~module.Name.method`] into links, resolved in the object's scope, that fall back to plain
  code when the site does not document the target;
- makes an indented bullet list in the description a Markdown list (not a code block);
- puts the example where `replace_example_docstring` puts it at import time.
"""

from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from griffe import Extension, Object

# Google-style section titles griffe recognises (a line of its own at the docstring's left margin)
_SECTIONS = {
    "Args", "Arguments", "Params", "Parameters", "Keyword Args", "Keyword Arguments", "Other Parameters",
    "Attributes", "Returns", "Yields", "Receives", "Raises", "Warns", "Examples", "Example", "Note", "Notes",
    "Warning", "Warnings", "Functions", "Classes", "Modules", "Methods",
}  # fmt: skip
_ARGUMENT_SECTIONS = {"Args", "Arguments", "Params", "Parameters", "Other Parameters", "Attributes"}
_ITEM = re.compile(r"^(\s+)(\*{0,2}\w+) \((.+)\):(.*)$")
_LINK = re.compile(r"\[`(~?)([\w.]+)`\](?![\[(])")  # [`Name`] / [`~pkg.Name.attr`] without a link target
_EXAMPLE_DECORATOR = re.compile(r"replace_example_docstring\((\w+)\)")


def _split_top_level(text: str) -> list[str]:
    """Splits on the commas outside backticks and brackets."""
    parts, current, depth, in_code = [], [], 0, False
    for char in text:
        in_code ^= char == "`"
        if not in_code:
            depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0 and not in_code:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _argument_type(paren: str) -> str:
    """`` `int`, *optional*, defaults to 3 `` -> `int`; `` [`VocabularyMap`] `` -> `VocabularyMap`."""
    kept = [p for p in _split_top_level(paren) if p != "*optional*" and not p.startswith("defaults to")]
    return _LINK.sub(r"\2", ", ".join(kept)).replace("`", "")


def _section(line: str) -> str | None:
    title = line.strip().removesuffix(":")
    return title if line[:1].strip() and line.rstrip().endswith(":") and title in _SECTIONS else None


def _rewrite(text: str) -> str:
    """Argument types and indented lists, line by line (see the module docstring)."""
    out: list[str] = []
    section, list_indent = None, None
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent == 0:
            section = _section(line) or (section if line.startswith("```") else None)
            list_indent = None
        item = _ITEM.match(line)
        if section in _ARGUMENT_SECTIONS and item and indent == 4:
            name, kind, rest = item.group(2), _argument_type(item.group(3)), item.group(4)
            line = f"    {name} ({kind}):{rest}" if kind else f"    {name}:{rest}"
        elif section is None and line.strip():
            if list_indent is None and indent > 0 and line.lstrip().startswith("- "):
                list_indent = indent
                if out and out[-1].strip():
                    out.append("")  # a Markdown list needs a blank line after the sentence that introduces it
            if list_indent is not None and indent >= list_indent:
                line = line[list_indent:]
        out.append(line)
    return "\n".join(out)


def _links(text: str, obj: Object) -> str:
    """[`Name`] -> a link to `Name` as seen from `obj`'s scope when the site documents it, else plain code."""

    def link(match: re.Match) -> str:
        short, path = match.groups()
        head, _, rest = path.partition(".")
        try:
            target = obj.resolve(head) + (f".{rest}" if rest else "")
        except Exception:  # not a name in scope (e.g. already a full path): autorefs looks it up as written
            target = path
        title = path.rsplit(".", 1)[-1] if short else path
        # `optional`: a reference to something the API pages do not show renders as code instead of failing
        return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'

    return _LINK.sub(link, text)


def _insert_example(text: str, literal: str) -> str:
    """Fills an empty `Examples:` section with the example constant (`literal`: its source, a string literal)."""
    example = textwrap.dedent(ast.literal_eval(literal)).strip("\n")
    example = textwrap.dedent(example.removeprefix("Examples:")).strip("\n")
    body = textwrap.indent(example, "    ")
    return re.sub(r"^Examples:\n(?=\n)", lambda _: f"Examples:\n{body}\n", text, count=1, flags=re.MULTILINE)


class DiffusersDocstrings(Extension):
    """Rewrites every docstring of a package once it is loaded (names resolve then); see the module docstring."""

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            text = obj.docstring.value
            for decorator in getattr(obj, "decorators", ()):
                constant = _EXAMPLE_DECORATOR.search(str(decorator.value))
                example = obj.module.members.get(constant.group(1)) if constant else None
                if example is not None and example.value is not None:
                    text = _insert_example(text, str(example.value))
            obj.docstring.value = _links(_rewrite(text), obj)


def _walk(obj: Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
