"""The inference graph of the ONNX and LiteRT exports, as one TensorFlow function.

`inference_function` builds `images -> {output name: tensor}` with the SavedModel's
`serving_default` conventions: `images` are raw RGB pixel values 0..255 (uint8 or
float32), NHWC, normalised in the graph with the ImageNet mean and std; the outputs are
named as the SavedModel's (`cls_embedding` or `embedding`, `_l2norm` when L2-normalised,
`patch_tokens`, `cls_attention` `[batch, heads, grid_h, grid_w]`, and `logits` for a
linear classifier).

The batch is always dynamic. With `image_size=None` the height and width are dynamic too:
a Vision Transformer then resizes its position embeddings *inside the graph*, with the
official kernel (torch's bicubic, A = -0.75, the `(grid + 0.1) / sqrt(N)` scale and clamped
taps; `keras_dino.layers.position_embedding`), its 4-tap matrices computed from the
runtime grid size in float64, as `bicubic_resize_matrix` computes them in numpy, so that
one graph serves every image size. Built from the TensorFlow backend's layers: the
conversion to ONNX (tf2onnx) and to LiteRT (the TFLite converter) reads TensorFlow graphs.
"""

import dataclasses
import math
import pathlib

import keras
import tensorflow as tf

from keras_dino.export import files, graph
from keras_dino.layers.position_embedding import _CUBIC_A
from keras_dino.models.resnet import ResNet
from keras_dino.models.xcit import XCiT


def check_backend(what: str) -> None:
    """Raises a `RuntimeError` naming the way out unless the backend is TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} export needs the TensorFlow Keras backend (this is '{backend}'): the "
            "converters (tf2onnx, the TFLite converter) read TensorFlow graphs. The weights "
            "are the same on every backend: save them (`model.save_weights("
            "'backbone.weights.h5')`, or pass the checkpoint file) and export from a process "
            "started with KERAS_BACKEND=tensorflow."
        )


_FORMAT_NAMES = {"onnx": "ONNX", "litert": "LiteRT"}


@dataclasses.dataclass(frozen=True)
class Prepared:
    """An ONNX or LiteRT export's checked target and traced inference function."""

    fmt: str
    path: pathlib.Path
    model: object  # what is exported: a backbone or a `LinearProbe`
    source: str | None  # where its weights came from
    backbone: object
    classifier: dict | None
    image_size: int | None
    input_dtype: str
    grid: int | None
    function: object  # `tf.function` images -> {output name: tensor}
    outputs: dict

    def metadata(self, *, model_name, version, weights_source, float16, runtime) -> dict:
        """The file's metadata (`files.make_metadata`), `runtime` naming the converter."""
        return files.make_metadata(
            self.fmt, model_name=model_name, version=version, model=self.model,
            backbone=self.backbone, source=weights_source or self.source,
            image_size=self.image_size, grid=self.grid, input_dtype=self.input_dtype,
            outputs=self.outputs, float16=float16, classifier=self.classifier,
            runtime=runtime,
        )


def prepare(fmt, model, base_dir, model_name, *, overwrite, load_kwargs, image_size,
            input_dtype, l2_normalize, include_patch_tokens, include_attention) -> Prepared:
    """The steps `export_onnx` and `export_litert` share, before their converters run.

    Checks the backend, the target file and the arguments (a LiteRT export has a fixed
    image size), resolves `model` (a preset or checkpoint is loaded), builds the backbone
    and traces `inference_function`.
    """
    check_backend(_FORMAT_NAMES[fmt])
    path = files.target_path(base_dir, model_name, fmt, overwrite)
    resolved, source, backbone, classifier = files.resolve(model, load_kwargs)
    grid = files.check_arguments(backbone, image_size, input_dtype,
                                 fixed_size=fmt == "litert")
    if not backbone.built:
        backbone.build((None, image_size, image_size, 3))
    function, outputs = inference_function(
        resolved, image_size=image_size, input_dtype=input_dtype, l2_normalize=l2_normalize,
        include_patch_tokens=include_patch_tokens, include_attention=include_attention,
    )
    return Prepared(fmt=fmt, path=path, model=resolved, source=source, backbone=backbone,
                    classifier=classifier, image_size=image_size, input_dtype=input_dtype,
                    grid=grid, function=function, outputs=outputs)


