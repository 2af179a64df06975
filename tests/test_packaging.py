"""Packaging and build metadata agree with the code.

The public API resolves and carries type hints, the version is single-sourced, the Bazel
BUILD files declare a target for every test and example (so they cannot drift from the
code), and `import keras_dino` keeps TensorFlow out under the JAX and torch backends.
The wheel itself is built and installed by scripts/check_wheel.sh.
"""

import ast
import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys
import types

import pytest

import keras_dino

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.tf_only  # `keras_dino.data` / `export` import TensorFlow

# Resolved: under Bazel this file is a symlink into the checkout, whose BUILD files are
# not runfiles.
REPO = pathlib.Path(__file__).resolve().parents[1]

# Public functions of keras_dino.__all__ whose parameters had no type hints when this
# check was added (tensor arguments, typed by backend). New public functions must be
# fully hinted; remove a name here once it is.
KNOWN_UNHINTED = {
    "export_saved_model": {"model", "base_dir"},
    "load_pretrained": {"name_or_path"},
    "normalize_images": {"images", "mean", "std"},
    "preprocess_images": {"images"},
}


def _pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _starlark(path):
    """A BUILD file parsed as Python (Starlark's syntax is a subset)."""
    return ast.parse((REPO / path).read_text(), filename=str(path))


def _calls(tree, rule):
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == rule
    ]


def _kwarg(call, name):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _list_assignments(tree):
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = ast.literal_eval(node.value)
    return out


def _has_main(path):
    text = path.read_text()
    return "__main__" in text or re.search(r"^def main\(", text, re.M) is not None


# --- public API -------------------------------------------------------------------------


@pytest.mark.parametrize("name", keras_dino.__all__)
def test_public_names_resolve(name):
    assert getattr(keras_dino, name) is not None


def _public_functions():
    for name in keras_dino.__all__:
        obj = getattr(keras_dino, name)
        if inspect.isfunction(obj):
            yield name, obj


def _unhinted(function):
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.annotation is inspect.Parameter.empty
        and p.kind not in skip
        and p.name not in ("self", "cls")
    }


def test_public_functions_have_type_hints():
    new_gaps = {}
    for name, function in _public_functions():
        missing = _unhinted(function) - KNOWN_UNHINTED.get(name, set())
        if missing:
            new_gaps[name] = sorted(missing)
    assert not new_gaps, f"public functions without type hints on these parameters: {new_gaps}"


def test_public_classes_and_modules_are_documented():
    for name in keras_dino.__all__:
        obj = getattr(keras_dino, name)
        if inspect.isclass(obj) or isinstance(obj, types.ModuleType):
            assert inspect.getdoc(obj), f"keras_dino.{name} has no docstring"


# --- version, license, changelog --------------------------------------------------------


def test_version_is_single_sourced():
    project = _pyproject()
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    module, _, name = attr.rpartition(".")
    assert getattr(importlib.import_module(module), name) == keras_dino.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", keras_dino.__version__)
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(keras_dino.__version__)}\]?", changelog, re.M), (
        f"CHANGELOG.md has no section for version {keras_dino.__version__}"
    )


