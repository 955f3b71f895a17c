"""Image input pipelines for the deep-net experiments (ImageNet → Cars / Country211).

Host-side numpy + PIL, no TensorFlow. Three layers:

* **Sources** — random-access sequences whose items are ``{"image": uint8 (H, W, 3),
  "label": int}``: :class:`ImageFolder` (the torchvision / timm ``image_folder`` layout
  ``root/<class>/<image>``, used by the authors for Cars and Country211 and usable for
  ImageNet ``train/`` and ``val/``) and :func:`tfds_source` (an already *prepared* tfds
  dataset such as ``imagenet2012`` or ``cars196``, read through ``tfds.data_source``).
* **Transforms** — pure functions of one image: :func:`eval_transform` (resize the shorter
  side to ``floor(size / crop_pct)`` then center-crop, as timm evaluates; or the authors'
  squash resize) and :func:`train_transform` (timm's default training augmentation:
  random-resized-crop, horizontal flip, color jitter), then :func:`normalize`.
* **Batching** — :func:`batches` yields ``{"image": (B, S, S, 3) float32, "label": (B,)
  int32}``; per-example randomness is derived from ``(seed, epoch, index)``, so a resumed
  epoch reproduces the uninterrupted one.

Normalization each pretrained model expects (timm ``pretrained_cfg``):

======================================  =====================  ========  ============
model                                   mean / std             crop_pct  interpolation
======================================  =====================  ========  ============
``resnet18.a1_in1k``                    ImageNet               0.95      bicubic
``vit_base_patch16_224.augreg2_...``    0.5 / 0.5 (Inception)  0.9       bicubic
authors' code (both models)             CLIP                   squash    bilinear
======================================  =====================  ========  ============

The authors normalize with CLIP statistics for both timm models and evaluate with
``Resize((224, 224))`` (no crop); see the paper digest §6 item 15.

TensorFlow is not needed to *read* prepared tfds datasets, but it is needed to *prepare*
them (``imagenet2012`` from the manual tarballs, ``cars196``) and by
``tfds.folder_dataset.ImageFolder``; hence the numpy :class:`ImageFolder` here.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
# OpenAI CLIP statistics, used by the authors' code for both timm models.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Evaluation preprocessing of a pretrained model.

  Attributes:
    mean: per-channel mean of [0, 1] pixels.
    std: per-channel standard deviation.
    size: side of the square network input.
    crop_pct: the center crop keeps this fraction of the resized shorter side
      (``resize_mode="crop"``).
    interpolation: PIL resampling filter, one of nearest, bilinear, bicubic, lanczos.
    resize_mode: ``"crop"`` (resize shorter side to ``floor(size / crop_pct)`` then center
      crop, timm's eval) or ``"squash"`` (resize to ``size x size``, the authors' eval).
  """
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  size: int = 224
  crop_pct: float = 0.875
  interpolation: str = "bicubic"
  resize_mode: str = "crop"


PRETRAINED = {
    # timm pretrained_cfg of the default tags in timm >= 0.9.
    "resnet18.a1_in1k": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 224, 0.95, "bicubic"),
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": Preprocessing(
        INCEPTION_MEAN, INCEPTION_STD, 224, 0.9, "bicubic"),
    # The authors' evaluation: torchvision Resize((224, 224)) (bilinear), CLIP statistics.
    "authors": Preprocessing(CLIP_MEAN, CLIP_STD, 224, 1.0, "bilinear", "squash"),
}


# --------------------------------------------------------------------------- transforms


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"{name} must be (H, W, C) with C in (1, 3, 4), got shape "
                     f"{image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return image


def _resample(interpolation: str):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if interpolation not in _RESAMPLE:
    raise ValueError(f"interpolation must be one of {_RESAMPLE}, got {interpolation!r}.")
  return getattr(Image.Resampling, interpolation.upper())


def resize(image: np.ndarray, height: int, width: int, *,
           interpolation: str = "bicubic") -> np.ndarray:
  """Resizes a uint8 (H, W, 3) image to (height, width, 3) with PIL (antialiased).

  PIL is what torchvision's ``Resize`` calls on PIL images, so the results match.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = _check_image(image)
  if image.dtype != np.uint8:
    raise ValueError(f"image must be uint8, got {image.dtype}; resize before normalize.")
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be positive, got {(height, width)}.")
  if image.shape[:2] == (height, width):
    return image
  out = Image.fromarray(image).resize((width, height), _resample(interpolation))
  return np.asarray(out)


def resize_shorter_side(image: np.ndarray, size: int, *,
                        interpolation: str = "bicubic") -> np.ndarray:
  """torchvision ``Resize(size)``: shorter side → size, longer side → int(size·long/short)."""
  image = _check_image(image)
  h, w = image.shape[:2]
  if h <= w:
    return resize(image, size, int(size * w / h), interpolation=interpolation)
  return resize(image, int(size * h / w), size, interpolation=interpolation)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision ``CenterCrop(size)`` (offsets ``round((H - size) / 2)``) of a larger image."""
  image = _check_image(image)
  h, w = image.shape[:2]
  if size > h or size > w:
    raise ValueError(f"size ({size}) must not exceed the image sides {(h, w)}; resize first.")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return image[top:top + size, left:left + size]


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """``(x / 255 - mean) / std`` for uint8 images, ``(x - mean) / std`` for float in [0, 1].

  Args:
    images: (..., H, W, 3) uint8 or floating images.
    mean: 3 channel means of [0, 1] pixels.
    std: 3 channel standard deviations.

  Returns:
    float32 array of the same shape.
  """
  images = np.asarray(images)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  if mean.shape != (images.shape[-1],) or std.shape != mean.shape:
    raise ValueError(f"mean and std must have one entry per channel ({images.shape[-1]}), "
                     f"got {mean.shape} and {std.shape}.")
  if np.any(std <= 0):
    raise ValueError(f"std must be positive, got {std}.")
  x = images.astype(np.float32)
  if images.dtype == np.uint8:
    x = x / 255.0
  return (x - mean) / std


