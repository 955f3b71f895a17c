"""Import and export of timm / torchvision checkpoints for :mod:`immujax.models`.

The name map is explicit: :func:`timm_name_map` lists, for a given model, every timm
``state_dict`` key with the flax variable(s) it fills and the layout conversion:

=========  =======================================  =====================================
kind       timm (PyTorch) layout                    flax layout
=========  =======================================  =====================================
conv       weight (O, I, kh, kw)                    kernel (kh, kw, I, O)
linear     weight (out, in)                         kernel (in, out)
copy       bias, LayerNorm/BN weight and bias,      bias, scale; BN running_mean /
           running_mean, running_var, cls_token,    running_var -> batch_stats mean / var
           pos_embed
qkv_w      attn.qkv.weight (3 D, D)                 query/key/value kernel (D, H, D/H)
qkv_b      attn.qkv.bias (3 D,)                     query/key/value bias (H, D/H)
proj_w     attn.proj.weight (D, D)                  attn/out kernel (H, D/H, D)
=========  =======================================  =====================================

BatchNorm ``num_batches_tracked`` counters are ignored on import (flax keeps none) and
exported as 0. torchvision's ``resnet18`` uses the same key names as timm's.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from immujax.models.resnet import ResNet
from immujax.models.vit import VisionTransformer

Path = tuple[str, ...]  # (collection, module, ..., leaf)

_KINDS = ("conv", "linear", "copy", "qkv_w", "qkv_b", "proj_w")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One timm key and the flax variable(s) it corresponds to.

  Attributes:
    kind: one of ``conv``, ``linear``, ``copy``, ``qkv_w``, ``qkv_b``, ``proj_w``.
    paths: flax variable paths ``(collection, module, ..., leaf)``; three (query, key,
      value) for the fused ``qkv`` kinds, one otherwise.
  """
  kind: str
  paths: tuple[Path, ...]


def to_flax(kind: str, w: np.ndarray, flax_shapes: tuple[tuple[int, ...], ...]
            ) -> tuple[np.ndarray, ...]:
  """Converts one timm array to the flax array(s) of the given shapes."""
  if kind == "conv":
    return (np.transpose(w, (2, 3, 1, 0)),)
  if kind == "linear":
    return (np.transpose(w),)
  if kind == "copy":
    return (w,)
  if kind == "qkv_w":  # (3 H hd, D) -> 3 x (D, H, hd)
    d, h, hd = flax_shapes[0]
    w = w.reshape(3, h, hd, d)
    return tuple(np.transpose(w[i], (2, 0, 1)) for i in range(3))
  if kind == "qkv_b":  # (3 H hd,) -> 3 x (H, hd)
    h, hd = flax_shapes[0]
    w = w.reshape(3, h, hd)
    return tuple(w[i] for i in range(3))
  if kind == "proj_w":  # (D_out, H hd) -> (H, hd, D_out)
    h, hd, d = flax_shapes[0]
    return (np.transpose(w).reshape(h, hd, d),)
  raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")


def to_timm(kind: str, arrays: tuple[np.ndarray, ...]) -> np.ndarray:
  """Converts flax array(s) back to one timm array (inverse of :func:`to_flax`)."""
  if kind == "conv":
    return np.transpose(arrays[0], (3, 2, 0, 1))
  if kind == "linear":
    return np.transpose(arrays[0])
  if kind == "copy":
    return arrays[0]
  if kind == "qkv_w":
    d = arrays[0].shape[0]
    return np.concatenate([np.transpose(a, (1, 2, 0)).reshape(-1, d) for a in arrays], 0)
  if kind == "qkv_b":
    return np.concatenate([a.reshape(-1) for a in arrays], 0)
  if kind == "proj_w":
    h, hd, d = arrays[0].shape
    return np.transpose(arrays[0].reshape(h * hd, d))
  raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")


