"""Emergence you can watch on a CPU: a ViT whose attention learns to find objects.

Trains a small Vision Transformer with DINO (keras_dino's `DINO` model, its multi-crop
`multicrop_dataset` pipeline and its callbacks) on images whose object and mask are
known exactly, then measures how well the last block's CLS attention segments the
objects of held-apart images of the same kind: the paper's Jaccard index of each head's
attention thresholded to 60% of its mass, per head and for the best head, beside the
same network at its random initialisation (the weights the training started from).

The images (`make_composites`), built on the fly from the embedded CIFAR-10 subset
(`keras_dino.datasets.cifar10_mini`) and a seeded numpy generator:

* a background: a random crop, flipped at random, of one of `--num_textures` (1)
  procedural textures of 96x96 pixels (a few coloured sine gratings over smoothed
  noise). The pool is shared by every image, so the background tells images apart
  hardly at all: the object does. (With 8 textures of different colours the texture
  is the easiest thing to tell apart, and the attention learned to read the background
  around the object instead: the Jaccard fell below that of the random network.)
* an object: a CIFAR-10 image (32x32) resized (bicubic) to a box of side
  `--object_scale` (0.3-0.6) of the image's, aspect ratio 3/4 to 4/3, placed at a
  random position inside the image, and cut by the ellipse inscribed in the box: the
  pixels whose centres lie inside the ellipse are the object's, the others the
  background's. That set of pixels is the true mask, exactly.

Training uses the 3,000 images of `cifar10_mini("train")` as objects (one composite
each), the evaluation `--num_eval` objects of `cifar10_mini("test")` (an equal number
per class) on backgrounds drawn with another seed. The objects carry their CIFAR-10
class, so the bench also reports the 20-NN accuracy of the object's class (training
composites as reference, evaluation composites as queries, the official weighted vote).

The Jaccard index is the library's (`keras_dino.evaluation.attention_segmentation`): the
CLS attention of the last block (`cls_attention_maps`), the smallest set of patches
holding `--threshold` of each head's mass (`attention_threshold_mask`, as
`visualize_attention.py --threshold`), upsampled by the patch size, against the true
mask (`jaccard_index`); a head's figure is its mean over the images, the best head is
the head of the highest mean. Images are seen at `--image_size`, their own size, so
`keras_dino.evaluation.image_attention_jaccard(backbone, image, mask, image_size)` on the
saved files gives the same figures.

The run trains until `--budget_minutes` (whole run, evaluation included; about
`--eval_minutes` are kept for the end) or `--steps`, whichever comes first. The
schedules are constant after the warm-up (learning rate, weight decay, teacher
momentum), so a run cut by the budget is a complete recipe of that length. It writes in
`--output_dir`:

* `checkpoint.pth`: the full official training checkpoint (`DINO.save_official_checkpoint`)
  of the weights evaluated; `keras_dino.load_pretrained(path)` gives the teacher backbone;
* `eval/images/<name>.png` and `eval/masks/<name>.png`: the evaluation images as the
  model sees them and their true masks (0 background, 255 object, same size);
* `log.txt` (one JSON line per epoch, `train_jaccard` among them) and
  `training_curves.png` (loss, attention Jaccard, k-NN, ...);
* `attention_grid.png`: a few evaluation images, their true masks, and the best head's
  thresholded attention after each of a few epochs (epoch 0: the random network);
* `results.json`: the final JSON line, also printed.

    python bench/emergence.py                          # 20 minutes, about 2 CPU cores
    python bench/emergence.py --steps=300 --output_dir=/tmp/emergence
"""

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS


