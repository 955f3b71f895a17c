"""Tests for immujax/models: numpy references in PyTorch conventions, splits, BatchNorm modes.

The references below are written in PyTorch's conventions (NCHW, OIHW weights, symmetric
``padding=k // 2``, max-pool padded with -inf, BN eps 1e-5, LayerNorm eps 1e-6, erf GELU,
fused qkv) and consume timm-named weights, so agreement checks the flax layout *and* the
importer's conversion at once.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from immujax import models
from immujax.models import weights

# --------------------------------------------------------------------------- references


def np_conv(x, w, stride, pad, b=None):
  """PyTorch Conv2d: x (N, C, H, W), w (O, C, kh, kw), symmetric zero padding."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  _, _, h, wd = x.shape
  _, _, kh, kw = w.shape
  ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = 0.0
  for a in range(kh):
    for c in range(kw):
      patch = x[:, :, a:a + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride]
      out = out + np.einsum("nchw,oc->nohw", patch, w[:, :, a, c])
  return out if b is None else out + b[None, :, None, None]


def np_maxpool(x, k=3, s=2, p=1):
  x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
  _, _, h, w = x.shape
  ho, wo = (h - k) // s + 1, (w - k) // s + 1
  return np.max([x[:, :, a:a + s * (ho - 1) + 1:s, c:c + s * (wo - 1) + 1:s]
                 for a in range(k) for c in range(k)], axis=0)


def np_bn(x, sd, prefix, batch_stats=False, eps=1e-5):
  if batch_stats:  # training mode: biased batch variance, as PyTorch normalizes
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
  else:
    mean, var = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
  y = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
  return y * sd[f"{prefix}.weight"][None, :, None, None] + sd[f"{prefix}.bias"][None, :, None, None]


