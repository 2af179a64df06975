"""Attention over a video: the official video_generation.py's frames, maps, files, video.

Videos are written with OpenCV from the four real photos of `../shared/images`; the maps
come from a tiny random ViT (what is checked is the pipeline, not what a trained model
attends to): a video round-trips through both official codecs, a video input and the
folder of its extracted frames give the same heat maps, a heat map is the head-mean of
`cls_attention_maps` upsampled to pixels, the threshold masks hold their mass, the
files have the official names, and bad inputs fail with errors that say what is wrong.
"""

import json
import os
import sys

import numpy as np
import pytest
from conftest import IMAGES
from PIL import Image

cv2 = pytest.importorskip("cv2")

from keras_dino.evaluation import (  # noqa: E402
    attention_input,
    attention_threshold_mask,
    cls_attention_maps,
    upsample_nearest,
)
from keras_dino.evaluation.video_attention import (  # noqa: E402
    VideoInputError,
    attention_video,
    extract_frames,
    frame_attention,
    frame_files,
    frame_input,
    generate_video,
    heatmap_image,
    iter_video_frames,
    read_frame,
    read_frames,
    video_fps,
    write_video,
)
from keras_dino.testing.tolerance import assert_within, resize_tolerance  # noqa: E402

PHOTOS = ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg")
SIZE = (96, 64)  # width, height of the test video: whole 8- and 16-pixel patches


@pytest.fixture(scope="module")
def photos():
    """The four real photos, uint8 RGB, at full size."""
    out = []
    for name in PHOTOS:
        with Image.open(IMAGES / name) as image:
            out.append(np.asarray(image.convert("RGB")))
    return out


@pytest.fixture(scope="module")
def frames(photos):
    """The photos resized to one frame size: the frames of a test video."""
    return [np.asarray(Image.fromarray(p).resize(SIZE, Image.BILINEAR)) for p in photos]


@pytest.fixture(scope="module")
def vit():
    from keras_dino.models import VisionTransformer

    return VisionTransformer(patch_size=8, embed_dim=48, depth=2, num_heads=3)


@pytest.fixture(scope="module")
def video(frames, tmp_path_factory):
    return write_video(frames, str(tmp_path_factory.mktemp("video") / "clip.mp4"), fps=12)


@pytest.mark.parametrize("video_format", ["mp4", "avi"])
def test_a_video_round_trips_through_the_official_codecs(frames, tmp_path, video_format):
    path = write_video(frames, str(tmp_path / f"clip.{video_format}"), fps=7.0)
    decoded = list(iter_video_frames(path))
    assert len(decoded) == len(frames)
    assert video_fps(path) == pytest.approx(7.0)
    for i, frame in enumerate(decoded):
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.dtype == np.uint8
        errors = [np.abs(frame.astype(int) - f.astype(int)).mean() for f in frames]
        assert errors[i] < 12, errors  # lossy MPEG-4, but close...
        assert np.argmin(errors) == i  # ...and in order: each frame is nearest its photo


def test_frames_of_other_sizes_are_drawn_at_the_first_size(frames, photos, tmp_path):
    path = write_video([frames[0], photos[1]], str(tmp_path / "mixed.avi"), fps=5)
    assert [f.shape for f in iter_video_frames(path)] == [(SIZE[1], SIZE[0], 3)] * 2


def test_extraction_writes_the_official_frame_files(video, frames, tmp_path):
    paths, fps = extract_frames(video, str(tmp_path / "frames"))
    assert [os.path.basename(p) for p in paths] == [f"frame-{i:04}.jpg" for i in range(4)]
    assert fps == pytest.approx(12.0)
    for path, frame in zip(paths, frames):
        assert np.abs(read_frame(path).astype(int) - frame.astype(int)).mean() < 12
    # read_frames: the video's frames in memory, with the same names
    names = [name for name, _ in read_frames(video)]
    assert names == [os.path.basename(p) for p in paths]