def eval_transform(image: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
  """Evaluation preprocessing of one image.

  Args:
    image: (H, W, C) uint8 image (grayscale and RGBA are converted to RGB).
    preprocessing: e.g. ``PRETRAINED["resnet18.a1_in1k"]``.

  Returns:
    (size, size, 3) float32 normalized image.
  """
  p = preprocessing
  if p.resize_mode == "squash":
    image = resize(image, p.size, p.size, interpolation=p.interpolation)
  elif p.resize_mode == "crop":
    if not 0 < p.crop_pct <= 1:
      raise ValueError(f"crop_pct must be in (0, 1], got {p.crop_pct}.")
    image = resize_shorter_side(image, math.floor(p.size / p.crop_pct),
                                interpolation=p.interpolation)
    image = center_crop(image, p.size)
  else:
    raise ValueError(f"resize_mode must be 'crop' or 'squash', got {p.resize_mode!r}.")
  return normalize(image, p.mean, p.std)


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[int, int, int, int]:
  """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w) of the crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height  # fallback: central crop at the clamped aspect ratio
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _grayscale(x: np.ndarray) -> np.ndarray:
  return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def color_jitter(image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4) -> np.ndarray:
  """torchvision ``ColorJitter(b, c, s)`` (no hue) on a float [0, 1] (H, W, 3) image.

  The three adjustments are applied in a random order, each with a factor drawn from
  ``U(1 - v, 1 + v)``: brightness scales, contrast blends with the mean gray level,
  saturation blends with the grayscale image; the result is clipped to [0, 1].
  """
  x = np.asarray(image, np.float32)
  for op in rng.permutation(3):
    v = (brightness, contrast, saturation)[op]
    if v <= 0:
      continue
    f = np.float32(rng.uniform(max(0.0, 1 - v), 1 + v))
    if op == 0:
      other = np.zeros_like(x)
    elif op == 1:
      other = np.full_like(x, _grayscale(x).mean())
    else:
      other = _grayscale(x)
    x = np.clip(f * x + (1 - f) * other, 0.0, 1.0)
  return x


def train_transform(image: np.ndarray, rng: np.random.Generator, *, size: int = 224,
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                    jitter: float = 0.4, interpolation: str = "bicubic") -> np.ndarray:
  """timm's default training augmentation (``create_loader(is_training=True)``).

  RandomResizedCrop(size, scale, ratio) → horizontal flip with probability ``hflip`` →
  ColorJitter(jitter, jitter, jitter) → normalize. Defaults follow the authors' loaders
  (CLIP statistics).

  Args:
    image: (H, W, C) uint8 image.
    rng: numpy generator (one per example, see :func:`batches`).
    size: output side.
    mean: channel means for :func:`normalize`.
    std: channel standard deviations.
    scale: range of the crop's area fraction.
    ratio: range of the crop's aspect ratio.
    hflip: flip probability.
    jitter: brightness/contrast/saturation strength (0 disables).
    interpolation: PIL filter of the crop resize.

  Returns:
    (size, size, 3) float32 normalized image.
  """
  image = _check_image(image)
  top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng,
                                            scale=scale, ratio=ratio)
  image = resize(image[top:top + h, left:left + w], size, size, interpolation=interpolation)
  if rng.uniform() < hflip:
    image = image[:, ::-1]
  x = image.astype(np.float32) / 255.0
  if jitter > 0:
    x = color_jitter(x, rng, brightness=jitter, contrast=jitter, saturation=jitter)
  return normalize(x, mean, std)


# --------------------------------------------------------------------------- sources


def load_image(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as uint8 (H, W, 3) RGB (grayscale, palette, CMYK converted)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image {os.fspath(path)!r} does not exist or is not a file.")
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(
        f"could not read image {os.fspath(path)!r} ({type(e).__name__}: {e}); the file is "
        "corrupt or not an image: replace it or remove it from the folder.") from e


class ImageFolder:
  """Random-access source over ``root/<class>/<image>`` (torchvision ``ImageFolder`` order).

  Classes are the sorted sub-directory names and label ``i`` is the ``i``-th class, the
  convention of torchvision and timm (for ImageNet ``train/`` with synset directories this
  gives the standard 1k class indices). Files are those with an image extension, found
  recursively, sorted.

  Attributes:
    root: the folder.
    classes: sorted class names.
    paths: image paths.
    labels: (N,) int32 labels.
  """

  def __init__(self, root: str | os.PathLike):
    root = os.fspath(root)
    if not os.path.isdir(root):
      raise ValueError(f"root must be an existing directory of class folders, got {root!r}.")
    self.root = root
    self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    paths, labels = [], []
    for i, c in enumerate(self.classes):
      for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
        for f in sorted(files):
          if f.lower().endswith(IMAGE_EXTENSIONS):
            paths.append(os.path.join(dirpath, f))
            labels.append(i)
    if not paths:
      raise ValueError(f"root {root!r} has no images in class sub-directories "
                       f"(expected root/<class>/<image>{IMAGE_EXTENSIONS[0]}).")
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": load_image(self.paths[index]), "label": int(self.labels[index])}


def image_folder_split(root: str | os.PathLike, split: str) -> ImageFolder:
  """``ImageFolder(root/split)``, timm's ``create_dataset("image_folder", root, split)``.

  Country211 (torchvision layout ``country211/{train,valid,test}/<CC>/*.jpg``), Stanford
  Cars and ImageNet (``train/``, ``val/`` with synset directories) all fit this layout.

  Args:
    root: the dataset directory.
    split: a sub-directory such as ``"train"``, ``"valid"``, ``"val"`` or ``"test"``.

  Returns:
    The source.
  """
  root = os.fspath(root)
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    have = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    raise ValueError(f"split {split!r} not found: {path!r} is not a directory (root has "
                     f"{have or 'no sub-directories'}).")
  return ImageFolder(path)


class _TfdsSource:
  """Wraps a tfds data source to yield ``{"image": uint8 (H, W, 3), "label": int}``."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = self._source[index]
    return {"image": _check_image(ex["image"]), "label": int(ex["label"])}


def tfds_source(name: str, split: str, *, data_dir: str | os.PathLike | None):
  """A random-access source over a prepared tfds dataset (no TensorFlow needed to read).

  Args:
    name: e.g. ``"imagenet2012"`` or ``"cars196"``.
    split: e.g. ``"train"``, ``"validation"``, ``"test"``.
    data_dir: the tfds data directory holding the prepared (array_record) dataset;
      ``None`` means tfds' default (``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).

  Returns:
    A sequence of ``{"image": uint8 (H, W, 3), "label": int}``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for unprepared datasets
    raise ValueError(
        f"tfds dataset {name!r} split {split!r} is not prepared under data_dir={data_dir!r} "
        f"({type(e).__name__}: {e}). Preparing imagenet2012/cars196 needs TensorFlow "
        "(tfds build); alternatively use image_folder_split on an ImageFolder layout."
    ) from e
  return _TfdsSource(source)


# --------------------------------------------------------------------------- batching


def batches(source: Sequence[dict[str, Any]], *, batch_size: int,
            transform: Callable[[np.ndarray, np.random.Generator], np.ndarray],
            seed: int = 0, epoch: int = 0, shuffle: bool = True, drop_last: bool = True,
            num_threads: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of batches.

  The order is a permutation drawn from ``(seed, epoch)``; example ``i`` is transformed with
  ``np.random.default_rng([seed, epoch, i])``, so results do not depend on threading and
  a resumed epoch reproduces the uninterrupted one.

  Args:
    source: items ``{"image": uint8 (H, W, C), "label": int}`` (e.g. :class:`ImageFolder`).
    batch_size: B.
    transform: ``(image, rng) -> (S, S, 3) float32``, e.g.
      ``lambda im, rng: eval_transform(im, PRETRAINED["authors"])`` or
      ``functools.partial(train_transform, size=224)``.
    seed: data seed.
    epoch: epoch number (changes the order and the augmentations).
    shuffle: permute the examples.
    drop_last: drop a final incomplete batch (the authors' training loaders do).
    num_threads: decode and transform with this many threads (0: in the caller's thread).

  Yields:
    ``{"image": (B, S, S, 3) float32, "label": (B,) int32}``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  n = len(source)
  order = (np.random.default_rng([seed, epoch]).permutation(n) if shuffle
           else np.arange(n))
  stop = (n // batch_size) * batch_size if drop_last else n

  def one(i):
    ex = source[int(i)]
    return transform(ex["image"], np.random.default_rng([seed, epoch, int(i)])), ex["label"]

  pool = concurrent.futures.ThreadPoolExecutor(num_threads) if num_threads > 0 else None
  try:
    for start in range(0, stop, batch_size):
      idx = order[start:start + batch_size]
      items = list(pool.map(one, idx)) if pool else [one(i) for i in idx]
      yield {"image": np.stack([im for im, _ in items]),
             "label": np.asarray([lab for _, lab in items], np.int32)}
  finally:
    if pool:
      pool.shutdown(wait=False, cancel_futures=True)
