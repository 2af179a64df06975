"""The options of every export format, in one object: `ExportOptions`.

`export_saved_model`, `export_onnx` and `export_litert` (and `export(format=...)`) take an
`ExportOptions`, or its fields as keywords. One options object serves every format: a
field a format does not read (`float16` for a SavedModel, `resize_size` for ONNX) is
carried unused; given as a keyword to a writer that does not read it, it is refused.
The evaluation view recorded in the metadata and applied by `serve_bytes` is
`options.eval_config`, a `keras_dino.preprocessing.EvalConfig`.
"""

import dataclasses

from keras_dino.errors import did_you_mean
from keras_dino.export import tf_serving
from keras_dino.preprocessing import EvalConfig

INPUT_DTYPES = ("uint8", "float32")
DEFAULT_OPSET = 17
FORMATS = ("saved_model", "onnx", "litert")


def check_format(fmt) -> None:
    """A `ValueError` naming the formats (and the one probably meant) unless `fmt` is one.

    Example:

    >>> check_format("tflite")
    Traceback (most recent call last):
    ...
    ValueError: unknown export format 'tflite' (TensorFlow Lite is LiteRT now: format='litert'); known: saved_model, onnx, litert.
    """
    if fmt in FORMATS:
        return
    if str(fmt).lower().replace("_", "").replace("-", "") in ("tflite", "tensorflowlite"):
        hint = " (TensorFlow Lite is LiteRT now: format='litert')"
    else:
        hint = did_you_mean(str(fmt).lower(), FORMATS, spell=lambda c: f"format='{c}'")
        hint = f" ({hint})" if hint else ""
    raise ValueError(f"unknown export format {fmt!r}{hint}; known: {', '.join(FORMATS)}.")


# The options only some formats read; every other option applies to all three.
_ONLY_FOR = {
    "resize_size": ("saved_model",),
    "models_config": ("saved_model",),
    "serving_base_path": ("saved_model",),
    "float16": ("onnx", "litert"),
    "opset": ("onnx",),
}


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What to export and how, for any format.

    Args:
        model_name: the export's name: TF Serving's model name (SavedModel), the file's
            name (`<model_name>.onnx`, `<model_name>.tflite`).
        version: a non-negative integer: the SavedModel's version directory; recorded in
            the metadata of every format.
        image_size: the square input size `S`, a multiple of the patch size; `None`
            (ONNX's default; a SavedModel from the TensorFlow backend): any height and
            width, the position embeddings interpolated in the graph (`serve_bytes` then
            crops the official 224).
        resize_size: (SavedModel) shorter side before the center crop of `serve_bytes`;
            default `round(image_size * 256 / 224)`.
        input_dtype: `"uint8"` or `"float32"`: raw RGB pixel values 0..255 either way,
            normalised in the graph.
        l2_normalize: L2-normalise the embedding (`cls_embedding_l2norm`).
        include_patch_tokens: (ViT, XCiT) also output the normalised patch tokens
            `patch_tokens` `[batch, N, E]` (class and register tokens left out).
        include_attention: (ViT, XCiT) also output `cls_attention`
            `[batch, heads, grid_h, grid_w]` from `serving_default` (a SavedModel always
            has it in its `attention` signature).
        float16: (ONNX, LiteRT) float16 weights, float32 arithmetic.
        opset: (ONNX) the opset.
        overwrite: replace an existing export (otherwise `FileExistsError`).
        models_config: (SavedModel) write or update `<base_dir>/models.config`.
        serving_base_path: (SavedModel) the `base_path` in models.config.
        weights_source: the weights' provenance recorded in the metadata (by default
            derived from the model: preset URL, checkpoint path and sha256, ...).
        load_kwargs: arguments of `load_pretrained` when the model is a name or a path.
        verbose: print the export's description.

    Example:

    >>> options = ExportOptions(image_size=96, l2_normalize=True)
    >>> options.eval_config.resize_size, options.replace(image_size=None).image_size
    (110, None)
    """

    model_name: str = "dino"
    version: int = 1
    image_size: int | None = 224
    resize_size: int | None = None
    input_dtype: str = "uint8"
    l2_normalize: bool = False
    include_patch_tokens: bool = False
    include_attention: bool = False
    float16: bool = False
    opset: int = DEFAULT_OPSET
    overwrite: bool = False
    models_config: bool = True
    serving_base_path: str | None = None
    weights_source: str | None = None
    load_kwargs: dict | None = None
    verbose: bool = False

    def __post_init__(self):
        tf_serving.check_model_name(self.model_name)
        tf_serving.check_version(self.version)
        if self.input_dtype not in INPUT_DTYPES:
            raise ValueError(
                f"input_dtype must be one of {INPUT_DTYPES}; got {self.input_dtype!r}."
            )
        size = self.image_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size <= 0):
            raise ValueError(f"image_size must be a positive integer or None; got {size!r}.")
        self.eval_config  # noqa: B018 - checks resize_size against image_size

    @property
    def eval_config(self) -> EvalConfig:
        """The evaluation view: `serve_bytes`'s preprocessing and the metadata's record
        (the official 224 view when `image_size` is None)."""
        return EvalConfig(self.image_size or 224, self.resize_size)

    def replace(self, **changes) -> "ExportOptions":
        """A copy with `changes`."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_format(cls, fmt: str, options=None, **kwargs) -> "ExportOptions":
        """The options of a `fmt` export: `options` (or the defaults) updated by `kwargs`.

        A keyword that `fmt` does not read is refused (`TypeError`), as is an unknown one.
        ONNX's default `image_size` is None (any size); a LiteRT export needs one.

        Example:

        >>> ExportOptions.for_format("onnx", float16=True).image_size is None
        True
        """
        check_format(fmt)
        if options is not None and not isinstance(options, ExportOptions):
            raise TypeError(f"options must be an ExportOptions; got {type(options).__name__} "
                            "(give model_name, version and the rest as keywords).")
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in fields:
                raise TypeError(f"unknown export option {key!r}; known: {', '.join(sorted(fields))}.")
            if fmt not in _ONLY_FOR.get(key, FORMATS):
                raise TypeError(f"{key} applies to the {' and '.join(_ONLY_FOR[key])} export, "
                                f"not to {fmt}.")
        if options is None and fmt == "onnx":
            kwargs.setdefault("image_size", None)
        options = (options or cls()).replace(**kwargs) if kwargs else (options or cls())
        if fmt == "litert" and options.image_size is None:
            raise ValueError("a LiteRT export has a fixed image size: give image_size.")
        return options