def np_resnet(sd, x_nhwc, stage_sizes, stem, train_prefixes=()):
  """torchvision ResNet forward; BNs whose prefix starts with one of train_prefixes use
  batch statistics. Returns (stem output NCHW, features, logits)."""
  relu = lambda v: np.maximum(v, 0)
  bs = lambda p: any(p.startswith(t) for t in train_prefixes)
  x = np.transpose(x_nhwc, (0, 3, 1, 2))
  k = 7 if stem == "imagenet" else 3
  x = np_conv(x, sd["conv1.weight"], 2 if stem == "imagenet" else 1, k // 2)
  x = relu(np_bn(x, sd, "bn1", bs("bn1")))
  if stem == "imagenet":
    x = np_maxpool(x)
  stem_out = x
  for s, n in enumerate(stage_sizes):
    for b in range(n):
      p = f"layer{s + 1}.{b}"
      stride = 2 if (s > 0 and b == 0) else 1
      y = relu(np_bn(np_conv(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1", bs(p)))
      y = np_bn(np_conv(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2", bs(p))
      if f"{p}.downsample.0.weight" in sd:
        x = np_bn(np_conv(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd,
                  f"{p}.downsample.1", bs(p))
      x = relu(y + x)
  feats = x.mean(axis=(2, 3))
  return stem_out, feats, feats @ sd["fc.weight"].T + sd["fc.bias"]


def np_layer_norm(x, w, b, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def np_attention(x, sd, p, num_heads):
  """timm Attention: fused qkv, (B, N, 3, H, hd) split, softmax(q k^T / sqrt(hd)) v, proj."""
  bsz, n, d = x.shape
  hd = d // num_heads
  qkv = x @ sd[f"{p}.qkv.weight"].T + sd[f"{p}.qkv.bias"]
  qkv = qkv.reshape(bsz, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  a = q @ k.transpose(0, 1, 3, 2) * hd**-0.5
  a = np.exp(a - a.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(bsz, n, d)
  return o @ sd[f"{p}.proj.weight"].T + sd[f"{p}.proj.bias"]


def np_vit(sd, x_nhwc, patch, depth, num_heads):
  """timm VisionTransformer forward (class-token pooling). Returns (features, logits)."""
  x = np_conv(np.transpose(x_nhwc, (0, 3, 1, 2)), sd["patch_embed.proj.weight"], patch, 0,
              sd["patch_embed.proj.bias"])
  bsz, d = x.shape[:2]
  x = x.reshape(bsz, d, -1).transpose(0, 2, 1)  # flatten(2).transpose(1, 2)
  x = np.concatenate([np.broadcast_to(sd["cls_token"], (bsz, 1, d)), x], 1) + sd["pos_embed"]
  gelu = lambda v: 0.5 * v * (1 + special.erf(v / np.sqrt(2)))
  for i in range(depth):
    p = f"blocks.{i}"
    h = np_layer_norm(x, sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
    x = x + np_attention(h, sd, f"{p}.attn", num_heads)
    h = np_layer_norm(x, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])
    h = gelu(h @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"])
    x = x + h @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]
  feats = np_layer_norm(x, sd["norm.weight"], sd["norm.bias"])[:, 0]
  return feats, feats @ sd["head.weight"].T + sd["head.bias"]


def random_timm_weights(model, input_shape, seed=0):
  """Random float64 timm-named weights for ``model`` (fan-in scaled, non-trivial BN stats)."""
  name_map, flat = weights.timm_name_map(model, input_shape=input_shape)
  rng = np.random.default_rng(seed)
  sd = {}
  for key, e in name_map.items():
    shape = weights.timm_shape(e.kind, tuple(flat[p].shape for p in e.paths))
    if key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("weight") and len(shape) > 1:
      sd[key] = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:
      sd[key] = rng.standard_normal(shape) * 0.5 + (1.0 if "norm" in key or "bn" in key else 0)
  return sd


# --------------------------------------------------------------------------- numerics

RESNET_CASES = {
    # ImageNet stem on odd sizes: 19 -> conv7/2 -> 10 -> pool3/2 -> 5 -> stride 2 -> 3.
    "imagenet_stem": dict(stage_sizes=(1, 1), num_filters=4, num_classes=3, stem="imagenet",
                          immunized_blocks=1, shape=(2, 19, 19, 3)),
    # The MNIST stand-in: 28 -> 28 -> 14 -> 7 -> 4.
    "small": dict(stage_sizes=(1, 1, 1, 1), num_filters=4, num_classes=2, stem="small",
                  immunized_blocks=1, shape=(2, 28, 28, 1)),
}


@pytest.mark.parametrize("case", sorted(RESNET_CASES))
def test_resnet_matches_numpy_reference(case):
  cfg = dict(RESNET_CASES[case])
  shape = cfg.pop("shape")
  model = models.ResNet(param_dtype=jnp.float64, **cfg)
  sd = random_timm_weights(model, shape)
  variables = weights.from_timm(model, sd, input_shape=shape)
  x = np.random.default_rng(1).standard_normal(shape)
  stem_out, want_f, want_l = np_resnet(sd, x, cfg["stage_sizes"], cfg["stem"])

  trunk = model.apply(variables, x, output="trunk")
  if sum(cfg["stage_sizes"]) == 2:  # trunk = stem + layer1; check the stem separately
    stem = models.ResNet(param_dtype=jnp.float64, **{**cfg, "immunized_blocks": 2})
    np.testing.assert_allclose(np.transpose(stem.apply(variables, x, output="trunk"),
                                            (0, 3, 1, 2)), stem_out, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(models.features(model, variables, x), want_f, rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(models.logits(model, variables, x), want_l, rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(models.features(model, variables, trunk, from_trunk=True),
                             want_f, rtol=1e-10, atol=1e-10)


def test_resnet_train_mode_batchnorm():
  """train=True: extractor BNs use batch stats and update running stats; trunk BNs do only
  with train_trunk_bn=True (the authors' drifting statistics)."""
  cfg = dict(RESNET_CASES["imagenet_stem"])
  shape = cfg.pop("shape")
  model = models.ResNet(param_dtype=jnp.float64, **cfg)
  sd = random_timm_weights(model, shape)
  variables = weights.from_timm(model, sd, input_shape=shape)
  x = np.random.default_rng(2).standard_normal(shape)
  old = variables["batch_stats"]

  f, new = models.apply(model, variables, x, train=True)
  _, want, _ = np_resnet(sd, x, cfg["stage_sizes"], cfg["stem"], train_prefixes=("layer2",))
  np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-10)
  new = new["batch_stats"]
  for top in ("bn1", "layer1_0"):  # trunk: frozen
    jax.tree.map(np.testing.assert_array_equal, new[top], old[top])
  # Extractor: running = 0.9 running + 0.1 batch (flax: biased batch variance).
  x_in = np.asarray(model.apply(variables, x, output="trunk"))
  w = sd["layer2.0.conv1.weight"]
  h = np_conv(np.transpose(x_in, (0, 3, 1, 2)), w, 2, 1)
  np.testing.assert_allclose(new["layer2_0"]["bn1"]["mean"],
                             0.9 * old["layer2_0"]["bn1"]["mean"] + 0.1 * h.mean((0, 2, 3)),
                             rtol=1e-10)
  np.testing.assert_allclose(new["layer2_0"]["bn1"]["var"],
                             0.9 * old["layer2_0"]["bn1"]["var"] + 0.1 * h.var((0, 2, 3)),
                             rtol=1e-10)

  f, new = models.apply(model, variables, x, train=True, train_trunk_bn=True)
  _, want, _ = np_resnet(sd, x, cfg["stage_sizes"], cfg["stem"],
                         train_prefixes=("bn1", "layer"))
  np.testing.assert_allclose(f, want, rtol=1e-10, atol=1e-10)
  assert not np.allclose(new["batch_stats"]["bn1"]["mean"], old["bn1"]["mean"])
  with pytest.raises(ValueError, match="train_trunk_bn=True requires train=True"):
    models.apply(model, variables, x, train_trunk_bn=True)


def test_vit_matches_numpy_reference():
  model = models.tiny_vit(num_classes=5, depth=2, param_dtype=jnp.float64)
  shape = (2, 12, 16, 3)  # non-square: 3 x 4 patches, row-major
  sd = random_timm_weights(model, shape)
  variables = weights.from_timm(model, sd, input_shape=shape)
  x = np.random.default_rng(3).standard_normal(shape)
  want_f, want_l = np_vit(sd, x, patch=4, depth=2, num_heads=4)
  np.testing.assert_allclose(models.features(model, variables, x), want_f, rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(models.logits(model, variables, x), want_l, rtol=1e-10,
                             atol=1e-10)
  trunk = model.apply(variables, x, output="trunk")
  assert trunk.shape == (2, 13, 32)
  np.testing.assert_allclose(models.features(model, variables, trunk, from_trunk=True),
                             want_f, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- full size


def _abstract_apply(model, shape, output):
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))
  return jax.eval_shape(
      lambda v, x: model.apply(v, x, output=output), variables,
      jax.ShapeDtypeStruct(shape, jnp.float32)).shape


def test_full_size_shapes():
  r, v = models.resnet18(), models.vit_base_patch16_224()
  assert _abstract_apply(r, (2, 224, 224, 3), "features") == (2, 512)
  assert _abstract_apply(r, (2, 224, 224, 3), "logits") == (2, 1000)
  assert _abstract_apply(r, (2, 224, 224, 3), "trunk") == (2, 14, 14, 256)  # after layer3
  assert _abstract_apply(v, (2, 224, 224, 3), "features") == (2, 768)
  assert _abstract_apply(v, (2, 224, 224, 3), "logits") == (2, 1000)
  assert _abstract_apply(v, (2, 224, 224, 3), "trunk") == (2, 197, 768)


def test_full_size_parameter_counts():
  """timm: resnet18 11,689,512 and vit_base_patch16_224 86,567,656 parameters."""
  count = lambda m: sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: models.init(m, jax.random.key(0), (1, 224, 224, 3)))["params"]))
  assert count(models.resnet18()) == 11_689_512
  assert count(models.vit_base_patch16_224()) == 86_567_656


# --------------------------------------------------------------------------- splits


def _count(model, params):
  labels = jax.tree.leaves(models.param_labels(model, params))
  return {p: labels.count(p) for p in models.PARTS}


def test_resnet18_parts():
  model = models.resnet18()
  params = jax.eval_shape(lambda: models.init(model, jax.random.key(0),
                                              (1, 64, 64, 3)))["params"]
  labels = models.param_labels(model, params)
  assert labels["layer3_1"]["conv2"]["kernel"] == "trunk"
  assert labels["layer4_0"]["downsample_bn"]["scale"] == "extractor"
  assert labels["layer4_1"]["bn2"]["bias"] == "extractor"
  assert labels["fc"]["kernel"] == "head"
  parts = models.split_params(model, params)
  assert set(parts["extractor"]) == {"layer4_0", "layer4_1"}
  assert set(parts["head"]) == {"fc"}
  n = lambda t: sum(x.size for x in jax.tree.leaves(t))
  assert n(parts["extractor"]) == 8_393_728  # timm layer4
  assert n(parts["head"]) == 513_000
  with pytest.raises(ValueError, match="immunized_blocks must be in"):
    models.param_labels(models.resnet18(immunized_blocks=9), params)


def test_vit_parts_and_authors_norms():
  model = models.tiny_vit(depth=3)
  params = jax.eval_shape(lambda: models.init(model, jax.random.key(0),
                                              (1, 8, 8, 3)))["params"]
  labels = models.param_labels(model, params)
  assert labels["blocks_2"]["attn"]["query"]["kernel"] == "extractor"
  assert labels["blocks_1"]["norm1"]["scale"] == "trunk"
  assert labels["norm"]["scale"] == "extractor"
  assert labels["pos_embed"] == "trunk" and labels["head"]["bias"] == "head"
  authors = models.param_labels(models.tiny_vit(depth=3, train_all_norms=True), params)
  assert authors["blocks_1"]["norm1"]["scale"] == "extractor"
  assert authors["blocks_0"]["norm2"]["bias"] == "extractor"
  assert authors["blocks_1"]["mlp"]["fc1"]["kernel"] == "trunk"
  # 4 extra LayerNorms x (scale, bias)
  assert _count(models.tiny_vit(depth=3, train_all_norms=True), params)["extractor"] == \
      _count(model, params)["extractor"] + 8


def test_split_merge_and_frozen_training_step():
  model = models.small_resnet(num_filters=4)
  shape = (4, 28, 28, 1)
  variables = weights.from_timm(model, random_timm_weights(model, shape), input_shape=shape)
  params = variables["params"]
  parts = models.split_params(model, params)
  jax.tree.map(np.testing.assert_array_equal, models.merge_params(parts), params)
  with pytest.raises(ValueError, match="parts overlap"):
    models.merge_params({"a": parts["head"], "b": parts["head"]})
  with pytest.raises(ValueError, match="pass one collection"):
    models.param_labels(model, variables)

  x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
  mask = models.trainable_mask(model, params)
  labels = models.param_labels(model, params)
  # optax.masked passes masked-out updates through, so freeze the trunk with set_to_zero.
  tx = optax.multi_transform({"extractor": optax.sgd(0.1, momentum=0.9, nesterov=True),
                              "head": optax.sgd(0.1), "trunk": optax.set_to_zero()}, labels)

  @jax.jit
  def step(params):
    def loss(p):
      f, _ = models.apply(model, {**variables, "params": p}, x, output="logits", train=True)
      return jnp.sum(f**2)
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)
    return optax.apply_updates(params, updates)

  new = step(params)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), new, params)
  assert jax.tree.leaves(changed) == jax.tree.leaves(mask)
  assert sum(jax.tree.leaves(mask)) == len(jax.tree.leaves(parts["extractor"])) + 2


def test_bad_inputs():
  model = models.small_resnet()
  init = lambda m, shape: jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros(shape)))
  with pytest.raises(ValueError, match="stem must be"):
    init(models.small_resnet(stem="cifar"), (1, 28, 28, 1))
  with pytest.raises(ValueError, match=r"input_shape must be \(N, H, W, C\)"):
    models.init(model, jax.random.key(0), (28, 28, 1))
  with pytest.raises(ValueError, match="multiples of patch_size=4"):
    init(models.tiny_vit(), (1, 10, 12, 3))
  with pytest.raises(ValueError, match="hidden_size"):
    init(models.tiny_vit(num_heads=5), (1, 8, 8, 3))
  with pytest.raises(ValueError, match="parts must be a subset"):
    models.trainable_mask(model, {"fc": {"bias": np.zeros(2)}}, parts=("backbone",))
  with pytest.raises(ValueError, match="output must be one of"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                      output="pooled"))


def test_init_keeps_batch_stats_in_param_dtype():
  """flax makes BN statistics float32; init casts them so float64 training state is stable."""
  model = models.small_resnet(param_dtype=jnp.float64)
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (2, 28, 28, 1),
                                                 dtype=jnp.float64))
  assert {a.dtype for a in jax.tree.leaves(variables)} == {np.dtype(np.float64)}
  _, new = jax.eval_shape(
      lambda v, x: models.apply(model, v, x, train=True, train_trunk_bn=True), variables,
      jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float64))
  assert jax.tree.map(lambda a: a.dtype, new) == jax.tree.map(lambda a: a.dtype, variables)
