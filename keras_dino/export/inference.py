"""What every export computes: one function of raw images, from the model's own call graph.

`Inference(model, options)` is the graph of the SavedModel's signatures and of the ONNX
and LiteRT files alike:

* `forward(x)`: the model itself on normalised images: a ViT's or XCiT's
  `forward_intermediates` (the last block's tokens, the last attention, and the blocks
  a linear classifier reads, in one pass), a ResNet's output; a `LinearProbe`'s
  `logits_from` that pass. Under the TensorFlow backend the export calls it directly;
  the SavedModel of the JAX backend calls it through jax2tf.
* `outputs(x, features, names)`: the named outputs, in TensorFlow: `cls_embedding`
  (`embedding` for a ResNet; `_l2norm` when L2-normalised), `patch_tokens`,
  `cls_attention` `[batch, heads, grid_h, grid_w]`, `logits`. Patch tokens start at the
  model's `num_prefix_tokens` (the class token, and a ViT's register tokens), the grid
  is the model's `patch_grid`, so no model family is special-cased here.
* `function(names)`: `images` (raw RGB 0..255, NHWC, normalised in the graph with
  `options.eval_config`'s mean and std) -> outputs, a `tf.function`.

With `image_size=None` the height and width are dynamic: the model then interpolates its
position embeddings in the graph (`keras_dino.layers.position_embedding`).
"""

import keras

_FORMAT_NAMES = {"saved_model": "SavedModel", "onnx": "ONNX", "litert": "LiteRT"}


def check_backend(fmt: str) -> None:
    """Raises a `RuntimeError` naming the way out unless the backend can export `fmt`."""
    backend = keras.backend.backend()
    allowed = ("tensorflow", "jax") if fmt == "saved_model" else ("tensorflow",)
    if backend in allowed:
        return
    reason = ("Keras can only write SavedModels from torch through torch_xla"
              if fmt == "saved_model" else
              "the converters (tf2onnx, the TFLite converter) read TensorFlow graphs")
    raise RuntimeError(
        f"{_FORMAT_NAMES[fmt]} export needs the {' or '.join(allowed)} Keras backend (this is "
        f"'{backend}'): {reason}. The weights are the same on every backend: save them "
        "(`model.save_weights('backbone.weights.h5')`, or pass the checkpoint file) and "
        "export from a process started with KERAS_BACKEND=tensorflow."
    )


def is_probe(model) -> bool:
    """Whether `model` is a backbone with a linear classifier (a `LinearProbe`)."""
    return hasattr(model, "logits_from") and hasattr(model, "backbone")


def resolve(model, load_kwargs):
    """`(model to export, weights source, backbone, classifier description or None)`.

    A preset name or checkpoint path is loaded; a `DINO` gives its teacher backbone; a
    `LinearProbe` is exported whole (its logits too).
    """
    from keras_dino.checkpoints.pretrained import resolve_backbone

    if is_probe(model):
        if load_kwargs:
            raise ValueError("load_kwargs only applies when `model` is a preset name or a "
                             "file path.")
        _, source = resolve_backbone(model.backbone)
        classifier = {"num_labels": int(model.num_labels),
                      "n_last_blocks": int(model.n_last_blocks),
                      "avgpool_patchtokens": bool(model.avgpool_patchtokens)}
        source = source.replace("in-memory", "in-memory LinearProbe of")
        return model, source, model.backbone, classifier
    backbone, source = resolve_backbone(model, **(load_kwargs or {}))
    return backbone, source, backbone, None


