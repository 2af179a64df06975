"""Helpers shared by the example scripts: backend selection, logging, distribution."""

import json
import os
import sys


def select_backend(argv):
    """Sets KERAS_BACKEND from `--backend=...` before Keras is imported."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
        elif arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def append_log(output_dir, record):
    """Appends one JSON line to `<output_dir>/log.txt`, like the official tools."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "log.txt"), "a") as f:
        f.write(json.dumps(record) + "\n")


def say(message):
    print(message, flush=True)
