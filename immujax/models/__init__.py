"""Deep feature extractors for the ImageNet experiments (paper Sec. 5.3), in flax.linen.

Every model is ``head ∘ extractor ∘ trunk``:

* **trunk** — frozen during immunization (ResNet: stem and all but the last BasicBlocks;
  ViT: patch/position embeddings and all but the last transformer blocks);
* **extractor** — the immunized part; with the trunk it forms f_θ : R^{D_in} → R^{D_hid};
* **head** — the linear classifier of the pre-training task (ω in the paper).

The functions here are thin, pure wrappers around ``model.apply`` that every model shares::

  model = resnet18()
  variables = init(model, jax.random.key(0), (1, 224, 224, 3))
  phi = features(model, variables, images)                  # (N, 512), running BN stats
  labels = param_labels(model, variables["params"])         # for optax.multi_transform
  mask = trainable_mask(model, variables["params"])         # for optax.masked
  parts = split_params(model, variables["params"])          # {"trunk", "extractor", "head"}
  params = merge_params(parts)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from immujax.models.resnet import (EXTRACTOR, HEAD, TRUNK, BasicBlock, ResNet, resnet18,
                                   small_resnet)
from immujax.models.vit import (EncoderBlock, MlpBlock, VisionTransformer, tiny_vit,
                                vit_base_patch16_224)

PARTS = (TRUNK, EXTRACTOR, HEAD)

__all__ = [
    "PARTS", "TRUNK", "EXTRACTOR", "HEAD", "BasicBlock", "ResNet", "resnet18", "small_resnet",
    "EncoderBlock", "MlpBlock", "VisionTransformer", "vit_base_patch16_224", "tiny_vit",
    "init", "apply", "features", "logits", "param_labels", "trainable_mask", "split_params",
    "merge_params",
]


def init(model: nn.Module, key: jax.Array, input_shape: Sequence[int], *,
         dtype: Any = jnp.float32) -> dict:
  """Initializes a model's variables.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    key: a JAX PRNG key.
    input_shape: (N, H, W, C) of a dummy input; fixes the ViT position-embedding length.
    dtype: dtype of the dummy input.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (no ``batch_stats`` for the ViT), all in the
    model's ``param_dtype``.

  Note:
    The initializers are compiled once per parameter shape; with the default threefry
    PRNG, XLA:CPU takes ~0.5 s per shape (30 s for even the small ResNet on 2 cores).
    ``jax.random.key(seed, impl="rbg")`` compiles about 5x faster. Pretrained runs skip
    this entirely by loading weights with :func:`immujax.models.weights.from_timm`.
  """
  if len(input_shape) != 4:
    raise ValueError(f"input_shape must be (N, H, W, C), got {tuple(input_shape)}.")
  variables = dict(jax.jit(model.init)(key, jnp.zeros(input_shape, dtype)))
  if "batch_stats" in variables:
    # flax creates BatchNorm statistics in float32 whatever param_dtype is; keep them in the
    # parameters' dtype so that training-mode updates do not change the state's dtype.
    variables["batch_stats"] = jax.tree.map(lambda a: a.astype(model.param_dtype),
                                            variables["batch_stats"])
  return variables


def apply(model: nn.Module, variables: dict, x: jax.Array, *, output: str = "features",
          train: bool = False, train_trunk_bn: bool = False,
          from_trunk: bool = False) -> tuple[jax.Array, dict]:
  """Applies a model, returning its output and the (possibly updated) variables.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    variables: ``{"params": ..., ["batch_stats": ...]}``.
    x: (N, H, W, C) normalized images, or trunk outputs when ``from_trunk``.
    output: ``"features"`` (N, D_hid), ``"logits"`` (N, num_classes) or ``"trunk"``.
    train: extractor BatchNorms use batch statistics and update their running averages.
    train_trunk_bn: the trunk's BatchNorms do too (the authors' behaviour; paper digest
      §6 item 14). Requires ``train``.
    from_trunk: ``x`` is the trunk's output.

  Returns:
    ``(out, new_variables)``; ``new_variables`` equals ``variables`` unless ``train`` and
    the model has BatchNorm, in which case its ``batch_stats`` are updated.
  """
  if train_trunk_bn and not train:
    raise ValueError("train_trunk_bn=True requires train=True.")
  kwargs = dict(output=output, train=train, train_trunk_bn=train_trunk_bn,
                from_trunk=from_trunk)
  if train and "batch_stats" in variables:
    out, updates = model.apply(variables, x, mutable=["batch_stats"], **kwargs)
    return out, {**variables, **updates}
  return model.apply(variables, x, **kwargs), variables


def features(model: nn.Module, variables: dict, x: jax.Array, *,
             from_trunk: bool = False) -> jax.Array:
  """Inference-mode pooled features f_θ(x) (running BatchNorm statistics).

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    variables: the model's variables.
    x: (N, H, W, C) normalized images (or trunk outputs when ``from_trunk``).
    from_trunk: ``x`` is the trunk's output.

  Returns:
    (N, D_hid) features (512 for ResNet18, 768 for ViT-B/16).
  """
  return model.apply(variables, x, output="features", from_trunk=from_trunk)


def logits(model: nn.Module, variables: dict, x: jax.Array, *,
           from_trunk: bool = False) -> jax.Array:
  """Inference-mode logits g_ω(f_θ(x)), shape (N, num_classes)."""
  return model.apply(variables, x, output="logits", from_trunk=from_trunk)


def _flat(model: nn.Module, tree: dict) -> dict:
  if not isinstance(tree, dict) and not hasattr(tree, "items"):
    raise ValueError(f"tree must be a nested dict of arrays, got {type(tree).__name__}.")
  if "params" in tree or "batch_stats" in tree:
    raise ValueError("pass one collection, e.g. variables['params'], not the whole "
                     "variables dict.")
  if not hasattr(model, "part_of"):
    raise ValueError(f"model must be a ResNet or VisionTransformer, got "
                     f"{type(model).__name__}.")
  return traverse_util.flatten_dict(dict(tree))


def param_labels(model: nn.Module, tree: dict) -> dict:
  """Labels every leaf ``"trunk"``, ``"extractor"`` or ``"head"``.

  Usable as the ``param_labels`` of ``optax.multi_transform``, e.g. the authors' two SGD
  groups: ``{"extractor": sgd(wd=0), "head": sgd(wd=2e-5), "trunk": optax.set_to_zero()}``.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer` (its ``immunized_blocks`` and,
      for the ViT, ``train_all_norms`` decide the split).
    tree: one collection, ``variables["params"]`` or ``variables["batch_stats"]``.

  Returns:
    A nested dict of the same structure with string leaves.
  """
  flat = _flat(model, tree)
  return traverse_util.unflatten_dict({k: model.part_of(k) for k in flat})


def trainable_mask(model: nn.Module, tree: dict,
                   parts: Sequence[str] = (EXTRACTOR, HEAD)) -> dict:
  """A boolean pytree, ``True`` on leaves of the given parts (for ``optax.masked``).

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    tree: one collection, usually ``variables["params"]``.
    parts: which parts are trainable; a subset of ``("trunk", "extractor", "head")``.
      The authors train the extractor and the head.

  Returns:
    A nested dict of the same structure with bool leaves.

  Note:
    ``optax.masked(tx, mask)`` passes the gradients of masked-out leaves through
    *unchanged*, so it does not freeze them by itself; freeze with
    ``optax.multi_transform({..., "trunk": optax.set_to_zero()}, param_labels(...))``, or
    differentiate only ``split_params(...)["extractor"]`` and ``["head"]``.
  """
  if isinstance(parts, str):
    parts = (parts,)
  bad = [p for p in parts if p not in PARTS]
  if bad:
    raise ValueError(f"parts must be a subset of {PARTS}, got unknown {bad}.")
  flat = _flat(model, tree)
  return traverse_util.unflatten_dict({k: model.part_of(k) in parts for k in flat})


def split_params(model: nn.Module, tree: dict) -> dict[str, dict]:
  """Splits one collection into ``{"trunk": ..., "extractor": ..., "head": ...}``.

  Each part holds only its own leaves, in the original nesting (a part may be ``{}``).
  Differentiating with respect to ``parts["extractor"]`` alone lets JAX skip the trunk's
  backward pass.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    tree: one collection, usually ``variables["params"]``.

  Returns:
    A dict of three nested dicts; :func:`merge_params` inverts it.
  """
  flat = _flat(model, tree)
  out = {p: {} for p in PARTS}
  for k, v in flat.items():
    out[model.part_of(k)][k] = v
  return {p: traverse_util.unflatten_dict(d) for p, d in out.items()}


def merge_params(parts: dict[str, dict]) -> dict:
  """Inverse of :func:`split_params`: the union of disjoint nested dicts.

  Args:
    parts: a dict of nested dicts (e.g. ``{"trunk": ..., "extractor": ..., "head": ...}``).

  Returns:
    The merged nested dict.
  """
  merged = {}
  for name, tree in parts.items():
    for k, v in traverse_util.flatten_dict(dict(tree)).items():
      if k in merged:
        raise ValueError(f"parts overlap at {'/'.join(k)} (second time in {name!r}); "
                         "pass the output of split_params.")
      merged[k] = v
  return traverse_util.unflatten_dict(merged)