class Inference:
    """The export's graph of `model` (a backbone or a `LinearProbe`) under `options`.

    Example:

    ```python
    inference = Inference(backbone, ExportOptions(image_size=None, include_attention=True))
    function = inference.function()      # tf.function: uint8 images -> outputs
    inference.output_specs()             # {"cls_embedding": {"dtype", "shape"}, ...}
    ```
    """

    def __init__(self, model, options):
        self.model, self.options = model, options
        self.probe = model if is_probe(model) else None
        backbone = self.backbone = model.backbone if self.probe is not None else model
        # Token backbones (ViT, XCiT) give tokens and attention; others (ResNet) a vector.
        self.has_tokens = hasattr(backbone, "forward_intermediates")
        self.has_attention = hasattr(backbone, "get_last_selfattention")
        kind = type(backbone).__name__
        if options.include_patch_tokens and not self.has_tokens:
            raise ValueError(f"include_patch_tokens=True needs a Vision Transformer or an "
                             f"XCiT; a {kind} has no patch tokens.")
        if options.include_attention and not self.has_attention:
            raise ValueError(f"include_attention=True needs a Vision Transformer or an XCiT; "
                             f"a {kind} has no attention.")
        patch = getattr(backbone, "patch_size", None)
        size = options.image_size
        if size is not None and patch and size % patch:
            raise ValueError(f"image_size {size} is not a multiple of the patch size {patch}.")
        self.grid = (tuple(int(g) for g in backbone.patch_grid(size, size))
                     if size is not None and self.has_tokens else None)
        blocks = self.probe.blocks_needed if self.probe is not None else 0
        self.n_blocks = max(1, blocks)
        base = "cls_embedding" if self.has_tokens else "embedding"
        self.embedding_key = f"{base}_l2norm" if options.l2_normalize else base
        if not backbone.built:
            backbone.build((None, size, size, 3))

    # ------------------------------------------------------------------ the model's pass
    def forward(self, x, attention: bool = False) -> dict:
        """The model on normalised images: `{"tokens" | "embedding", "attention", "logits"}`."""
        result = {}
        if self.has_tokens:
            features = self.backbone.forward_intermediates(x, self.n_blocks, attention)
            result["tokens"] = features["blocks"][-1]
            if attention:
                result["attention"] = features["attention"]
            if self.probe is not None:
                result["logits"] = self.probe.logits_from(result["tokens"][:, 0],
                                                          features["blocks"])
        else:
            result["embedding"] = self.backbone(x, training=False)
            if self.probe is not None:
                result["logits"] = self.probe.logits_from(result["embedding"], None)
        return result

    # ------------------------------------------------------------------ the outputs
    def output_names(self, attention_only: bool = False) -> list:
        """The outputs of `serving_default` (or of the SavedModel's `attention`)."""
        if attention_only:
            return ["cls_attention"]
        names = [self.embedding_key]
        if self.options.include_patch_tokens:
            names.append("patch_tokens")
        if self.options.include_attention:
            names.append("cls_attention")
        if self.probe is not None:
            names.append("logits")
        return names

    def outputs(self, x, features, names) -> dict:
        """The outputs `names` of images `x` (normalised) from `forward(x)`'s `features`."""
        import tensorflow as tf

        out = {}
        tokens = features.get("tokens")
        # The patches follow the class token (and a ViT's registers): the model says where.
        start = self.backbone.num_prefix_tokens if self.has_tokens else None
        for name in names:
            if name == self.embedding_key:
                embedding = tf.cast(tokens[:, 0] if self.has_tokens else features["embedding"],
                                    tf.float32)
                if self.options.l2_normalize:
                    embedding = tf.math.l2_normalize(embedding, axis=-1, epsilon=1e-24)
                out[name] = embedding
            elif name == "patch_tokens":
                out[name] = tf.cast(tokens[:, start:], tf.float32)
            elif name == "cls_attention":
                grid = self.grid or self.backbone.patch_grid(tf.shape(x)[1], tf.shape(x)[2])
                maps = tf.cast(features["attention"][:, :, 0, start:], tf.float32)
                out[name] = tf.reshape(maps, [-1, self.backbone.num_heads, grid[0], grid[1]])
            elif name == "logits":
                out[name] = tf.cast(features["logits"], tf.float32)
        return out

    def output_specs(self, names=None, image_size=None) -> dict:
        """`{name: {"dtype", "shape"}}` of the outputs `names` (default `output_names()`)
        for the export's image size (or `image_size`)."""
        names = names or self.output_names()
        width, grid = self.backbone.embed_dim, self.grid
        if image_size is not None and self.has_tokens:
            grid = tuple(int(g) for g in self.backbone.patch_grid(image_size, image_size))
        shapes = {self.embedding_key: [None, width]}
        if self.has_tokens:
            shapes["patch_tokens"] = [None, grid[0] * grid[1] if grid else None, width]
        if self.has_attention:
            shapes["cls_attention"] = [None, self.backbone.num_heads, *(grid or [None, None])]
        if self.probe is not None:
            shapes["logits"] = [None, self.probe.num_labels]
        return {name: {"dtype": "float32", "shape": shapes[name]} for name in names}

    def images_spec(self, name: str = "images"):
        """The `tf.TensorSpec` of the `images` input."""
        import tensorflow as tf

        size = self.options.image_size
        return tf.TensorSpec([None, size, size, 3], self.options.input_dtype, name=name)

    def function(self, names=None, forward=None, check=None):
        """`tf.function` of `images` -> `{name: tensor}` (the `serving_default` of a file).

        `forward`: the model's pass (default `self.forward`; the SavedModel gives its
        endpoints); `check`: a function of the images run first (input checks).
        """
        import tensorflow as tf

        from keras_dino.export import serving_inputs

        names = names or self.output_names()
        attention = "cls_attention" in names
        forward = forward or (lambda x: self.forward(x, attention))
        eval_config = self.options.eval_config

        @tf.function(input_signature=[self.images_spec()], autograph=False)
        def serving_default(images):
            if check is not None:
                images = check(images)
            x = serving_inputs.normalize(images, eval_config)
            return self.outputs(x, forward(x), names)

        return serving_default
