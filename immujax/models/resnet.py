"""ResNet with BasicBlocks in timm/torchvision layout, split into trunk, extractor and head.

The parameter tree mirrors timm's ``resnet18`` ``state_dict`` so that checkpoints map one to
one (see :mod:`immujax.models.weights`)::

  conv1, bn1                      stem (7x7/2 conv + BN + ReLU + 3x3/2 max-pool)
  layer{s}_{b}/conv1, bn1, conv2, bn2[, downsample_conv, downsample_bn]
  fc                              linear head on the globally average-pooled features

Every convolution uses explicit symmetric padding (``k // 2``) like PyTorch, not ``"SAME"``:
for a stride-2 convolution on an even-sized input ``"SAME"`` pads (0, 1) whereas PyTorch pads
(1, 1), which shifts the sampling grid. BatchNorm uses PyTorch's ``eps = 1e-5`` and
``momentum = 0.1`` (flax ``momentum = 0.9``).

The immunized part f_θ is the last ``immunized_blocks`` BasicBlocks plus the global pool
(the paper immunizes "the last two convolutional blocks" of ResNet18, i.e. timm's ``layer4``;
the authors' code trains ``[layer4, global_pool]``). Everything before is the frozen trunk and
``fc`` is the head.

References:
  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
  Zheng et al., "Model Immunization from a Condition Number Perspective", ICML 2025, Sec. 5.3.
"""
from __future__ import annotations

from collections.abc import Sequence
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = Any
Dtype = Any

TRUNK = "trunk"
EXTRACTOR = "extractor"
HEAD = "head"

_OUTPUTS = ("logits", "features", "trunk")