def define_flags():
    """The command's flags (defined by the command only: importing this module for its
    functions defines none)."""
    flags.DEFINE_string("output_dir", "out/emergence", "Where the checkpoint, the evaluation "
                        "images and masks, the pictures and the results are written.")
    flags.DEFINE_float("budget_minutes", 20.0, "Whole run, data and evaluation included.")
    flags.DEFINE_float("eval_minutes", 1.0, "Part of the budget kept for the final evaluation "
                       "and the files.")
    flags.DEFINE_integer("steps", 0, "Stop after this many training steps (0: the budget alone "
                         "stops the run).")
    flags.DEFINE_integer("steps_per_epoch", 100, "Steps between two evaluations of the "
                         "attention (one point of the curves).")
    flags.DEFINE_integer("seed", 0, "Seed of the images, the network and the crops.")
    # --- the data ---
    flags.DEFINE_integer("image_size", 64, "Side of the composite images (and of the global "
                         "crops).")
    flags.DEFINE_integer("num_train", 3000, "Training composites (objects: cifar10_mini train, "
                         "3,000 images, reused in turn beyond that).")
    flags.DEFINE_integer("num_eval", 500, "Held-apart evaluation composites (objects: "
                         "cifar10_mini test, the same number per class; at most 1,000).")
    flags.DEFINE_integer("num_textures", 1, "Background textures shared by all images (with "
                         "8, the attention learned to read the background, 0.04 Jaccard).")
    flags.DEFINE_float("texture_contrast", 1.0, "Scale of the textures' gratings and noise "
                       "around their base colour (0: flat backgrounds).")
    flags.DEFINE_list("object_scale", ["0.3", "0.6"], "Side of the object's box, as a fraction "
                      "of the image's side (low, high).")
    # --- the network and the recipe ---
    flags.DEFINE_integer("patch_size", 8, "Patch size of the ViT.")
    flags.DEFINE_integer("embed_dim", 96, "Width of the ViT.")
    flags.DEFINE_integer("depth", 4, "Transformer blocks.")
    flags.DEFINE_integer("num_heads", 3, "Attention heads.")
    flags.DEFINE_integer("out_dim", 1024, "DINO head output dimension.")
    flags.DEFINE_integer("head_hidden_dim", 512, "DINO head hidden width.")
    flags.DEFINE_integer("head_bottleneck_dim", 128, "DINO head bottleneck width.")
    flags.DEFINE_bool("norm_last_layer", True, "Weight-normalise the head's last layer (the "
                      "official default).")
    flags.DEFINE_integer("batch_size_per_gpu", 32, "Images per step.")
    flags.DEFINE_float("lr", 0.004, "Base learning rate at batch 256 (scaled by batch / 256), "
                       "held after the warm-up.")
    flags.DEFINE_integer("warmup_steps", 100, "Linear learning-rate warm-up.")
    flags.DEFINE_float("momentum_teacher", 0.99, "Teacher EMA momentum, held constant.")
    flags.DEFINE_float("teacher_temp", 0.03, "Teacher temperature (0.04, the official "
                       "default, left the teacher's output uniform from the start; 0.02 "
                       "collapsed it onto a few prototypes).")
    flags.DEFINE_float("weight_decay", 0.04, "Weight decay, held constant.")
    flags.DEFINE_integer("local_crops_number", 4, "Local crops per image.")
    flags.DEFINE_list("global_crops_scale", ["0.4", "1.0"], "Area scale of the global crops.")
    flags.DEFINE_list("local_crops_scale", ["0.1", "0.4"], "Area scale of the local crops.")
    flags.DEFINE_integer("local_size", 32, "Side of the local crops.")
    # --- the evaluation ---
    flags.DEFINE_float("threshold", 0.6, "Attention mass the masks keep (the paper's 0.6).")
    flags.DEFINE_integer("grid_images", 6, "Evaluation images shown in attention_grid.png.")
    flags.DEFINE_integer("grid_epochs", 7, "Epoch columns of attention_grid.png (the first, the "
                         "last and evenly spaced ones between).")
    flags.DEFINE_integer("knn_k", 20, "Neighbours of the k-NN evaluation.")


# ----------------------------------------------------------------------------- the data
def load_objects(split):
    """`(images uint8 (N, 32, 32, 3), labels (N,), class names)` of `cifar10_mini(split)`,
    in class then file order."""
    import numpy as np
    from PIL import Image

    from keras_dino.datasets import cifar10_mini

    root = cifar10_mini(split)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.jpg")):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32), classes


