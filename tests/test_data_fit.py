"""A short DINO.fit on CIFAR-10 JPEGs from the shared tar, through keras_dino.data."""

import math
import tarfile

import numpy as np
import pytest

import keras_dino


@pytest.mark.tf_only
def test_short_dino_fit_on_cifar10_jpegs(tmp_path, fixtures_dir):
    tar_path = fixtures_dir.parents[1] / "datasets" / "cifar10_jpeg.tar.gz"
    # 64 training JPEGs of two classes, in the ImageFolder layout of the archive.
    wanted = []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and "train" in parts and parts[-2] in ("cat", "ship"):
                wanted.append(member)
                if len(wanted) == 64:
                    break
        tar.extractall(tmp_path, members=wanted, filter="data")
    root = next(p for p in tmp_path.rglob("train") if p.is_dir())
    augmentation = keras_dino.data.DataAugmentationDINO(
        local_crops_number=2, global_size=32, local_size=16,
    )
    ds, info = keras_dino.data.multicrop_dataset(
        root, 16, augmentation=augmentation, seed=0, return_info=True
    )
    assert info.num_images == 64 and info.num_skipped == 0
    model = keras_dino.DINO(
        arch="t", vit_kwargs=dict(embed_dim=32, depth=1, num_heads=2), patch_size=8,
        out_dim=64, head_kwargs=dict(hidden_dim=32, bottleneck_dim=16), epochs=2,
        warmup_epochs=1, local_crops_number=2,
    )
    before = np.asarray(model.student.backbone.cls_token.numpy()).copy()
    history = model.fit(ds, epochs=2, verbose=0, data_settings=info)
    assert len(history.history["loss"]) == 2  # both epochs saw data (4 batches each)
    assert all(math.isfinite(v) for v in history.history["loss"])
    assert not np.array_equal(model.student.backbone.cls_token.numpy(), before)
