"""Self-attention over a video: the official video_generation.py, in Keras.

The official flags keep their names and defaults (`--arch` vit_small, `--patch_size` 8,
`--threshold` 0.6, `--fps` 30, `--video_format` mp4, `--output_path` ./; `--resize` is
absl style: `--resize=512` for the shorter side, `--resize=720,1280` for height,width).
`--input_path` is a video file (its frames go to `<output_path>/frames/frame-0000.jpg`,
...; its frame rate replaces `--fps`) or a folder of frames (images, sorted by name).
Each frame's last-block CLS attention, averaged over the heads, is written with the
inferno colormap to `<output_path>/attention/attn-<frame>.jpg`, and these to
`<output_path>/video.mp4` (or `.avi`). With `--video_only`, `--input_path` is a folder
of `attn-*.jpg` and only the video is made (no model is loaded). Added: `--masked`
(draw each head only on the patches holding `--threshold` of its attention, which the
official tool computes but does not draw), `--verbose` and `--backend`. The last line
printed is one JSON line: `{"frames": N, "video": path or null, "fps": ..., ...}`.
Needs OpenCV: `pip install "keras-dino[video]"`.

    python examples/video_generation.py --pretrained_weights=dino_vits8 \\
        --input_path=clip.mp4 --output_path=out/video --resize=480
"""

import json
import os
import sys

from keras_dino.tools.common import (
    backbone_from_flags,
    define_backbone_flags,
    run_tool,
    say,
    select_backend,
)

select_backend(sys.argv)

from absl import app, flags  # noqa: E402


def define_flags(flag_values=flags.FLAGS):
    """Defines the tool's flags in `flag_values` (the official arguments first)."""
    fv = dict(flag_values=flag_values)
    define_backbone_flags(flag_values, patch_size=8, presets="dino_vits8")
    # --- the official video_generation.py arguments (names and defaults) ---
    flags.DEFINE_string("input_path", None, "A video file to extract frames from, a folder "
                        "of frames, or (with --video_only) a folder of attention images.",
                        **fv)
    flags.DEFINE_string("output_path", "./", "Where the frames/ and attention/ folders and "
                        "the video are written.", **fv)
    flags.DEFINE_float("threshold", 0.6, "Fraction of each head's attention mass its mask "
                       "keeps (drawn with --masked).", **fv)
    flags.DEFINE_list("resize", None, "Resize the frames first: one value (the shorter "
                      "side) or height,width. Use it against out-of-memory errors.", **fv)
    flags.DEFINE_boolean("video_only", False, "Only make the video, from the attn-*.jpg of "
                         "--input_path.", **fv)
    flags.DEFINE_float("fps", 30.0, "Frame rate of the output video (a video input's own "
                       "rate replaces it).", **fv)
    flags.DEFINE_enum("video_format", "mp4", ["mp4", "avi"], "Container of the video.", **fv)
    # --- additions ---
    flags.DEFINE_boolean("masked", False, "Draw each head only on its --threshold mask.",
                         **fv)
    flags.DEFINE_integer("verbose", 1, "Progress bar over the frames (0: none).", **fv)
    flags.mark_flag_as_required("input_path", **fv)


def _resize(values):
    if not values:
        return None
    try:
        sizes = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--resize={','.join(values)}: whole numbers expected.") from None
    if len(sizes) > 2 or min(sizes) <= 0:
        raise app.UsageError(f"--resize={','.join(values)}: one or two positive sizes.")
    return sizes[0] if len(sizes) == 1 else sizes


def run(F):
    """Writes the attention images and video of the flags; returns the summary."""
    from keras_dino.evaluation.video_attention import (
        VideoInputError,
        attention_video,
        frame_files,
        generate_video,
        read_frame,
        video_fps,
    )

    if not os.path.exists(F.input_path):
        raise app.UsageError(f"--input_path={F.input_path} does not exist.")
    resize = _resize(F.resize)
    try:
        if F.video_only:
            if not os.path.isdir(F.input_path):
                raise app.UsageError("--video_only needs --input_path to be a folder of "
                                     f"attention images (attn-*.jpg); {F.input_path} is not.")
            files = frame_files(F.input_path, pattern=r"attn-.*\.jpg")
            height, width = read_frame(files[0]).shape[:2]
            say(f"Generating video ({width}, {height}) to {F.output_path}")
            path = generate_video(F.input_path, F.output_path, F.fps, F.video_format)
            say(f"video {path}: {len(files)} attention images at {F.fps:g} fps.")
            summary = {"frames": len(files), "frames_folder": None,
                       "attention_folder": F.input_path, "video": path,
                       "fps": float(F.fps), "size": [width, height]}
        else:
            backbone = backbone_from_flags(F)
            if os.path.isfile(F.input_path):
                say(f"Video: {F.input_path} ({video_fps(F.input_path)} fps)")
                say(f"Extracting frames to {os.path.join(F.output_path, 'frames')}")
            say(f"Generating attention images to {os.path.join(F.output_path, 'attention')}")
            summary = attention_video(backbone, F.input_path, F.output_path, resize=resize,
                                      threshold=F.threshold, masked=F.masked, fps=F.fps,
                                      video_format=F.video_format, verbose=F.verbose)
            width, height = summary["size"]
            say(f"{summary['frames']} frames, heat maps of {width}x{height}; video "
                f"{summary['video']} at {summary['fps']:g} fps.")
    except (VideoInputError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    print(json.dumps(summary), flush=True)  # the tool's last line: what it did
    return summary


def main():
    """The command: parses the flags of `sys.argv` and runs the tool."""
    run_tool(define_flags, run, __doc__)