def test_license_is_apache_2():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert "LICENSE" in project["license-files"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_dependencies_have_ranges():
    project = _pyproject()["project"]
    requirements = list(project["dependencies"])
    for extra in ("jax", "torch", "serving", "test"):
        requirements += project["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    for needed in ("keras", "tensorflow", "tensorflow-datasets", "numpy", "absl-py", "jax",
                   "torch", "tensorflow-serving-api", "pytest", "ruff"):
        assert needed in names, f"{needed} is not declared in pyproject.toml"
    for requirement in project["dependencies"]:
        assert ">=" in requirement and "<" in requirement, f"{requirement}: no tested range"


# --- Bazel BUILD files ------------------------------------------------------------------


def test_build_declares_the_library_with_its_package_data():
    tree = _starlark("BUILD")
    libraries = {ast.literal_eval(_kwarg(c, "name")): c for c in _calls(tree, "py_library")}
    assert "keras_dino" in libraries
    text = ast.unparse(libraries["keras_dino"])
    assert "keras_dino/**/*.py" in text
    assert "cifar10_mini/**/*.jpg" in text
    # A BUILD file inside the package would cut it out of the top-level glob.
    nested = [p for p in (REPO / "keras_dino").rglob("BUILD*") if p.is_file()]
    assert not nested, f"BUILD files inside keras_dino/ hide files from //:keras_dino: {nested}"


def test_build_has_a_py_test_for_every_test_file():
    tree = _starlark("tests/BUILD")
    lists = _list_assignments(tree)
    fast, slow = lists["FAST_TESTS"], lists["SLOW_TESTS"]
    files = sorted(p.name for p in (REPO / "tests").glob("test_*.py"))
    declared = fast + slow
    assert len(set(declared)) == len(declared), "a test file is listed twice in tests/BUILD"
    missing = sorted(set(files) - set(declared))
    stale = sorted(set(declared) - set(files))
    assert not missing, f"add these to FAST_TESTS or SLOW_TESTS in tests/BUILD: {missing}"
    assert not stale, f"tests/BUILD lists files that do not exist: {stale}"
    text = (REPO / "tests" / "BUILD").read_text()
    assert "for src in FAST_TESTS" in text and "for src in SLOW_TESTS" in text
    assert (REPO / "tests" / "bazel_pytest_main.py").is_file()


@pytest.mark.parametrize("folder", ["examples", "bench"])
def test_build_has_a_py_binary_for_every_script(folder):
    tree = _starlark(f"{folder}/BUILD")
    binaries = {}
    for call in _calls(tree, "py_binary"):
        srcs = ast.literal_eval(_kwarg(call, "srcs"))
        main = _kwarg(call, "main")
        main = ast.literal_eval(main) if main is not None else None
        name = ast.literal_eval(_kwarg(call, "name"))
        script = main or (f"{name}.py" if f"{name}.py" in srcs else srcs[0])
        binaries[script] = name
    scripts = sorted(p.name for p in (REPO / folder).glob("*.py") if _has_main(p))
    missing = [s for s in scripts if s not in binaries]
    assert not missing, f"add py_binary targets to {folder}/BUILD for: {missing}"
    stale = [s for s in binaries if not (REPO / folder / s).is_file()]
    assert not stale, f"{folder}/BUILD names scripts that do not exist: {stale}"


def test_bazel_offline_repositories_exist():
    workspace = (REPO / "WORKSPACE").read_text()
    for repo in ("rules_cc", "rules_java", "remote_coverage_tools"):
        assert f'name = "{repo}"' in workspace
        root = REPO / "third_party" / "bazel" / repo
        assert (root / "WORKSPACE").is_file() and (root / "BUILD").is_file()


# --- TensorFlow stays out of `import keras_dino` under JAX and torch --------------------


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_does_not_load_tensorflow(backend):
    pytest.importorskip(backend)
    code = (
        "import sys, keras_dino\n"
        "keras_dino.DINO  # the first public name imports the Keras part of the library\n"
        "assert 'keras_dino.training.dino' in sys.modules\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
        "assert not leaked, leaked[:5]\n"
    )
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_import_leaves_the_backend_to_choose():
    """`import keras_dino` imports no Keras: `keras-dino --backend=jax` sets KERAS_BACKEND
    after `keras_dino.cli` is imported, and Keras reads it when it is first imported."""
    pytest.importorskip("jax")
    code = (
        "import os, sys, keras_dino, keras_dino.cli, keras_dino.tools.common\n"
        "assert 'keras' not in sys.modules, 'keras imported with keras_dino'\n"
        "os.environ['KERAS_BACKEND'] = 'jax'\n"
        "model = keras_dino.vit_tiny(patch_size=16)\n"
        "import keras\n"
        "assert keras.backend.backend() == 'jax', keras.backend.backend()\n"
        "assert keras_dino.checkpoints.read_checkpoint  # submodules, as before\n"
        "from keras_dino import *  # every name of __all__ resolves\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- metadata for users and tools: typing marker, URLs, citation --------------------------


def test_py_typed_ships_with_the_package():
    assert (REPO / "keras_dino" / "py.typed").is_file()
    package_data = _pyproject()["tool"]["setuptools"]["package-data"]["keras_dino"]
    assert "py.typed" in package_data
    assert "keras_dino/py.typed" in (REPO / "MANIFEST.in").read_text()


def test_project_urls():
    urls = _pyproject()["project"]["urls"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())


def test_citation_cites_dino_and_this_version():
    text = (REPO / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(keras_dino.__version__)}$", text, re.M)
    assert "cff-version: 1.2.0" in text and "license: Apache-2.0" in text
    assert "title: Emerging Properties in Self-Supervised Vision Transformers" in text
    assert "family-names: Caron" in text and "year: 2021" in text and "(ICCV)" in text


def test_changelog_release_has_one_section_per_kind():
    text = (REPO / "CHANGELOG.md").read_text()
    release = text.split(f"## {keras_dino.__version__}\n", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (.+)$", release, re.M)
    assert len(headings) == len(set(headings)), headings
    assert "## Unreleased" not in text.split(f"## {keras_dino.__version__}\n", 1)[0]