def timm_shape(kind: str, flax_shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
  """The timm shape that :func:`to_timm` produces from flax arrays of these shapes."""
  s = flax_shapes[0]
  if kind == "conv":
    return (s[3], s[2], s[0], s[1])
  if kind == "linear":
    return (s[1], s[0])
  if kind == "copy":
    return tuple(s)
  if kind == "qkv_w":
    return (3 * s[1] * s[2], s[0])
  if kind == "qkv_b":
    return (3 * s[0] * s[1],)
  if kind == "proj_w":
    return (s[2], s[0] * s[1])
  raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")


def _resnet_map(flat: Mapping[Path, Any]) -> dict[str, Entry]:
  def module_key(mod: Path) -> str:
    parts = []
    for name in mod:
      m = re.fullmatch(r"layer(\d+)_(\d+)", name)
      if m:
        parts.append(f"layer{m[1]}.{m[2]}")
      elif name == "downsample_conv":
        parts.append("downsample.0")
      elif name == "downsample_bn":
        parts.append("downsample.1")
      else:
        parts.append(name)
    return ".".join(parts)

  out = {}
  for path, leaf in flat.items():
    col, mod, name = path[0], path[1:-1], path[-1]
    key = module_key(mod)
    if col == "batch_stats":
      out[f"{key}.running_{name}"] = Entry("copy", (path,))
    elif name == "kernel":
      out[f"{key}.weight"] = Entry("conv" if len(leaf.shape) == 4 else "linear", (path,))
    elif name == "scale":
      out[f"{key}.weight"] = Entry("copy", (path,))
    elif name == "bias":
      out[f"{key}.bias"] = Entry("copy", (path,))
    else:
      raise ValueError(f"no timm name for flax variable {'/'.join(path)}.")
  return out


def _vit_map(flat: Mapping[Path, Any]) -> dict[str, Entry]:
  out = {}
  for path, leaf in flat.items():
    col, mod, name = path[0], path[1:-1], path[-1]
    if col != "params":
      raise ValueError(f"no timm name for flax variable {'/'.join(path)}.")
    if not mod:  # cls_token, pos_embed
      out[name] = Entry("copy", (path,))
      continue
    top = mod[0]
    m = re.fullmatch(r"blocks_(\d+)", top)
    prefix = f"blocks.{m[1]}" if m else ("patch_embed.proj" if top == "patch_embed" else top)
    rest = mod[1:]
    suffix = "weight" if name in ("kernel", "scale") else name
    if rest and rest[0] == "attn":
      which = rest[1]
      if which in ("query", "key", "value"):
        qkv = tuple(("params",) + mod[:-1] + (w, name) for w in ("query", "key", "value"))
        kind = "qkv_w" if name == "kernel" else "qkv_b"
        out[f"{prefix}.attn.qkv.{suffix}"] = Entry(kind, qkv)
      else:  # out
        kind = "proj_w" if name == "kernel" else "copy"
        out[f"{prefix}.attn.proj.{suffix}"] = Entry(kind, (path,))
      continue
    key = ".".join((prefix,) + rest)
    if name == "kernel":
      kind = "conv" if len(leaf.shape) == 4 else "linear"
    else:
      kind = "copy"
    out[f"{key}.{suffix}"] = Entry(kind, (path,))
  return out


def _template(model, input_shape) -> dict:
  if len(input_shape) != 4:
    raise ValueError(f"input_shape must be (N, H, W, C), got {tuple(input_shape)}.")
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape, jnp.float32))


def timm_name_map(model, *, input_shape=(1, 224, 224, 3)
                  ) -> tuple[dict[str, Entry], dict[Path, jax.ShapeDtypeStruct]]:
  """The explicit timm-key → flax-variable map of a model.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer`.
    input_shape: (N, H, W, C) of an input; fixes the ViT ``pos_embed`` length
      (224x224 with P = 16 → 197 tokens).

  Returns:
    ``(name_map, flax_shapes)``: ``name_map[timm_key]`` is an :class:`Entry`;
    ``flax_shapes[path]`` the abstract value of every flax variable.
  """
  template = _template(model, input_shape)
  flat = traverse_util.flatten_dict(dict(template))
  if isinstance(model, ResNet):
    name_map = _resnet_map(flat)
  elif isinstance(model, VisionTransformer):
    name_map = _vit_map(flat)
  else:
    raise ValueError(f"model must be a ResNet or VisionTransformer, got "
                     f"{type(model).__name__}.")
  return name_map, flat


