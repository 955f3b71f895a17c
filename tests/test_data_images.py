"""Tests for immujax/data/images.py on tiny generated images (no network, no TensorFlow)."""
import functools

import numpy as np
import pytest
from PIL import Image

from immujax.data import images


@pytest.fixture
def folder(tmp_path):
  """root/{train,valid}/{AD,ZW}/k.png: 2 classes x 3 images of distinct sizes and modes."""
  rng = np.random.default_rng(0)
  for split in ("train", "valid"):
    for c, cls in enumerate(("ZW", "AD")):  # created out of order; labels follow sorting
      d = tmp_path / split / cls
      d.mkdir(parents=True)
      for k in range(3):
        h, w = 20 + 3 * k, 30 - 2 * k
        arr = np.full((h, w, 3), 40 * c + k, np.uint8)
        arr[0, 0] = rng.integers(0, 255, 3)
        im = Image.fromarray(arr)
        if k == 2:
          im = im.convert("L")  # a grayscale file, as in ImageNet and Cars
        im.save(d / f"{k}.png")
    (tmp_path / split / "README.txt").write_text("not a class")
  return tmp_path


def test_normalization_constants():
  assert images.IMAGENET_MEAN == (0.485, 0.456, 0.406)
  assert images.IMAGENET_STD == (0.229, 0.224, 0.225)
  assert images.INCEPTION_MEAN == images.INCEPTION_STD == (0.5, 0.5, 0.5)
  assert images.CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
  assert images.CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
  r = images.PRETRAINED["resnet18.a1_in1k"]
  assert (r.mean, r.std, r.crop_pct, r.interpolation) == (
      images.IMAGENET_MEAN, images.IMAGENET_STD, 0.95, "bicubic")
  v = images.PRETRAINED["vit_base_patch16_224.augreg2_in21k_ft_in1k"]
  assert (v.mean, v.crop_pct) == (images.INCEPTION_MEAN, 0.9)
  a = images.PRETRAINED["authors"]
  assert (a.mean, a.std, a.resize_mode, a.interpolation) == (
      images.CLIP_MEAN, images.CLIP_STD, "squash", "bilinear")


def test_normalize():
  x = np.array([[[0, 255, 51]]], np.uint8)
  got = images.normalize(x, images.IMAGENET_MEAN, images.IMAGENET_STD)
  want = (np.array([0.0, 1.0, 0.2]) - np.array(images.IMAGENET_MEAN)) / np.array(
      images.IMAGENET_STD)
  np.testing.assert_allclose(got[0, 0], want, rtol=1e-6)
  assert got.dtype == np.float32
  np.testing.assert_allclose(images.normalize(np.full((1, 1, 3), 0.5), (0.5,) * 3, (0.5,) * 3),
                             0.0)
  with pytest.raises(ValueError, match="one entry per channel"):
    images.normalize(x, (0.5, 0.5), (0.5, 0.5))


def test_resize_and_crop_geometry():
  im = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
  assert images.resize_shorter_side(im, 20).shape == (20, 30, 3)
  assert images.resize_shorter_side(im.transpose(1, 0, 2), 25).shape == (37, 25, 3)  # int()
  c = images.center_crop(im, 21)
  # torchvision: top = round((40 - 21) / 2) = round(9.5) = 10 (banker's), left = round(19.5) = 20
  np.testing.assert_array_equal(c, im[10:31, 20:41])
  with pytest.raises(ValueError, match="must not exceed"):
    images.center_crop(im, 41)


def test_eval_transforms():
  rng = np.random.default_rng(0)
  im = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
  for name, p in images.PRETRAINED.items():
    out = images.eval_transform(im, p)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32, name
  # timm crop: shorter side -> floor(224 / 0.95) = 235, then the central 224 x 224.
  p = images.PRETRAINED["resnet18.a1_in1k"]
  manual = images.center_crop(images.resize_shorter_side(im, 235), 224)
  np.testing.assert_allclose(images.eval_transform(im, p),
                             images.normalize(manual, p.mean, p.std))
  # Squash: the whole field of view, aspect ratio not kept.
  flat = np.zeros((100, 300, 3), np.uint8)
  flat[:, :150] = 255
  out = images.eval_transform(flat, images.PRETRAINED["authors"])
  assert out[:, :100].mean() > 1.0 and out[:, 124:].mean() < -1.0
  with pytest.raises(ValueError, match="interpolation must be one of"):
    images.eval_transform(im, images.Preprocessing((0.5,) * 3, (0.5,) * 3,
                                                   interpolation="area"))