def test_folder_frames_are_sorted_images_only(frames, tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(frames[i % 4]).save(tmp_path / f"shot{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "sub.jpg").mkdir()
    names = [os.path.basename(p) for p in frame_files(str(tmp_path))]
    assert names == ["shot1.png", "shot2.png", "shot10.png"]  # natural order
    assert [n for n, _ in read_frames(str(tmp_path))] == names


def test_heatmap_is_the_head_mean_of_the_cls_attention(vit, photos):
    image = photos[1][:101, 100:231]  # a corner of chelsea, 131x101: cut to 128x96
    att = frame_attention(vit, image, threshold=0.6)
    x, shown = attention_input(image, image.shape[:2], 8)
    maps = cls_attention_maps(vit, x)
    np.testing.assert_array_equal(att.maps, maps)
    assert att.heatmap.shape == (96, 128) and att.heatmap.dtype == np.float32
    np.testing.assert_allclose(att.heatmap, upsample_nearest(maps.mean(0), 8), rtol=1e-6)
    # Nearest upsampling: constant on each 8x8 patch.
    np.testing.assert_array_equal(att.heatmap[8:16, 16:24], att.heatmap[8, 16])
    np.testing.assert_array_equal(
        att.masks, upsample_nearest(attention_threshold_mask(maps, 0.6), 8))


def test_threshold_masks_hold_the_mass_and_no_smaller_set_does(vit, photos):
    att = frame_attention(vit, photos[0], resize=96, threshold=0.6)
    maps = att.maps.reshape(att.maps.shape[0], -1)
    masks = att.masks[:, ::8, ::8].reshape(maps.shape)  # back to one value per patch
    for head, mask in zip(maps, masks):
        share = head / head.sum()
        assert share[mask].sum() >= 0.6 - 1e-6
        assert share[mask].sum() - share[mask].min() < 0.6  # minimal: the smallest kept matters
        assert share[mask].min() >= share[~mask].max()  # the largest patches are kept
    masked = att.masked_heatmap()
    assert np.all(masked[~att.masks.any(0)] == 0)
    assert np.all(masked <= att.heatmap + 1e-9)


def test_resize_is_torchvisions_resize_of_the_float_frame(photos):
    torch = pytest.importorskip("torch")
    image = photos[3]  # rocket, 640x427 -> shorter side 100: 100x149, cut to 96x144
    ours = frame_input(image, 16, resize=100)
    assert ours.shape == (96, 144, 3)
    t = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    # torchvision's Resize of a tensor: bilinear, antialiased, no rounding to bytes.
    t = torch.nn.functional.interpolate(t, size=(100, 149), mode="bilinear",
                                        align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    theirs = ((t - mean) / std)[0, :, :96, :144].permute(1, 2, 0).numpy()
    # Two float32 programs of the same antialiased kernel: 640 -> 149 columns spreads each
    # output over 2 x ceil(640 / 149) + 1 = 11 taps, whose weights take a kernel value, a
    # normalising sum and a division (12 roundings), with sum|W'| at most bilinear's 2:
    # resize_tolerance(640, 11, 2, 1, 12) = 4.8e-4 of the largest |pixel| (atol 2e-2
    # before, while the two agree to 1.1e-6; a resize without antialiasing is 1.4 away)
    bound = resize_tolerance(640, 11, 2.0, 1.0, 12, np.abs(theirs).max())
    assert_within(ours, theirs, bound, "antialiased resize")
    assert np.abs(ours - theirs).mean() < 2e-3
    # Two values: height and width.
    assert frame_input(image, 16, resize=(64, 100)).shape == (64, 96, 3)


def test_heatmap_colours_are_plt_imsave_s(tmp_path):
    from matplotlib import image as mpimg

    heat = np.random.default_rng(0).random((24, 40)).astype(np.float32)
    mpimg.imsave(tmp_path / "ref.png", heat, cmap="inferno")
    with Image.open(tmp_path / "ref.png") as ref:
        np.testing.assert_array_equal(heatmap_image(heat), np.asarray(ref.convert("RGB")))


def test_video_and_its_frames_folder_give_the_official_layout_and_same_maps(
        vit, video, tmp_path):
    from matplotlib import image as mpimg

    out = tmp_path / "from_video"
    summary = attention_video(vit, video, str(out), verbose=0)
    names = [f"frame-{i:04}.jpg" for i in range(4)]
    assert sorted(os.listdir(out)) == ["attention", "frames", "video.mp4"]
    assert sorted(os.listdir(out / "frames")) == names
    assert sorted(os.listdir(out / "attention")) == ["attn-" + n for n in names]
    assert summary == {"frames": 4, "frames_folder": str(out / "frames"),
                       "attention_folder": str(out / "attention"),
                       "video": str(out / "video.mp4"), "fps": pytest.approx(12.0),
                       "size": [96, 64]}
    assert len(list(iter_video_frames(summary["video"]))) == 4
    assert video_fps(summary["video"]) == pytest.approx(12.0)

    # The official reads the extracted frames back: a folder of them gives the same maps.
    again = tmp_path / "from_folder"
    folder_summary = attention_video(vit, str(out / "frames"), str(again), fps=12,
                                     video_format="avi", verbose=0)
    assert folder_summary["frames_folder"] is None
    assert sorted(os.listdir(again)) == ["attention", "video.avi"]
    for name in names:
        a = np.asarray(Image.open(out / "attention" / f"attn-{name}"))
        b = np.asarray(Image.open(again / "attention" / f"attn-{name}"))
        np.testing.assert_array_equal(a, b)

    # Each file is the official `plt.imsave(heatmap, cmap="inferno", format="jpg")` of the
    # frame's heat map, pixel for pixel.
    frame = read_frame(str(out / "frames" / names[2]))
    reference = tmp_path / "reference.jpg"
    mpimg.imsave(reference, frame_attention(vit, frame).heatmap, cmap="inferno", format="jpg")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "attention" / f"attn-{names[2]}")),
                                  np.asarray(Image.open(reference)))