def _describe(items, limit=20) -> str:
  items = list(items)
  s = ", ".join(items[:limit])
  return s + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def from_timm(model, state_dict: Mapping[str, Any], *, input_shape=(1, 224, 224, 3),
              dtype: Any = None) -> dict:
  """Builds flax variables from a timm / torchvision ``state_dict``.

  Args:
    model: a :class:`ResNet` or :class:`VisionTransformer` whose configuration matches
      the checkpoint (e.g. ``resnet18()`` for timm ``resnet18``).
    state_dict: timm key → array (numpy arrays, or anything ``np.asarray`` accepts,
      such as CPU torch tensors). ``*.num_batches_tracked`` keys are ignored.
    input_shape: (N, H, W, C) the model will see; fixes the ViT ``pos_embed`` length.
    dtype: dtype of the returned arrays (parameters and BatchNorm statistics); default:
      the model's ``param_dtype``.

  Returns:
    ``{"params": ..., ["batch_stats": ...]}`` of numpy arrays.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped key.
  """
  name_map, flat = timm_name_map(model, input_shape=input_shape)
  given = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
  missing = sorted(set(name_map) - set(given))
  unexpected = sorted(set(given) - set(name_map))
  misshaped = []
  for key in sorted(set(name_map) & set(given)):
    entry = name_map[key]
    want = timm_shape(entry.kind, tuple(flat[p].shape for p in entry.paths))
    got = tuple(np.shape(given[key]))
    if got != want:
      misshaped.append(f"{key}: checkpoint {got}, model expects {want}")
  if missing or unexpected or misshaped:
    lines = [f"state_dict does not match {type(model).__name__} (check the model "
             "configuration, e.g. num_classes, stage_sizes, input_shape):"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {_describe(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {_describe(unexpected)}")
    if misshaped:
      lines.append(f"  mis-shaped keys ({len(misshaped)}): {_describe(misshaped)}")
    raise ValueError("\n".join(lines))
  # flax creates BatchNorm statistics in float32 whatever param_dtype is; keep them in the
  # parameters' dtype so that a float64 training loop carries float64 state throughout.
  target = np.dtype(dtype if dtype is not None else model.param_dtype)
  out = {}
  for key, entry in name_map.items():
    shapes = tuple(flat[p].shape for p in entry.paths)
    arrays = to_flax(entry.kind, np.asarray(given[key]), shapes)
    for path, a in zip(entry.paths, arrays):
      out[path] = np.ascontiguousarray(a, dtype=target)
  return traverse_util.unflatten_dict(out)


def to_timm_state_dict(model, variables: Mapping[str, Any], *,
                       input_shape=(1, 224, 224, 3),
                       num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
  """Exports flax variables under timm's key names and layouts (inverse of :func:`from_timm`).

  Args:
    model: the model the variables belong to.
    variables: ``{"params": ..., ["batch_stats": ...]}``.
    input_shape: as in :func:`from_timm`.
    num_batches_tracked: also emit BatchNorm ``num_batches_tracked`` as int64 zeros, as
      a PyTorch ``state_dict`` has them.

  Returns:
    timm key → numpy array.
  """
  name_map, flat_shapes = timm_name_map(model, input_shape=input_shape)
  flat = traverse_util.flatten_dict(dict(variables))
  missing = sorted("/".join(p) for p in set(flat_shapes) - set(flat))
  if missing:
    raise ValueError(f"variables lack {len(missing)} entries of the model: "
                     f"{_describe(missing)}; pass the full variables dict.")
  out = {}
  for key, entry in name_map.items():
    out[key] = np.ascontiguousarray(
        to_timm(entry.kind, tuple(np.asarray(flat[p]) for p in entry.paths)))
    if num_batches_tracked and key.endswith(".running_mean"):
      out[key[:-len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into a dict of numpy arrays.

  ``.safetensors`` files are read with ``safetensors.numpy``; ``.pth``, ``.pt`` and
  ``.bin`` files need PyTorch (``torch.load(weights_only=True)``); a ``{"state_dict": ...}``
  or ``{"model": ...}`` wrapper is unwrapped.

  Args:
    path: the checkpoint file.

  Returns:
    key → numpy array.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  if ext in (".pth", ".pt", ".bin"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError(
          f"path {path!r} is a PyTorch checkpoint and torch is not installed: "
          "`pip install torch`, or convert it to .safetensors elsewhere with "
          "`safetensors.torch.save_file(torch.load(path), 'model.safetensors')`.") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
      if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
        sd = sd[wrapper]
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}
  raise ValueError(f"path must end in .safetensors, .pth, .pt or .bin, got {path!r}.")


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray]) -> None:
  """Writes a timm-named dict of numpy arrays to a ``.safetensors`` file."""
  path = os.fspath(path)
  if not path.endswith(".safetensors"):
    raise ValueError(f"path must end in .safetensors, got {path!r}.")
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, path)


def load_timm(model, path: str | os.PathLike, *, input_shape=(1, 224, 224, 3),
              dtype: Any = None) -> dict:
  """:func:`load_state_dict` then :func:`from_timm`."""
  return from_timm(model, load_state_dict(path), input_shape=input_shape, dtype=dtype)