def test_train_transform_and_crop_box():
  rng = np.random.default_rng(0)
  for _ in range(50):
    top, left, h, w = images.random_resized_crop_box(30, 50, rng)
    assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50
    assert 0.08 * 1500 * 0.9 <= h * w <= 1500
  im = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  a = images.train_transform(im, np.random.default_rng(5), size=16)
  b = images.train_transform(im, np.random.default_rng(5), size=16)
  c = images.train_transform(im, np.random.default_rng(6), size=16)
  assert a.shape == (16, 16, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # Without jitter, a full-image "crop" and a certain flip mirror the eval resize.
  d = images.train_transform(im, np.random.default_rng(0), size=16, scale=(1.0, 1.0),
                             ratio=(50 / 40, 50 / 40), hflip=1.0, jitter=0.0,
                             mean=(0, 0, 0), std=(1, 1, 1))
  np.testing.assert_allclose(d, images.resize(im, 16, 16)[:, ::-1] / 255.0, atol=1e-6)


def test_color_jitter_bounds():
  x = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
  y = images.color_jitter(x, np.random.default_rng(1))
  assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
  np.testing.assert_array_equal(
      images.color_jitter(x, np.random.default_rng(1), brightness=0, contrast=0,
                          saturation=0), x)


def test_image_folder(folder):
  src = images.image_folder_split(folder, "train")
  assert src.classes == ["AD", "ZW"]
  assert len(src) == 6
  np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1])
  ex = src[3]  # ZW/0.png, created with c = 0
  assert ex["label"] == 1 and ex["image"].shape == (20, 30, 3) and ex["image"].dtype == np.uint8
  assert ex["image"][5, 5, 0] == 0
  assert src[2]["image"].shape == (26, 26, 3)  # grayscale file converted to RGB
  with pytest.raises(ValueError, match=r"split 'test' not found.*\['train', 'valid'\]"):
    images.image_folder_split(folder, "test")
  (folder / "empty" / "cls").mkdir(parents=True)
  with pytest.raises(ValueError, match="no images in class sub-directories"):
    images.ImageFolder(folder / "empty")
  with pytest.raises(ValueError, match="root must be an existing directory"):
    images.ImageFolder(folder / "missing")


def test_batches(folder):
  src = images.image_folder_split(folder, "valid")
  p = images.Preprocessing(images.CLIP_MEAN, images.CLIP_STD, size=16, resize_mode="squash")
  tf = lambda im, rng: images.eval_transform(im, p)
  out = list(images.batches(src, batch_size=4, transform=tf, shuffle=False))
  assert len(out) == 1  # drop_last
  assert out[0]["image"].shape == (4, 16, 16, 3) and out[0]["image"].dtype == np.float32
  np.testing.assert_array_equal(out[0]["label"], [0, 0, 0, 1])
  out = list(images.batches(src, batch_size=4, transform=tf, shuffle=False, drop_last=False))
  assert [len(b["label"]) for b in out] == [4, 2]

  aug = functools.partial(images.train_transform, size=8)
  run = lambda **kw: list(images.batches(src, batch_size=3, transform=aug, seed=1, **kw))
  a, b = run(epoch=0), run(epoch=0, num_threads=2)
  for x, y in zip(a, b):  # threads do not change the result
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  c = run(epoch=1)
  assert sorted(np.concatenate([x["label"] for x in a])) == [0, 0, 0, 1, 1, 1]
  assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
  with pytest.raises(ValueError, match="batch_size must be positive"):
    next(images.batches(src, batch_size=0, transform=tf))


def test_tfds_source_mock():
  """tfds data sources read prepared datasets without TensorFlow (here: tfds mock data)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=4):
    src = images.tfds_source("cars196", "train", data_dir=None)
    assert len(src) == 4
    ex = src[0]
    assert ex["image"].ndim == 3 and ex["image"].shape[-1] == 3
    assert ex["image"].dtype == np.uint8 and isinstance(ex["label"], int)
    tf = lambda im, rng: images.eval_transform(im, images.PRETRAINED["authors"])
    batch = next(images.batches(src, batch_size=2, transform=tf))
    assert batch["image"].shape == (2, 224, 224, 3)


def test_tfds_source_unprepared(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match="not prepared under data_dir"):
    images.tfds_source("cars196", "train", data_dir=tmp_path)
