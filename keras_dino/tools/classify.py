"""ImageNet classification with a released DINO backbone and its released linear classifier.

The official repository publishes, beside each backbone, the linear classifier trained on
its frozen features (`*_linearweights.pth`). This tool puts the two together
(`keras_dino.load_pretrained_classifier`), reads an image as the official
evaluation does (PIL, resize to 256 then a 224 center crop) and prints the top-5 ImageNet
classes with their probabilities, then one JSON line.

    python examples/classify.py --pretrained_weights=dino_vits16 --image_path=cat.jpg
    python examples/classify.py --arch=resnet50 --image_path=cat.jpg \\
        --pretrained_weights=dino_resnet50_pretrain.pth \\
        --pretrained_linear=dino_resnet50_linearweights.pth
"""

import json
import os
import sys

from keras_dino.tools.common import (
    architecture_name,
    define_backbone_flags,
    define_deprecated_alias,
    define_eval_view_flags,
    official_preset,
    run_tool,
    say,
    select_backend,
    short_load_errors,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values`."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values)
    flags.DEFINE_string("image_path", None, "The image to classify.", **fv)
    flags.DEFINE_string("pretrained_linear", None, "Linear classifier file (default: the "
                        "released one of the preset).", **fv)
    flags.DEFINE_integer("top_classes", 5, "Classes to print.", **fv)
    define_eval_view_flags(flag_values)
    define_deprecated_alias(flag_values, "linear_weights", "pretrained_linear")
    define_deprecated_alias(flag_values, "topk", "top_classes")


def run(F):
    """Classifies --image_path; returns `[(class name, index, probability), ...]`."""
    import numpy as np
    from keras import ops

    from keras_dino.checkpoints.pretrained import PRESETS
    from keras_dino.evaluation.classifier import (
        imagenet_class_names,
        load_pretrained_classifier,
    )
    from keras_dino.preprocessing import EvalConfig

    if not F.image_path or not os.path.isfile(F.image_path):
        raise app.UsageError(f"--image_path={F.image_path} is not a file.")
    weights = F.pretrained_weights or official_preset(F.arch, F.patch_size)
    if not weights:
        raise app.UsageError(f"no --pretrained_weights and no released {F.arch}/"
                             f"{F.patch_size} weights.")
    if not F.pretrained_linear and weights not in PRESETS:
        raise app.UsageError("--pretrained_linear is needed with a local --pretrained_weights.")
    kwargs = {"num_heads": F.num_heads} if F.num_heads else {}
    with short_load_errors(weights):
        classifier = load_pretrained_classifier(
            weights, F.pretrained_linear or None, checkpoint_key=F.checkpoint_key, **kwargs)
    say(f"architecture from {os.path.basename(weights)}: "
        f"{architecture_name(classifier.backbone)}")
    x = EvalConfig(F.eval_size, F.eval_resize).load(F.image_path)[None]
    logits = ops.convert_to_numpy(classifier(x))[0].astype(np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    names = imagenet_class_names() if len(logits) == 1000 else None
    order = np.argsort(-probabilities)[: F.top_classes]
    top = [((names[i] if names else f"class {i}"), int(i), float(probabilities[i]))
           for i in order]
    say(f"top-{F.top_classes} for {F.image_path}:")
    for rank, (name, index, p) in enumerate(top, 1):
        say(f"  {rank}. {name} ({index}): {100 * p:.1f}%")
    print(json.dumps({"image": F.image_path, f"top{F.top_classes}": [
        {"class": n, "index": i, "probability": round(p, 6)} for n, i, p in top]}), flush=True)
    return top


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