def make_textures(num, size, rng, contrast=1.0):
    """`num` procedural RGB textures `(num, size, size, 3)` uint8: per texture, three
    sine gratings of random frequency, orientation and colour over a smoothed noise, on a
    random base colour; `contrast` scales the gratings and the noise."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    textures = []
    for _ in range(num):
        base = rng.uniform(40, 215, size=3)
        image = np.broadcast_to(base, (size, size, 3)).copy()
        for _ in range(3):
            angle = rng.uniform(0, np.pi)
            period = rng.uniform(4.0, 24.0)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
            image += contrast * wave[..., None] * rng.uniform(-45, 45, size=3)
        noise = rng.normal(size=(size // 4, size // 4, 3))
        noise = noise.repeat(4, axis=0).repeat(4, axis=1)  # blocky, then smoothed
        for axis in (0, 1):  # a 5-pixel box blur, wrapping around
            noise = sum(np.roll(noise, shift, axis=axis) for shift in range(-2, 3)) / 5
        image += contrast * 25 * noise
        textures.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    return np.stack(textures)


def ellipse_mask(height, width):
    """bool `(height, width)`: the pixels whose centres lie inside the inscribed ellipse."""
    import numpy as np

    y = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    x = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    return y[:, None] ** 2 + x[None, :] ** 2 <= 1.0


def make_composites(objects, textures, num, rng, image_size=64, object_scale=(0.3, 0.6)):
    """`num` composite images, their true masks and how each was made.

    Image `i` pastes object `i % len(objects)` (resized bicubic to its box, cut by the
    box's inscribed ellipse, `ellipse_mask`) onto a random crop, flipped at random, of a
    random texture. Returns `(images uint8 (num, S, S, 3), masks bool (num, S, S),
    placements)`, a placement being `dict(object, texture, texture_top, texture_left, flip,
    top, left, height, width)`: the background is `texture[texture_top:, texture_left:]`
    (flipped left-right if `flip`), the object's box `[top:top + height, left:left + width]`.
    """
    import numpy as np
    from PIL import Image

    images = np.empty((num, image_size, image_size, 3), np.uint8)
    masks = np.zeros((num, image_size, image_size), bool)
    placements = []
    tex_size = textures.shape[1]
    for i in range(num):
        t = int(rng.integers(len(textures)))
        y0, x0 = rng.integers(0, tex_size - image_size + 1, size=2)
        background = textures[t, y0:y0 + image_size, x0:x0 + image_size]
        flip = bool(rng.random() < 0.5)
        if flip:
            background = background[:, ::-1]
        side = rng.uniform(*object_scale) * image_size
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        height = int(np.clip(round(side * np.sqrt(aspect)), 4, image_size))
        width = int(np.clip(round(side / np.sqrt(aspect)), 4, image_size))
        top = int(rng.integers(0, image_size - height + 1))
        left = int(rng.integers(0, image_size - width + 1))
        k = i % len(objects)
        resized = np.asarray(Image.fromarray(objects[k]).resize((width, height), Image.BICUBIC))
        inside = ellipse_mask(height, width)
        image = background.copy()
        window = image[top:top + height, left:left + width]
        window[inside] = resized[inside]
        images[i] = image
        masks[i, top:top + height, left:left + width] = inside
        placements.append(dict(object=k, texture=t, texture_top=int(y0),
                               texture_left=int(x0), flip=flip, top=top, left=left,
                               height=height, width=width))
    return images, masks, placements


def build_data(seed, image_size, num_train, num_eval, num_textures, object_scale,
               texture_contrast=1.0):
    """The training and evaluation sets: `{"train": (images, masks, labels), "eval": ...}`.

    Textures: seed `seed`; training placements: `seed + 1`; evaluation: `seed + 2`, with
    the first `num_eval / 10` test objects of each class.
    """
    import numpy as np

    textures = make_textures(num_textures, max(96, image_size + 32),
                             np.random.default_rng(seed), texture_contrast)
    train_objects, train_labels, classes = load_objects("train")
    test_objects, test_labels, _ = load_objects("test")
    per_class = -(-num_eval // len(classes))
    picked = np.concatenate([np.flatnonzero(test_labels == c)[:per_class]
                             for c in range(len(classes))])
    picked = np.sort(picked)[:num_eval]
    # Interleave the classes so that a prefix of the evaluation set has every class.
    picked = picked[np.argsort(np.argsort(picked) % per_class, kind="stable")]
    order = np.random.default_rng(seed + 1).permutation(len(train_objects))
    train_objects, train_labels = train_objects[order], train_labels[order]
    train = make_composites(train_objects, textures, num_train, np.random.default_rng(seed + 1),
                            image_size, object_scale)
    evaluation = make_composites(test_objects[picked], textures, len(picked),
                                 np.random.default_rng(seed + 2), image_size, object_scale)
    return {
        "train": (train[0], train[1], train_labels[np.arange(num_train) % len(train_labels)]),
        "eval": (evaluation[0], evaluation[1], test_labels[picked]),
        "classes": classes,
        "textures": textures,
    }


# ----------------------------------------------------------------------- the Jaccard index
def attention_jaccards(backbone, images, masks, threshold=0.6, batch_size=100):
    """`(num_images, heads)` Jaccard index (0..1) of each head's thresholded CLS attention.

    The library's steps (`keras_dino.evaluation.attention_segmentation`), the forward pass
    batched: `get_last_selfattention` on the normalised images, the CLS row over the
    patches, `attention_threshold_mask`, `upsample_nearest` by the patch size, and
    `jaccard_index` against the true mask (True: object). The images must be whole
    patches, as the model sees them; the same as `image_attention_jaccard(backbone,
    image, mask, image_size=side)` image by image. Also returns the thresholded masks,
    bool `(num_images, heads, H, W)`.
    """
    import numpy as np
    from keras import ops

    from keras_dino.evaluation.attention_maps import attention_threshold_mask, upsample_nearest
    from keras_dino.evaluation.attention_segmentation import jaccard_index
    from keras_dino.preprocessing import normalize_images

    patch = backbone.patch_size
    height, width = images.shape[1:3]
    if height % patch or width % patch:
        raise ValueError(f"images of {height}x{width} are not whole {patch}-pixel patches.")
    grid = (height // patch, width // patch)
    scores, predicted = [], []
    for start in range(0, len(images), batch_size):
        x = normalize_images(images[start:start + batch_size])
        attn = ops.convert_to_numpy(backbone.get_last_selfattention(x))
        maps = attn[:, :, 0, backbone.num_prefix_tokens:].reshape(*attn.shape[:2], *grid)
        for m, truth in zip(maps, masks[start:start + batch_size]):
            kept = upsample_nearest(attention_threshold_mask(m, threshold), patch)
            scores.append(jaccard_index(kept, truth.astype(np.uint8)))
            predicted.append(kept)
    return np.stack(scores), np.stack(predicted)


def summarize(per_image):
    """`(best-head mean, best head, per-head means)` of `(num_images, heads)` scores."""
    per_head = per_image.mean(axis=0)
    best = int(per_head.argmax())
    return float(per_head[best]), best, [round(float(v), 4) for v in per_head]


# ----------------------------------------------------------------------------- pictures
def save_attention_grid(path, images, masks, snapshots, threshold):
    """A grid: per row an evaluation image, its true mask, then the best head's
    thresholded attention at each snapshot `(epoch, step, jaccard, best_head, kept)`,
    `kept` bool `(rows, H, W)`."""
    import numpy as np

    from keras_dino.reporting import agg_figure

    rows, cols = len(images), 2 + len(snapshots)
    fig = agg_figure(figsize=(1.25 * cols, 1.3 * rows + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(images[r])
        axes[r, 1].imshow(masks[r], cmap="gray", vmin=0, vmax=1)
        for c, (epoch, step, jaccard, head, kept) in enumerate(snapshots):
            shown = images[r].astype(np.float64)
            shown[~kept[r]] *= 0.25  # outside the mask: dimmed
            axes[r, 2 + c].imshow(np.round(shown).astype(np.uint8))
            axes[r, 2 + c].contour(masks[r], levels=[0.5], colors="lime", linewidths=0.6)
            if r == 0:
                axes[r, 2 + c].set_title(f"epoch {epoch}\n{step} steps\nJ={jaccard:.2f} (h{head})",
                                         fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    axes[0, 1].set_title("true mask", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"best head's CLS attention, {threshold:.0%} of its mass (dimmed: outside; "
                 "green: true outline)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_eval_files(output_dir, images, masks):
    """`eval/images/<name>.png` and `eval/masks/<name>.png` (0/255); returns the names."""
    from PIL import Image

    names = [f"{i:04d}" for i in range(len(images))]
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(output_dir, "eval", sub), exist_ok=True)
    for name, image, mask in zip(names, images, masks):
        Image.fromarray(image).save(os.path.join(output_dir, "eval", "images", f"{name}.png"))
        Image.fromarray(mask.astype("uint8") * 255).save(
            os.path.join(output_dir, "eval", "masks", f"{name}.png"))
    return names


# ----------------------------------------------------------------------------- the run
def main(argv):
    del argv
    start = time.time()
    F = FLAGS
    deadline = start + 60 * (F.budget_minutes - F.eval_minutes)
    os.makedirs(F.output_dir, exist_ok=True)
    log_path = os.path.join(F.output_dir, "log.txt")
    if os.path.exists(log_path):
        os.remove(log_path)  # a new run: log.txt is appended to

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_dino
    from keras_dino.callbacks import OfficialLog
    from keras_dino.data import DataAugmentationDINO, PhotometricConfig, multicrop_dataset
    from keras_dino.evaluation import knn_accuracy
    from keras_dino.preprocessing import normalize_images
    from keras_dino.reporting import plot_training_curves

    if not 0 < F.num_eval <= 1000:
        raise app.UsageError(f"--num_eval must be in 1..1000 (the test objects); got {F.num_eval}.")
    object_scale = tuple(float(v) for v in F.object_scale)
    data = build_data(F.seed, F.image_size, F.num_train, F.num_eval, F.num_textures,
                      object_scale, F.texture_contrast)
    train_images, _, train_labels = data["train"]
    eval_images, eval_masks, eval_labels = data["eval"]
    names = write_eval_files(F.output_dir, eval_images, eval_masks)
    print(f"data: {len(train_images)} training and {len(eval_images)} evaluation images of "
          f"{F.image_size}x{F.image_size} ({time.time() - start:.1f} s)", flush=True)

    keras.utils.set_random_seed(F.seed)
    augmentation = DataAugmentationDINO(
        global_crops_scale=tuple(float(v) for v in F.global_crops_scale),
        local_crops_scale=tuple(float(v) for v in F.local_crops_scale),
        local_crops_number=F.local_crops_number, global_size=F.image_size,
        local_size=F.local_size,
        # The official blur radius (0.1-2 px) is meant for 224-pixel crops: scaled.
        photometric_config=PhotometricConfig(
            blur_radius=(0.1, min(2.0, 2.0 * F.image_size / 224))),
    )
    dataset = multicrop_dataset(tf.data.Dataset.from_tensor_slices(train_images),
                                F.batch_size_per_gpu, augmentation=augmentation, seed=F.seed,
                                repeat=True, batched_crops=True,
                                shuffle_buffer=len(train_images))
    # Constant schedules after the warm-up: any length cut by the budget is a whole recipe.
    nominal_epochs = 10_000
    scaled_lr = F.lr * F.batch_size_per_gpu / 256
    model = keras_dino.DINO(
        arch="vit_emergence", patch_size=F.patch_size,
        vit_kwargs=dict(img_size=F.image_size, embed_dim=F.embed_dim, depth=F.depth,
                        num_heads=F.num_heads),
        out_dim=F.out_dim, norm_last_layer=F.norm_last_layer,
        head_kwargs=dict(hidden_dim=F.head_hidden_dim, bottleneck_dim=F.head_bottleneck_dim),
        momentum_teacher=F.momentum_teacher, final_momentum_teacher=F.momentum_teacher,
        teacher_temp=F.teacher_temp, warmup_teacher_temp_epochs=0,
        weight_decay=F.weight_decay, weight_decay_end=F.weight_decay,
        lr=F.lr, min_lr=scaled_lr, warmup_epochs=1, epochs=nominal_epochs,
        steps_per_epoch=F.warmup_steps, batch_size=F.batch_size_per_gpu,
        drop_path_rate=0.0, freeze_last_layer=1, local_crops_number=F.local_crops_number,
        clip_grad=3.0,
    )
    model.compile()
    model.set_run_settings(seed=F.seed, output_dir=F.output_dir, data_path="bench/emergence.py")
    backbone = model.backbone
    # The network at random initialisation: the weights the teacher starts from.
    random_backbone = type(backbone).from_config({**backbone.get_config(), "name": "random_init"})
    random_backbone.build((None, F.image_size, F.image_size, 3))
    random_backbone.set_weights(backbone.get_weights())

    grid_rows = list(range(min(F.grid_images, len(eval_images))))
    snapshots = []  # (epoch, step, jaccard, best head, kept masks of the grid rows)
    total_steps = F.steps or None

    class Emergence(keras.callbacks.Callback):
        """Per epoch: the attention Jaccard of the teacher (`jaccard` in the logs), a JSON
        line, the budget; per step: a progress bar."""

        def __init__(self):
            super().__init__()
            # On a terminal; a log file gets the JSON line of each epoch.
            self.bar = keras.utils.Progbar(total_steps, unit_name="step", interval=0.5,
                                           stateful_metrics=["loss", "jaccard"]
                                           ) if sys.stdout.isatty() else None
            self.last = {}

        def measure(self, epoch):
            per_image, kept = attention_jaccards(model.backbone, eval_images, eval_masks,
                                                 F.threshold)
            jaccard, head, per_head = summarize(per_image)
            step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            snapshots.append((epoch, step, jaccard, head, kept[grid_rows, head]))
            return jaccard, head, per_head, step

        def on_train_begin(self, logs=None):
            jaccard, head, per_head, _ = self.measure(0)
            self.last = {"jaccard": jaccard}
            print(json.dumps({"epoch": 0, "steps": 0, "jaccard": round(jaccard, 4),
                              "best_head": head, "jaccard_per_head": per_head}), flush=True)

        def on_train_batch_end(self, batch, logs=None):
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if self.bar is not None:
                self.bar.update(step, [("loss", float((logs or {}).get("loss", np.nan))),
                                       ("jaccard", self.last.get("jaccard", np.nan))])
            if time.time() > deadline or (total_steps and step >= total_steps):
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            jaccard, head, per_head, step = self.measure(epoch + 1)
            self.last = {"jaccard": jaccard}
            if logs is not None:
                logs["jaccard"] = jaccard
            print(json.dumps({"epoch": epoch + 1, "steps": step,
                              "loss": round(float((logs or {}).get("loss", np.nan)), 4),
                              "jaccard": round(jaccard, 4), "best_head": head,
                              "jaccard_per_head": per_head,
                              "elapsed_s": round(time.time() - start, 1)}), flush=True)

    emergence = Emergence()
    epochs = -(-total_steps // F.steps_per_epoch) if total_steps else nominal_epochs
    train_start = time.time()
    model.fit(dataset, epochs=epochs, steps_per_epoch=F.steps_per_epoch, verbose=0,
              callbacks=[emergence, OfficialLog(F.output_dir, saveckp_freq=0)],
              data_settings=augmentation)
    train_s = time.time() - train_start
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    print(flush=True)
    if snapshots[-1][1] != steps:  # the budget cut an epoch: measure where it stopped
        emergence.measure(len(snapshots))
    # The weights evaluated below, in the official format.
    checkpoint = model.save_official_checkpoint(os.path.join(F.output_dir, "checkpoint.pth"))

    result = {"backend": keras.backend.backend(), "steps": steps,
              "batch_size_per_gpu": F.batch_size_per_gpu, "image_size": F.image_size,
              "patch_size": F.patch_size, "embed_dim": F.embed_dim, "depth": F.depth,
              "num_heads": F.num_heads, "local_crops_number": F.local_crops_number,
              "threshold": F.threshold, "num_eval_images": len(eval_images),
              "train_s": round(train_s, 1), "checkpoint": checkpoint}
    for key, network in (("trained", model.backbone), ("random", random_backbone)):
        per_image, _ = attention_jaccards(network, eval_images, eval_masks, F.threshold)
        jaccard, head, per_head = summarize(per_image)
        result[f"jaccard_{key}"] = round(jaccard, 4)
        result[f"best_head_{key}"] = head
        result[f"jaccard_per_head_{key}"] = per_head
    result["jaccard_gain"] = round(result["jaccard_trained"] - result["jaccard_random"], 4)
    reference = (normalize_images(train_images), train_labels)
    queries = (normalize_images(eval_images), eval_labels)
    for key, network in (("trained", model.backbone), ("random", random_backbone)):
        top1, _ = knn_accuracy(network, reference, queries, k=F.knn_k, T=0.07)
        result[f"knn{F.knn_k}_top1_{key}"] = round(top1, 2)

    plot_training_curves(log_path, os.path.join(F.output_dir, "training_curves.png"),
                         out_dim=F.out_dim)
    chosen = np.unique(np.linspace(0, len(snapshots) - 1, min(F.grid_epochs, len(snapshots)))
                       .round().astype(int))
    save_attention_grid(os.path.join(F.output_dir, "attention_grid.png"),
                        eval_images[grid_rows], eval_masks[grid_rows],
                        [snapshots[i] for i in chosen], F.threshold)
    result["eval_images"] = os.path.join(F.output_dir, "eval", "images", f"{names[0]}.png")
    result["wall_s"] = round(time.time() - start, 1)
    with open(os.path.join(F.output_dir, "results.json"), "w") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
