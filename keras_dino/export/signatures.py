"""The serving signatures of an exported backbone, as TensorFlow functions.

* `serving_default`: `images` `[batch, S, S, 3]` (uint8 or float32 pixel values 0..255,
  normalised in the graph) -> the embedding: `cls_embedding` `[batch, E]` for a Vision
  Transformer (with `patch_tokens` `[batch, G*G, E]` on request), `embedding` `[batch, C]`
  (the pooled features) for a ResNet; `..._l2norm` when L2-normalised.
* `serve_bytes`: `image_bytes` `[batch]` encoded JPEG/PNG images of any size, decoded,
  resized and center-cropped in the graph as the official evaluation does; same outputs.
* `attention` (Vision Transformers, XCiT): `images` -> `cls_attention`
  `[batch, heads, G, G]`, the last block's attention of the CLS token to the patches
  (XCiT: of its last class-attention block).
"""

import keras
import tensorflow as tf

from keras_dino.export import graph
from keras_dino.models.xcit import XCiT


def _is_vit(backbone) -> bool:
    return hasattr(backbone, "get_last_selfattention")


def add_endpoints(archive, backbone, image_size) -> dict:
    """The backbone's inference functions on normalised images (jax2tf under JAX)."""
    spec = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]
    # Inference only: no gradient functions (jax2tf's would be saved as unusable stubs).
    kwargs = {"jax2tf_kwargs": {"with_gradient": False}} if keras.backend.backend() == "jax" else {}
    if _is_vit(backbone):
        functions = {
            "forward_features": lambda x: backbone.forward_features(x, training=False),
            "get_last_selfattention": backbone.get_last_selfattention,
        }
    else:
        functions = {"embed": lambda x: backbone(x, training=False)}
    return {
        name: archive.add_endpoint(name, fn, spec, **kwargs) for name, fn in functions.items()
    }


def _unless_empty(fn, x, shape):
    # An empty batch gives empty outputs (the backbones cannot take batch 0).
    return tf.cond(
        tf.shape(x)[0] > 0,
        lambda: tf.cast(fn(x), tf.float32),
        lambda: tf.zeros([0, *shape], tf.float32),
    )


def serving_functions(backbone, endpoints, *, image_size, input_dtype, resize_size,
                      l2_normalize, include_patch_tokens):
    """`({signature name: tf.function}, {signature name: description for the metadata})`."""
    vit = _is_vit(backbone)
    if include_patch_tokens and not vit:
        raise ValueError(
            f"include_patch_tokens=True needs a Vision Transformer; a {type(backbone).__name__} "
            "has no patch tokens."
        )
    width = backbone.embed_dim
    base = "cls_embedding" if vit else "embedding"
    embedding_key = f"{base}_l2norm" if l2_normalize else base
    grid = image_size // backbone.patch_size if vit else None

    def outputs_of(x):
        if vit:
            tokens = _unless_empty(endpoints["forward_features"], x, [grid * grid + 1, width])
            embedding = tokens[:, 0]
        else:
            embedding = _unless_empty(endpoints["embed"], x, [width])
        if l2_normalize:
            embedding = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-24)
        outputs = {embedding_key: embedding}
        if include_patch_tokens:
            outputs["patch_tokens"] = tokens[:, 1:]
        return outputs

    images_spec = tf.TensorSpec([None, image_size, image_size, 3], input_dtype, name="images")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    @tf.function(input_signature=[images_spec], autograph=False)
    def serving_default(images):
        images = graph.check_images(images, "serving_default", image_size, input_dtype)
        return outputs_of(graph.normalize(images))

    @tf.function(input_signature=[bytes_spec], autograph=False)
    def serve_bytes(image_bytes):
        crops = graph.decode_batch(image_bytes, image_size, resize_size)
        return outputs_of(graph.normalize(crops))

    outputs = {embedding_key: {"dtype": "float32", "shape": [None, width]}}
    if include_patch_tokens:
        outputs["patch_tokens"] = {"dtype": "float32", "shape": [None, grid * grid, width]}
    images_input = {"images": {"dtype": input_dtype, "shape": [None, image_size, image_size, 3]}}
    what = ("CLS embedding" if vit else "pooled features") + (
        " (L2-normalised)" if l2_normalize else "") + (
        " and patch tokens" if include_patch_tokens else "")
    functions = {"serving_default": serving_default, "serve_bytes": serve_bytes}
    described = {
        "serving_default": {
            "inputs": images_input,
            "outputs": outputs,
            "description": f"{what} of a batch of images",
        },
        "serve_bytes": {
            "inputs": {"image_bytes": {"dtype": "string", "shape": [None]}},
            "outputs": outputs,
            "description": "as serving_default, from encoded JPEG/PNG images of any size",
        },
    }
    if vit:
        heads = backbone.num_heads
        tokens = grid * grid + 1
        # A ViT's attention is tokens x tokens; XCiT's class attention has the CLS row only.
        rows = 1 if isinstance(backbone, XCiT) else tokens

        @tf.function(input_signature=[images_spec], autograph=False)
        def attention(images):
            images = graph.check_images(images, "attention", image_size, input_dtype)
            attn = _unless_empty(endpoints["get_last_selfattention"], graph.normalize(images),
                                 [heads, rows, tokens])
            return {"cls_attention": tf.reshape(attn[:, :, 0, 1:], [-1, heads, grid, grid])}

        functions["attention"] = attention
        described["attention"] = {
            "inputs": images_input,
            "outputs": {"cls_attention": {"dtype": "float32", "shape": [None, heads, grid, grid]}},
            "description": (
                "last block's attention of the CLS token to the patches, per head, "
                "at patch resolution (rows of patches first)"
            ),
        }
    return functions, described
