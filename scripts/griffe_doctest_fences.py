"""Griffe extension for the API reference: doctest examples rendered as code.

The docstrings of keras_dino keep their examples as bare doctest lines (`>>> ...` and
the expected output), which `tests/test_docstrings.py` runs. Markdown would read such
lines as text (and `[1, 2]` in an output as a link), so this wraps every run of doctest
lines in a ```pycon fence before mkdocstrings renders the docstring. Lines already inside
a fence are left alone.
"""

import re

import griffe

_DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


def fence_doctests(text: str) -> str:
    """Returns `text` with each run of doctest lines inside a ```pycon fence."""
    out = []
    in_fence = False
    in_doctest = False
    doctest_indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest:
            if stripped and not stripped.startswith("```"):
                out.append(_DOCTEST_FLAGS.sub("", line))
                continue
            out.append(doctest_indent + "```")
            in_doctest = False
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            doctest_indent = line[: len(line) - len(line.lstrip())]
            out.append(doctest_indent + "```pycon")
            out.append(_DOCTEST_FLAGS.sub("", line))
            in_doctest = True
            continue
        out.append(line)
    if in_doctest:
        out.append(doctest_indent + "```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fences the doctest examples of every docstring griffe loads."""

    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