def _conv(features: int, kernel: int, strides: int, name: str, dtype, param_dtype) -> nn.Conv:
  """A bias-free convolution padded like PyTorch's ``padding=kernel // 2``."""
  pad = kernel // 2
  return nn.Conv(
      features, (kernel, kernel), strides=(strides, strides),
      padding=((pad, pad), (pad, pad)), use_bias=False, name=name,
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
      dtype=dtype, param_dtype=param_dtype)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (torchvision ``BasicBlock``).

  ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` where the shortcut is the
  identity, or a strided 1x1 convolution + BN (``downsample``) when the stride or the
  number of channels changes.

  Attributes:
    filters: output channels C_out.
    strides: stride of ``conv1`` and of the shortcut.
    bn_momentum: flax momentum of the running statistics (PyTorch momentum 0.1 ⇔ 0.9).
    bn_epsilon: BatchNorm epsilon (PyTorch default 1e-5).
    dtype: computation dtype (``None``: inferred from inputs and parameters).
    param_dtype: parameter dtype.
  """
  filters: int
  strides: int = 1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, use_running_average: bool) -> Array:
    """Applies the block.

    Args:
      x: (N, H, W, C_in) activations.
      use_running_average: normalize with the running statistics (inference) instead of
        batch statistics (training, which also updates ``batch_stats``).

    Returns:
      (N, ceil(H / strides), ceil(W / strides), filters) activations.
    """
    conv = functools.partial(_conv, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(
        nn.BatchNorm, use_running_average=use_running_average, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, use_fast_variance=False, dtype=self.dtype,
        param_dtype=self.param_dtype)
    residual = x
    y = conv(self.filters, 3, self.strides, "conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.filters, 3, 1, "conv2")(y)
    y = norm(name="bn2")(y)
    if self.strides != 1 or x.shape[-1] != self.filters:
      residual = conv(self.filters, 1, self.strides, "downsample_conv")(x)
      residual = norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet with BasicBlocks (ResNet18/34 family), timm layout.

  Attributes:
    stage_sizes: BasicBlocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet18. Stage ``s``
      (0-based) has ``num_filters * 2**s`` channels; every stage but the first starts with
      a stride-2 block.
    num_filters: channels of the stem and of the first stage (64 for ResNet18).
    num_classes: outputs of the head ``fc``.
    stem: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool; timm/torchvision) or
      ``"small"`` (3x3/1 conv, BN, ReLU, no pooling; for 28x28 or 32x32 inputs).
    immunized_blocks: how many trailing BasicBlocks form the immunized feature extractor
      f_θ (2 = timm's ``layer4`` in ResNet18, the paper's "last two convolutional blocks").
      Must be in ``[0, sum(stage_sizes)]``.
    bn_momentum: flax momentum of the running statistics (PyTorch momentum 0.1 ⇔ 0.9).
    bn_epsilon: BatchNorm epsilon (PyTorch default 1e-5).
    dtype: computation dtype (``None``: inferred from inputs and parameters).
    param_dtype: parameter dtype (the authors train in float64).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  num_classes: int = 1000
  stem: str = "imagenet"
  immunized_blocks: int = 2
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def block_names(self) -> list[str]:
    """Names of the BasicBlocks in order, ``layer{stage}_{block}`` with 1-based stages."""
    return [f"layer{s + 1}_{b}" for s, n in enumerate(self.stage_sizes) for b in range(n)]

  def _check(self):
    if self.stem not in ("imagenet", "small"):
      raise ValueError(f"stem must be 'imagenet' or 'small', got {self.stem!r}.")
    if not self.stage_sizes or any(int(n) < 1 for n in self.stage_sizes):
      raise ValueError(
          f"stage_sizes must be a non-empty sequence of positive ints, got {self.stage_sizes}.")
    if not 0 <= self.immunized_blocks <= sum(self.stage_sizes):
      raise ValueError(
          f"immunized_blocks must be in [0, {sum(self.stage_sizes)}] (the number of "
          f"BasicBlocks), got {self.immunized_blocks}.")

  def part_of(self, path: Sequence[str]) -> str:
    """Which part a variable belongs to.

    Args:
      path: the variable's path inside a collection (``params`` or ``batch_stats``),
        e.g. ``("layer4_0", "conv1", "kernel")``.

    Returns:
      ``"trunk"``, ``"extractor"`` or ``"head"``.
    """
    self._check()
    top = path[0]
    if top == "fc":
      return HEAD
    names = self.block_names()
    extractor = set(names[len(names) - self.immunized_blocks:])
    return EXTRACTOR if top in extractor else TRUNK

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False, train_trunk_bn: bool = False,
               output: str = "logits", from_trunk: bool = False) -> Array:
    """Applies the network.

    Args:
      x: (N, H, W, C) images (NHWC, already normalized), or the trunk's output
        (N, H', W', C') when ``from_trunk``.
      train: use batch statistics in the extractor's BatchNorms and update their running
        statistics (call with ``mutable=["batch_stats"]``).
      train_trunk_bn: also put the frozen trunk's BatchNorms in training mode, as the
        authors' code does (their whole model is in ``train()`` mode, so the frozen layers'
        running statistics drift). Only meaningful with ``train=True``.
      output: ``"logits"`` (N, num_classes), ``"features"`` (N, D_hid) the pooled
        f_θ(x) with D_hid = ``num_filters * 2**(len(stage_sizes) - 1)``, or ``"trunk"``
        the trunk activations (N, H', W', C') fed to the extractor.
      from_trunk: ``x`` is the trunk's output; skip the trunk.

    Returns:
      The array selected by ``output``.
    """
    self._check()
    if output not in _OUTPUTS:
      raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}.")
    if from_trunk and output == "trunk":
      raise ValueError("output='trunk' cannot be combined with from_trunk=True.")
    block = functools.partial(
        BasicBlock, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
        dtype=self.dtype, param_dtype=self.param_dtype)
    trunk_avg = not (train and train_trunk_bn)
    names = self.block_names()
    first_extractor = len(names) - self.immunized_blocks

    if not from_trunk:
      if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C) images, got shape {x.shape}.")
      if self.stem == "imagenet":
        x = _conv(self.num_filters, 7, 2, "conv1", self.dtype, self.param_dtype)(x)
      else:
        x = _conv(self.num_filters, 3, 1, "conv1", self.dtype, self.param_dtype)(x)
      x = nn.BatchNorm(
          use_running_average=trunk_avg, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
          use_fast_variance=False, dtype=self.dtype, param_dtype=self.param_dtype,
          name="bn1")(x)
      x = nn.relu(x)
      if self.stem == "imagenet":
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    k = 0
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        in_extractor = k >= first_extractor
        if k == first_extractor and output == "trunk":
          return x
        if in_extractor or not from_trunk:
          strides = 2 if (s > 0 and b == 0) else 1
          x = block(self.num_filters * 2**s, strides=strides, name=names[k])(
              x, use_running_average=(not train) if in_extractor else trunk_avg)
        k += 1
    if output == "trunk":
      return x
    x = jnp.mean(x, axis=(1, 2))
    if output == "features":
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="fc")(x)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
  """timm/torchvision ``resnet18``: ImageNet stem, ``stage_sizes=(2, 2, 2, 2)``, 64 filters.

  Args:
    num_classes: outputs of the head ``fc`` (1000 for ImageNet-1k).
    **kwargs: overrides of any :class:`ResNet` attribute (e.g. ``immunized_blocks``).

  Returns:
    The (unbound) module; features are 512-d.
  """
  config = dict(stage_sizes=(2, 2, 2, 2), num_filters=64, num_classes=num_classes,
                stem="imagenet", immunized_blocks=2)
  config.update(kwargs)
  return ResNet(**config)


def small_resnet(num_classes: int = 10, **kwargs) -> ResNet:
  """A tiny ResNet for 28x28x1 inputs (MNIST stand-in, fast tests).

  ``stage_sizes=(1, 1, 1, 1)``, 16 filters, 3x3/1 stem without max-pool, 128-d features,
  the last block immunized.

  Args:
    num_classes: outputs of the head.
    **kwargs: overrides of any :class:`ResNet` attribute.

  Returns:
    The (unbound) module.
  """
  config = dict(stage_sizes=(1, 1, 1, 1), num_filters=16, num_classes=num_classes,
                stem="small", immunized_blocks=1)
  config.update(kwargs)
  return ResNet(**config)
