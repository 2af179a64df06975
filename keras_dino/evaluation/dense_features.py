"""What a frozen backbone sees in a batch: global vectors, patch grids, any block's output.

Every function takes a backbone (`VisionTransformer`, `XCiT` or `ResNet`) and a batch of
normalised NHWC images, and returns a backend tensor (use `keras.ops.convert_to_numpy`):

* `cls_features`: the backbone's output `(B, E)` (a ViT's or XCiT's CLS token after the
  final norm; a ResNet's pooled features).
* `patch_features`: the patch tokens as a grid `(B, h, w, E)`; token `1 + r * w + c` of
  a ViT is cell `(r, c)`. For a ResNet, the cells of its last feature map.
* `mean_patch_features`: the mean of the patch grid `(B, E)`.
* `last_blocks_cls`: the official linear-evaluation features (`linear_features`): the
  CLS tokens of the last `n` blocks concatenated, `(B, n * E)`.
* `block_output`: the patch grid of any block (a ResNet's stages).

`multiscale=True` gives the official multi-scale descriptor of the vector features
(`utils.multi_scale`: the mean over scales 1, 1/√2 and 1/2 of torch-bilinear resized
inputs, divided by its norm), as `keras_dino.evaluation.retrieval.global_descriptor`.

For a `tf.data` pipeline of `(images, labels)` batches, give `feature_function(kind)` to
`extract_features`; for image folders too large for memory, `feature_shards`.
"""

from collections.abc import Callable

from keras import ops

from keras_dino.evaluation.features import check_backbone
from keras_dino.evaluation.linear import linear_features
from keras_dino.evaluation.retrieval import SCALES, _patch_multiple, resize_like_torch
from keras_dino.models.image_inputs import check_images

FEATURE_KINDS = ("cls", "patch", "mean_patch", "last_blocks", "block")
GRID_KINDS = ("patch", "block")  # kinds whose features are (B, h, w, C) grids


def _kind(backbone, where="keras_dino.evaluation.dense_features") -> str:
    check_backbone(backbone, where)
    if hasattr(backbone, "get_intermediate_layers"):
        return "vit"
    if hasattr(backbone, "cls_attn_blocks"):
        return "xcit"
    if hasattr(backbone, "stages"):
        return "resnet"
    raise TypeError(f"{type(backbone).__name__} is not a VisionTransformer, XCiT or ResNet.")


def _images(images):
    check_images(images)  # raw pixels (integers, NumPy 0..255) name the fix
    images = ops.convert_to_tensor(images, "float32")
    if len(images.shape) != 4:
        raise ValueError(f"images must be a batch (B, H, W, 3); got shape {tuple(images.shape)}.")
    return images


def _multiscale(fn, backbone, images):
    """The official `multi_scale`, per image: mean over `SCALES`, divided by its norm.

    The official code divides the batch's mean by the norm of the whole batch; it runs
    with batches of one image, for which this is the same.
    """
    total = 0.0
    for scale in SCALES:
        scaled = images if scale == 1.0 else resize_like_torch(images, scale)
        total = total + ops.cast(fn(backbone, _patch_multiple(scaled, backbone)), "float32")
    total = total / float(len(SCALES))
    return total / ops.sqrt(ops.sum(ops.square(total), axis=-1, keepdims=True))


def _vector(fn, backbone, images, multiscale, where):
    check_backbone(backbone, f"keras_dino.evaluation.{where}")
    images = _images(images)
    if multiscale:
        return _multiscale(fn, backbone, images)
    return fn(backbone, images)


def _cls(backbone, images):
    return backbone(images, training=False)


def cls_features(backbone, images, multiscale: bool = False):
    """The backbone's output `(B, E)`: the final CLS token (ViT, XCiT), pooled map (ResNet).

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> tuple(cls_features(vit_tiny(16, depth=1), np.zeros((2, 32, 48, 3), "float32")).shape)
    (2, 192)
    """
    return _vector(_cls, backbone, images, multiscale, "cls_features")


def _grid_shape(backbone, images) -> tuple:
    """`(h, w)` of the patch grid of images `(B, H, W, 3)` for a ViT or XCiT."""
    return backbone.patch_grid(images.shape[1], images.shape[2])


def _grid(tokens, shape):
    """Row-major patch tokens `(B, h * w, C)` as a grid `(B, h, w, C)`."""
    return ops.reshape(tokens, (ops.shape(tokens)[0], shape[0], shape[1], tokens.shape[-1]))


def _patches(backbone, images, where="patch_features"):
    if _kind(backbone, f"keras_dino.evaluation.{where}") == "resnet":
        return backbone.forward_features(images, training=False)[f"layer{len(backbone.stages)}"]
    tokens = backbone.forward_features(images, training=False)
    return _grid(tokens[:, backbone.num_prefix_tokens:], _grid_shape(backbone, images))


def patch_features(backbone, images):
    """The output patch tokens as a grid `(B, h, w, E)`, after the final norm.

    ViT: `forward_features(x)[:, num_prefix_tokens:]` (class token and registers left
    out; what `get_intermediate_layers(x)[-1]` gives)
    reshaped row-major, `h = H // patch_size`. XCiT: the patch tokens leaving its last
    class-attention block, after the norm. ResNet: the last stage's map (stride 32).

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> tuple(patch_features(vit_tiny(16, depth=1), np.zeros((2, 32, 48, 3), "float32")).shape)
    (2, 2, 3, 192)
    """
    return _patches(backbone, _images(images))


