"""TF Serving's conventions: model names, versions, `<base_dir>/<model_name>/<version>/`
and `models.config`."""

import pathlib
import re

import numpy as np


def check_model_name(model_name):
    """Refuses a model name that is not a plain directory name."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", model_name or "") or model_name in (".", ".."):
        raise ValueError(
            f"model_name must be a plain directory name (letters, digits, '_', '-', '.'); "
            f"got {model_name!r}."
        )


def check_version(version) -> int:
    """The version as an int; TF Serving only serves non-negative integer directories."""
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            f"version must be a non-negative integer (TF Serving's rule); got {version!r}."
        )
    return int(version)


def config_blocks(text):
    """Top-level `config { ... }` blocks of a models.config `model_config_list`.

    Example:

    >>> config_blocks('model_config_list { config { name: "a" } config { name: "b" } }')
    ['config { name: "a" }', 'config { name: "b" }']
    """
    blocks, i = [], 0
    for match in re.finditer(r"\bconfig\s*\{", text):
        if match.start() < i:
            continue
        depth, j = 0, match.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        blocks.append(text[match.start() : j + 1])
        i = j + 1
    return blocks


def write_models_config(base_dir, model_name: str, base_path: str | None = None) -> str:
    """Adds (or replaces) `model_name` in `<base_dir>/models.config` and returns its path.

    The file is TF Serving's `--model_config_file` text proto; entries for other models
    already in it are kept. `base_path` is where the server sees `<base_dir>/<model_name>`:
    by default `/models/<model_name>`, the path inside the `tensorflow/serving` Docker image
    when `base_dir` is mounted at `/models`.

    Example:

    ```python
    write_models_config("exports", "dino")   # exports/models.config
    ```
    """
    check_model_name(model_name)
    base_path = base_path or f"/models/{model_name}"
    path = pathlib.Path(base_dir) / "models.config"
    kept = []
    if path.is_file():
        for block in config_blocks(path.read_text()):
            name = re.search(r"\bname\s*:\s*[\"']([^\"']*)[\"']", block)
            if name is None or name.group(1) != model_name:
                kept.append(block)
    entry = (
        "config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "  }"
    )
    blocks = [*kept, entry]
    path.write_text("model_config_list {\n  " + "\n  ".join(blocks) + "\n}\n")
    return str(path)
