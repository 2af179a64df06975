"""The command-line tools: `keras-dino <tool>` (keras_dino.cli) and `examples/<tool>.py`.

One module per tool, each with `main()`; `common` holds what they share. Nothing here is
imported by the library: the tools sit on top of every other part of keras_dino.
"""