def _mean_patch(backbone, images):
    return ops.mean(_patches(backbone, images), axis=(1, 2))


def mean_patch_features(backbone, images, multiscale: bool = False):
    """The mean of the patch grid `(B, E)` (for a ResNet: its output, the pooled map).

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> x = mean_patch_features(vit_tiny(16, depth=1), np.zeros((1, 32, 32, 3), "float32"))
    >>> tuple(x.shape)
    (1, 192)
    """
    return _vector(_mean_patch, backbone, images, multiscale, "mean_patch_features")


def last_blocks_cls(backbone, images, n: int = 4, avgpool_patchtokens: bool = False,
                    multiscale: bool = False):
    """What the official linear classifier sees: `linear_features(backbone, images, n)`.

    A ViT's CLS tokens of its last `n` blocks, each through the final norm, concatenated
    `(B, n * E)` (with `avgpool_patchtokens`, the ViT-B recipe); any other backbone's
    output, as the official `eval_linear.py`.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> tuple(last_blocks_cls(vit_tiny(16, depth=4), np.zeros((2, 32, 32, 3), "float32")).shape)
    (2, 768)
    """
    def fn(model, x):
        return linear_features(model, x, n, avgpool_patchtokens)

    return _vector(fn, backbone, images, multiscale, "last_blocks_cls")


def _block_index(block: int, count: int, what: str) -> int:
    if not -count <= block < count:
        raise ValueError(f"block must be in [{-count}, {count - 1}] ({count} {what}); "
                         f"got {block}.")
    return block % count


def block_output(backbone, images, block: int = -1, normalize: bool = True,
                 tokens: bool = False):
    """The output of block `block` (0-based; negative counts from the end) as a grid.

    ViT: the tokens leaving `blocks[block]`, through the final norm unless
    `normalize=False` (as `get_intermediate_layers`, which always normalises), patch
    tokens as a grid `(B, h, w, E)`, or with `tokens=True` all tokens `(B, 1 + N, E)`,
    CLS first. XCiT: its XCA blocks (which carry no CLS token: it joins in the
    class-attention blocks), `(B, h, w, E)`, or `(B, N, E)` with `tokens=True`. ResNet:
    stage `block` (`layer1` is 0), its map `(B, h, w, C)`; `normalize` does not apply.

    Example:

    >>> import numpy as np
    >>> from keras_dino.models import vit_tiny
    >>> model, x = vit_tiny(16, depth=3), np.zeros((2, 32, 48, 3), "float32")
    >>> tuple(block_output(model, x, block=0).shape)
    (2, 2, 3, 192)
    >>> tuple(block_output(model, x, block=1, tokens=True).shape)
    (2, 7, 192)
    """
    images = _images(images)
    kind = _kind(backbone, "keras_dino.evaluation.block_output")
    if kind == "resnet":
        i = _block_index(block, len(backbone.stages), "stages")
        grid = backbone.forward_features(images, training=False)[f"layer{i + 1}"]
        return ops.reshape(grid, (ops.shape(grid)[0], -1, grid.shape[-1])) if tokens else grid
    i = _block_index(block, len(backbone.blocks), "blocks")
    x = backbone.forward_intermediates(images, blocks=[i], norm=normalize)["blocks"][0]
    if tokens:
        return x
    grid = _grid_shape(backbone, images)
    # The patches are the last grid_h * grid_w tokens (after a ViT's class and register
    # tokens; an XCiT's XCA blocks carry none).
    return _grid(x[:, x.shape[1] - grid[0] * grid[1]:], grid)


def feature_function(kind: str = "cls", n_last_blocks: int = 4, block: int = -1,
                     multiscale: bool = False) -> Callable:
    """`fn(backbone, images) -> features` of one of `FEATURE_KINDS`.

    For `extract_features(backbone, dataset, feature_fn=...)` and the feature shards.
    `multiscale` applies to the vector kinds (`cls`, `mean_patch`, `last_blocks`): the
    grids of three scales have three sizes.

    Example:

    >>> import numpy as np
    >>> from keras_dino.evaluation import extract_features
    >>> from keras_dino.models import vit_tiny
    >>> data = (np.zeros((3, 32, 32, 3), "float32"), np.arange(3))
    >>> grids, _ = extract_features(vit_tiny(16, depth=1), data, feature_fn=
    ...                             feature_function("patch"), verbose=0)
    >>> grids.shape
    (3, 2, 2, 192)
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown features '{kind}'; known: {', '.join(FEATURE_KINDS)}.")
    if multiscale and kind in GRID_KINDS:
        raise ValueError(f"multiscale applies to vector features, not to '{kind}' grids "
                         "(each scale has its own grid size).")
    if kind == "cls":
        return lambda backbone, images: cls_features(backbone, images, multiscale)
    if kind == "patch":
        return patch_features
    if kind == "mean_patch":
        return lambda backbone, images: mean_patch_features(backbone, images, multiscale)
    if kind == "last_blocks":
        return lambda backbone, images: last_blocks_cls(backbone, images, n_last_blocks,
                                                        multiscale=multiscale)
    return lambda backbone, images: block_output(backbone, images, block)