def test_video_only_uses_the_attention_images_alone(frames, tmp_path):
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"attn-frame-{i:04}.jpg")
    Image.fromarray(frames[0]).save(tmp_path / "frame-0000.jpg")  # not an attention image
    path = generate_video(str(tmp_path), str(tmp_path / "out"), fps=3, video_format="avi")
    assert path == str(tmp_path / "out" / "video.avi")
    assert len(list(iter_video_frames(path))) == 4


def test_bad_inputs_are_named(vit, frames, tmp_path):
    with pytest.raises(FileNotFoundError, match="no video file or folder"):
        attention_video(vit, str(tmp_path / "missing.mp4"), str(tmp_path), verbose=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoInputError, match="no frames"):
        attention_video(vit, str(tmp_path / "empty"), str(tmp_path), verbose=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(frames[0]).save(broken / "a.jpg")
    (broken / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoInputError, match="b.jpg is not a readable image"):
        attention_video(vit, str(broken), str(tmp_path / "o"), verbose=0)
    with pytest.raises(VideoInputError, match="unknown video format 'mkv'"):
        attention_video(vit, str(broken), str(tmp_path / "o"), video_format="mkv", verbose=0)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(VideoInputError, match="OpenCV read no frame"):
        attention_video(vit, str(not_video), str(tmp_path / "o"), verbose=0)
    with pytest.raises(VideoInputError, match="no frames to write"):
        write_video([], str(tmp_path / "none.mp4"))


def test_missing_opencv_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "keras-dino\[video\]"'):
        write_video([np.zeros((8, 8, 3), np.uint8)], str(tmp_path / "v.mp4"))


def _tool():
    from keras_dino.tools import video_generation

    return video_generation


def test_tool_has_the_official_flags_and_defaults():
    from absl import flags

    values = flags.FlagValues()
    _tool().define_flags(values)
    values(["video_generation", "--input_path=x"])
    official = dict(arch="vit_small", patch_size=8, pretrained_weights="",
                    checkpoint_key="teacher", output_path="./", threshold=0.6, resize=None,
                    video_only=False, fps=30.0, video_format="mp4")
    assert {name: values[name].value for name in official} == official
    with pytest.raises(flags.IllegalFlagValueError):
        values(["video_generation", "--input_path=x", "--video_format=mkv"])


@pytest.mark.slow
def test_tool_end_to_end(video, tmp_path, tmp_path_factory, capsys):
    from absl import app, flags

    import keras_dino

    model = keras_dino.DINO(
        arch="vit_test", patch_size=8, out_dim=64, epochs=1, warmup_epochs=0,
        vit_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
        head_kwargs=dict(hidden_dim=32, bottleneck_dim=16),
    )
    checkpoint = model.save_official_checkpoint(tmp_path_factory.mktemp("dino") / "ck.pth")
    tool = _tool()

    def run(*args):
        values = flags.FlagValues()
        tool.define_flags(values)
        values(["video_generation", f"--pretrained_weights={checkpoint}", "--arch=vit_test",
                "--verbose=0", *args])
        return tool.run(values)

    out = tmp_path / "out"
    summary = run(f"--input_path={video}", f"--output_path={out}", "--resize=48,80",
                  "--masked", "--threshold=0.5")
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == summary
    assert (last["frames"], last["video"], last["size"]) == (4, str(out / "video.mp4"),
                                                            [80, 48])
    assert last["fps"] == pytest.approx(12.0)
    assert sorted(os.listdir(out / "attention")) == [f"attn-frame-{i:04}.jpg" for i in range(4)]

    # --video_only: the video of a folder of attention images, no model.
    only = run(f"--input_path={out / 'attention'}", f"--output_path={tmp_path / 'only'}",
               "--video_only", "--video_format=avi", "--fps=5")
    assert only["video"] == str(tmp_path / "only" / "video.avi") and only["frames"] == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fps"] == 5.0

    with pytest.raises(app.UsageError, match="does not exist"):
        run(f"--input_path={tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(app.UsageError, match="no frames"):
        run(f"--input_path={tmp_path / 'empty'}", f"--output_path={tmp_path / 'o'}")
    with pytest.raises(app.UsageError, match="--resize"):
        run(f"--input_path={video}", "--resize=1,2,3")