def _cubic_matrix(side: int, grid):
    """`(grid, side)` float64 matrix of torch's bicubic resize, for a runtime `grid`.

    The graph twin of `bicubic_resize_matrix(side, grid, (grid + 0.1) / side)`.
    """
    a = _CUBIC_A
    g = tf.cast(grid, tf.float64)
    scale = (g + 0.1) / float(side)
    src = (tf.range(g, dtype=tf.float64) + 0.5) / scale - 0.5
    base = tf.floor(src)
    t = src - base

    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = tf.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)
    taps = tf.cast(base, tf.int32)[:, None] + tf.constant([-1, 0, 1, 2], tf.int32)
    taps = tf.minimum(tf.maximum(taps, 0), side - 1)
    hits = tf.cast(tf.equal(taps[:, :, None], tf.range(side, dtype=tf.int32)), tf.float64)
    return tf.reduce_sum(hits * weights[:, :, None], axis=1)


def dynamic_pos_embed(pos_embed, grid_h, grid_w):
    """`interpolate_pos_encoding` for runtime grid sizes (scalar int32 tensors)."""
    num_patches, dim = pos_embed.shape[1] - 1, pos_embed.shape[-1]
    side = int(round(math.sqrt(num_patches)))
    if side * side != num_patches:
        raise ValueError(f"pos_embed holds {num_patches} patch positions, not a square grid.")
    rows, cols = _cubic_matrix(side, grid_h), _cubic_matrix(side, grid_w)
    # The official model keeps its embeddings as they are for the square training grid.
    same = tf.logical_and(tf.equal(grid_h, side), tf.equal(grid_w, side))

    def eye(n):
        return tf.cast(tf.equal(tf.range(n)[:, None], tf.range(side)[None, :]), tf.float64)

    rows = tf.cast(tf.where(same, eye(grid_h), rows), tf.float32)
    cols = tf.cast(tf.where(same, eye(grid_w), cols), tf.float32)
    source = tf.reshape(tf.cast(pos_embed[0, 1:], tf.float32), [side, side * dim])
    resized = tf.reshape(tf.matmul(rows, source), [grid_h, side, dim])  # rows resized
    resized = tf.einsum("wj,hjd->hwd", cols, resized)
    resized = tf.reshape(resized, [1, grid_h * grid_w, dim])
    return tf.concat([tf.cast(pos_embed[:, :1], tf.float32), resized], axis=1)


def _vit(backbone, x, *, attention: bool, n_last: int = 1):
    """ViT forward for any H and W: `(tokens, [normalised tokens of the last n blocks],
    attention or None, (grid_h, grid_w))`."""
    patch = backbone.patch_size
    if x.shape[1] is not None and x.shape[2] is not None:  # a fixed size: the model's own
        grid_h, grid_w = x.shape[1] // patch, x.shape[2] // patch
        pos_embed = backbone.interpolate_pos_encoding(grid_h, grid_w)
    else:
        grid_h, grid_w = tf.shape(x)[1] // patch, tf.shape(x)[2] // patch
        pos_embed = dynamic_pos_embed(tf.convert_to_tensor(backbone.pos_embed), grid_h, grid_w)
    tokens = backbone.patch_embed(x)
    batch = tf.shape(tokens)[0]
    cls = tf.broadcast_to(tf.cast(backbone.cls_token, tokens.dtype), [batch, 1, backbone.embed_dim])
    tokens = tf.concat([cls, tokens], axis=1)
    tokens = tokens + tf.cast(pos_embed, tokens.dtype)
    attn, outputs = None, []
    depth = len(backbone.blocks)
    for i, block in enumerate(backbone.blocks):
        if attention and i == depth - 1:
            tokens, attn = block(tokens, training=False, return_attention=True)
        else:
            tokens = block(tokens, training=False)
        if i >= depth - n_last:
            outputs.append(backbone.norm(tokens))
    return outputs[-1], outputs, attn, (grid_h, grid_w)


