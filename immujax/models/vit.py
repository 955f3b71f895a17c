"""Vision Transformer in timm ``vit_base_patch16_224`` layout, split into trunk/extractor/head.

Parameter tree (mirrors timm's ``state_dict``, see :mod:`immujax.models.weights`)::

  patch_embed        conv P x P / P with bias          (timm ``patch_embed.proj``)
  cls_token          (1, 1, D)
  pos_embed          (1, 1 + (H/P)(W/P), D), added after prepending the CLS token
  blocks_{i}/norm1, attn/{query,key,value,out}, norm2, mlp/{fc1,fc2}
  norm               final LayerNorm
  head               linear head on the CLS token after ``norm``

Each block is pre-norm: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))`` with LayerNorm
``eps = 1e-6`` and the exact (erf) GELU, as in timm. timm fuses q, k, v into one
``qkv`` linear layer; here they are separate ``DenseGeneral`` layers with kernels
(D, heads, D/heads) (flax's ``MultiHeadDotProductAttention``), and the importer splits the
fused weight.

The immunized part f_θ is the last ``immunized_blocks`` transformer blocks, the final
``norm`` and the CLS pooling (paper: "we only immunize the final transformer block"). With
``train_all_norms=True`` the LayerNorms of every block are labelled trainable as well, as in
the authors' code (its filter ``"blocks.11" in name or "norm" in name or "head" in name``).

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
  Zheng et al., "Model Immunization from a Condition Number Perspective", ICML 2025, Sec. 5.3.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from immujax.models.resnet import EXTRACTOR, HEAD, TRUNK

Array = Any
Dtype = Any

_OUTPUTS = ("logits", "features", "trunk")
_DENSE_INIT = nn.initializers.xavier_uniform()
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class MlpBlock(nn.Module):
  """``fc2(gelu(fc1(x)))`` with the exact erf GELU (PyTorch ``nn.GELU()``).

  Attributes:
    mlp_dim: hidden width (3072 for ViT-B).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  mlp_dim: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(N, T, D) -> (N, T, D)."""
    dense = functools.partial(nn.Dense, kernel_init=_DENSE_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    y = dense(self.mlp_dim, name="fc1")(x)
    y = nn.gelu(y, approximate=False)
    return dense(x.shape[-1], name="fc2")(y)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block (timm ``Block`` without layer-scale or drop-path).

  Attributes:
    num_heads: attention heads (D must be divisible by it).
    mlp_dim: MLP hidden width.
    layer_norm_epsilon: LayerNorm epsilon (timm ViT: 1e-6).
    dtype: computation dtype.
    param_dtype: parameter dtype.
  """
  num_heads: int
  mlp_dim: int
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(N, T, D) tokens -> (N, T, D) tokens."""
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_epsilon,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    y = norm(name="norm1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=x.shape[-1], out_features=x.shape[-1],
        kernel_init=_DENSE_INIT, deterministic=True, dtype=self.dtype,
        param_dtype=self.param_dtype, name="attn")(y, y)
    x = x + y
    y = norm(name="norm2")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="mlp")(y)
    return x + y


class VisionTransformer(nn.Module):
  """ViT with a CLS token, learned position embeddings and a linear head on the CLS token.

  Attributes:
    patch_size: P; the image sides must be multiples of it.
    hidden_size: token width D (768 for ViT-B).
    depth: number of transformer blocks (12 for ViT-B).
    num_heads: attention heads (12 for ViT-B).
    mlp_dim: MLP hidden width (3072 for ViT-B).
    num_classes: outputs of ``head``.
    immunized_blocks: trailing blocks in f_θ; in ``[0, depth]`` (paper: 1).
    train_all_norms: label the LayerNorms of all blocks ``"extractor"`` too (authors' code).
    layer_norm_epsilon: LayerNorm epsilon (timm ViT: 1e-6).
    dtype: computation dtype (``None``: inferred from inputs and parameters).
    param_dtype: parameter dtype.
  """
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000
  immunized_blocks: int = 1
  train_all_norms: bool = False
  layer_norm_epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  def _check(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads "
                       f"({self.num_heads}).")
    if not 0 <= self.immunized_blocks <= self.depth:
      raise ValueError(f"immunized_blocks must be in [0, depth={self.depth}], got "
                       f"{self.immunized_blocks}.")

  def part_of(self, path: Sequence[str]) -> str:
    """Which part a variable belongs to.

    Args:
      path: the variable's path inside ``params``, e.g. ``("blocks_11", "attn", "query",
        "kernel")``.

    Returns:
      ``"trunk"``, ``"extractor"`` or ``"head"``.
    """
    self._check()
    top = path[0]
    if top == "head":
      return HEAD
    if top == "norm":
      return EXTRACTOR
    if top.startswith("blocks_"):
      if int(top.split("_")[1]) >= self.depth - self.immunized_blocks:
        return EXTRACTOR
      if self.train_all_norms and len(path) > 1 and path[1] in ("norm1", "norm2"):
        return EXTRACTOR
    return TRUNK

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False, train_trunk_bn: bool = False,
               output: str = "logits", from_trunk: bool = False) -> Array:
    """Applies the network.

    Args:
      x: (N, H, W, C) normalized images with H, W multiples of ``patch_size``, or the
        trunk's tokens (N, 1 + H W / P², D) when ``from_trunk``.
      train: unused (no dropout, no BatchNorm); kept for a common signature with ResNet.
      train_trunk_bn: unused (no BatchNorm).
      output: ``"logits"`` (N, num_classes), ``"features"`` (N, D) = the CLS token after
        the final ``norm``, or ``"trunk"`` the tokens (N, T, D) entering the first
        immunized block.
      from_trunk: ``x`` is the trunk's output; skip the trunk.

    Returns:
      The array selected by ``output``.
    """
    del train, train_trunk_bn
    self._check()
    if output not in _OUTPUTS:
      raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}.")
    if from_trunk and output == "trunk":
      raise ValueError("output='trunk' cannot be combined with from_trunk=True.")
    first_extractor = self.depth - self.immunized_blocks

    if not from_trunk:
      if x.ndim != 4 or x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
        raise ValueError(f"x must be (N, H, W, C) images with H and W multiples of "
                         f"patch_size={self.patch_size}, got shape {x.shape}.")
      p = self.patch_size
      x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID",
                  kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype,
                  param_dtype=self.param_dtype, name="patch_embed")(x)
      n, h, w, d = x.shape
      x = x.reshape(n, h * w, d)  # row-major patches, as torch's flatten(2).transpose(1, 2)
      cls = self.param("cls_token", _EMBED_INIT, (1, 1, d), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)).astype(x.dtype), x], axis=1)
      pos = self.param("pos_embed", _EMBED_INIT, (1, 1 + h * w, d), self.param_dtype)
      x = x + pos

    for i in range(self.depth):
      if i == first_extractor and output == "trunk":
        return x
      if i >= first_extractor or not from_trunk:
        x = EncoderBlock(self.num_heads, self.mlp_dim, self.layer_norm_epsilon,
                         dtype=self.dtype, param_dtype=self.param_dtype,
                         name=f"blocks_{i}")(x)
    if output == "trunk":
      return x
    x = nn.LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="norm")(x)
    x = x[:, 0]
    if output == "features":
      return x
    return nn.Dense(self.num_classes, kernel_init=_DENSE_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="head")(x)


def vit_base_patch16_224(num_classes: int = 1000, **kwargs) -> VisionTransformer:
  """timm ``vit_base_patch16_224``: P = 16, D = 768, 12 blocks, 12 heads, MLP 3072.

  Args:
    num_classes: outputs of ``head``.
    **kwargs: overrides of any :class:`VisionTransformer` attribute.

  Returns:
    The (unbound) module; expects 224x224x3 inputs (197 tokens), features are 768-d.
  """
  config = dict(patch_size=16, hidden_size=768, depth=12, num_heads=12, mlp_dim=3072,
                num_classes=num_classes, immunized_blocks=1)
  config.update(kwargs)
  return VisionTransformer(**config)


def tiny_vit(num_classes: int = 10, **kwargs) -> VisionTransformer:
  """A tiny ViT for fast tests: P = 4, D = 32, 2 blocks, 4 heads, MLP 64.

  Args:
    num_classes: outputs of ``head``.
    **kwargs: overrides of any :class:`VisionTransformer` attribute.

  Returns:
    The (unbound) module (e.g. for 16x16 or 28x28 inputs).
  """
  config = dict(patch_size=4, hidden_size=32, depth=2, num_heads=4, mlp_dim=64,
                num_classes=num_classes, immunized_blocks=1)
  config.update(kwargs)
  return VisionTransformer(**config)
