"""The documentation builds, and its marked code runs.

* `mkdocs build --strict` of `mkdocs.yml` (the guides in `docs/` and the API reference
  rendered from the docstrings): a broken link, an unknown reference or a docstring
  that documents a parameter the signature lacks fails the build.
* The python blocks of README.md and `docs/*.md` marked with the comment
  `<!-- test: run -->` on the line before their fence run, in order, one namespace per
  document, in a folder holding the files they name (`cat.jpg`, `dog.png`, `my_photos/`
  and its list `my_photos/train.txt`). The marker may list replacements,
  `'old' -> 'new'`, separated by `;`, which shrink a block to CPU-seconds (a full
  training run to one epoch of a tiny network); each must match the block. Preset names
  (the first argument of `load_pretrained`) resolve to the official fixture checkpoints
  of the same patch size (ViTs of reduced width), since the released weights cannot be
  downloaded here.
* The README's links reach existing files and headings.
* `docs/cli.md` lists every flag of every `examples/*.py` tool
  (`scripts/cli_docs.py` writes it).

mkdocstrings reads the code without importing it (griffe's static analysis): the build
and the CLI check run once, in the TensorFlow process (`slow`, as under Bazel); the code
blocks, which show backend-agnostic Keras, run in the torch process.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import FIXTURES, IMAGES, REPO

# Runs in one backend's process (tests/conftest.py): documents and their code blocks.
pytestmark = pytest.mark.once

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!-- test: run(?P<args>.*?)-->\s*$")
REPLACEMENT = re.compile(r"'((?:[^'\\]|\\.)*)'\s*->\s*'((?:[^'\\]|\\.)*)'")
FENCE = re.compile(r"^```python\s*$")
# Released presets -> the official fixture checkpoint of the same patch size (48 wide,
# 3 heads, which a checkpoint of a non-standard width does not record).
FIXTURE_OF_PRESET = {
    "dino_vits16": "backbone_vit_mini16.pth",
    "dino_vitb16": "backbone_vit_mini16.pth",
    "dino_vits8": "backbone_vit_mini8.pth",
    "dino_vitb8": "backbone_vit_mini8.pth",
}


def marked_blocks(path):
    """`[(line, code, replacements)]` of the marked python blocks of a document."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    fence = None  # the backticks of the fence we are in (markers inside one are text)
    for i, line in enumerate(lines):
        ticks = re.match(r"^(`{3,})", line)
        if fence is None and ticks:
            fence = ticks.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        match = MARKER.match(line) if fence is None else None
        if not match:
            continue
        if i + 1 >= len(lines) or not FENCE.match(lines[i + 1]):
            raise AssertionError(f"{path.name}:{i + 1}: the test marker must precede a "
                                 "```python fence")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        code = "\n".join(lines[i + 2:end]) + "\n"
        blocks.append((i + 3, code, REPLACEMENT.findall(match.group("args"))))
    return blocks


def prepared(code, replacements, where):
    for old, new in replacements:
        if old not in code:
            raise AssertionError(f"{where}: the replacement '{old}' matches nothing; "
                                 "update the marker with the block")
        code = code.replace(old, new)
    for preset, fixture in FIXTURE_OF_PRESET.items():
        code = code.replace(f'"{preset}"', f"{str(FIXTURES / fixture)!r}, num_heads=3")
    return code


@pytest.fixture
def sandbox(tmp_path, monkeypatch, fixtures_dir):
    """A working folder with the files the documents name."""
    from PIL import Image

    photos = sorted(IMAGES.glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no images in {IMAGES}; set KERAS_DINO_SHARED")
    (tmp_path / "my_photos").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "my_photos" / photo.name)
    (tmp_path / "my_photos" / "train.txt").write_text(
        "".join(f"{photo.name}\n" for photo in photos))
    shutil.copy(IMAGES / "chelsea.jpg", tmp_path / "cat.jpg")
    Image.open(IMAGES / "coffee.jpg").convert("RGB").save(tmp_path / "dog.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_every_marker_precedes_a_python_block():
    counted = sum(len(marked_blocks(path)) for path in DOCUMENTS)
    assert counted >= 8  # the README's two examples and the features guide


@pytest.mark.backends("torch")
@pytest.mark.parametrize(
    "document", [p for p in DOCUMENTS if marked_blocks(p)], ids=lambda p: p.name
)
def test_marked_code_blocks_run(document, sandbox):
    import keras

    namespace = {"__name__": "__docs__"}
    policy = keras.config.dtype_policy()
    try:
        for line, code, replacements in marked_blocks(document):
            where = f"{document.name}:{line}"
            source = prepared(code, replacements, where)
            exec(compile(source, where, "exec"), namespace)  # noqa: S102
    finally:
        keras.config.set_dtype_policy(policy)


@pytest.mark.slow
def test_readme_links_resolve():
    """The README is outside the site: its links to files and headings are checked here."""
    from markdown.extensions.toc import slugify

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert len(local) >= 10
    for link in local:
        target, _, anchor = link.partition("#")
        path = REPO / target
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            assert anchor in {slugify(h, "-") for h in headings}, f"README: no #{anchor} in {target}"


@pytest.mark.slow
def test_mkdocs_build_is_strict_and_clean(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "training" / "index.html").is_file()


@pytest.mark.slow
def test_cli_reference_lists_every_flag():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import cli_docs
    finally:
        sys.path.remove(str(REPO / "scripts"))
    written = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert cli_docs.render(written) == written, (
        "docs/cli.md is out of date: run python scripts/cli_docs.py")