def _xcit_grid(x, patch_size):
    grid_h, grid_w = tf.shape(x)[1], tf.shape(x)[2]
    for _ in range(int(math.log2(patch_size))):  # each stride-2 convolution rounds up
        grid_h, grid_w = (grid_h + 1) // 2, (grid_w + 1) // 2
    return grid_h, grid_w


def classifier_parts(model):
    """`(backbone, linear layer or None, n_last_blocks, avgpool_patchtokens)` of `model`."""
    from keras_dino.evaluation.linear import LinearProbe

    if isinstance(model, LinearProbe):
        return model.backbone, model.classifier, model.n_last_blocks, model.avgpool_patchtokens
    return model, None, 1, False


def inference_function(model, *, image_size, input_dtype="uint8", l2_normalize=False,
                       include_patch_tokens=False, include_attention=False):
    """`(tf.function of images, {output name: {"dtype", "shape"}})` for the export.

    Args:
        model: a backbone (`VisionTransformer`, `XCiT`, `ResNet`) or a `LinearProbe`.
        image_size: the square input size, or `None` for any height and width.
        input_dtype: `"uint8"` or `"float32"` raw pixels 0..255.
        l2_normalize, include_patch_tokens, include_attention: as the SavedModel's.
    """
    from keras_dino.evaluation.linear import has_blocks

    backbone, linear, n_last, avgpool = classifier_parts(model)
    resnet = isinstance(backbone, ResNet)
    xcit = isinstance(backbone, XCiT)
    if include_patch_tokens and resnet:
        raise ValueError("include_patch_tokens=True needs a Vision Transformer; a ResNet has "
                         "no patch tokens.")
    if include_attention and resnet:
        raise ValueError("include_attention=True needs a Vision Transformer or an XCiT; a "
                         "ResNet has no attention.")
    width = backbone.embed_dim
    base = "embedding" if resnet else "cls_embedding"
    key = f"{base}_l2norm" if l2_normalize else base
    heads = None if resnet else backbone.num_heads

    def outputs_of(x):
        out = {}
        blocks, attn, grid = None, None, None
        if resnet:
            embedding = backbone(x, training=False)
        elif xcit:
            tokens, attn = backbone._tokens(x, training=False, return_attention=True)
            tokens = backbone.norm(tokens)
            blocks, grid = [tokens], _xcit_grid(x, backbone.patch_size)
            embedding = tokens[:, 0]
        else:
            tokens, blocks, attn, grid = _vit(backbone, x, attention=include_attention,
                                              n_last=n_last if linear is not None else 1)
            embedding = tokens[:, 0]
        embedding = raw = tf.cast(embedding, tf.float32)
        if l2_normalize:
            embedding = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-24)
        out[key] = embedding
        if include_patch_tokens:
            out["patch_tokens"] = tf.cast(tokens[:, 1:], tf.float32)
        if include_attention:
            maps = tf.cast(attn[:, :, 0, 1:], tf.float32)
            out["cls_attention"] = tf.reshape(maps, [-1, heads, grid[0], grid[1]])
        if linear is not None:
            if not has_blocks(backbone):  # ResNet, XCiT: the backbone's output
                features = raw
            else:
                features = tf.concat([t[:, 0] for t in blocks], axis=-1)
                if avgpool:
                    mean = tf.reduce_mean(blocks[-1][:, 1:], axis=1)
                    features = tf.reshape(tf.stack([features, mean], axis=-1),
                                          [tf.shape(features)[0], -1])
            out["logits"] = tf.cast(linear(features), tf.float32)
        return out

    spec = tf.TensorSpec([None, image_size, image_size, 3], input_dtype, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def serving_default(images):
        return outputs_of(graph.normalize(images))

    grid = None
    if image_size is not None and not resnet:
        grid = image_size // backbone.patch_size
    spatial = [grid, grid] if image_size is not None else [None, None]
    described = {key: {"dtype": "float32", "shape": [None, width]}}
    if include_patch_tokens:
        tokens = grid * grid if grid is not None else None
        described["patch_tokens"] = {"dtype": "float32", "shape": [None, tokens, width]}
    if include_attention:
        described["cls_attention"] = {"dtype": "float32", "shape": [None, heads, *spatial]}
    if linear is not None:
        described["logits"] = {"dtype": "float32", "shape": [None, linear.num_labels]}
    return serving_default, described
