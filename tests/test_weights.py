"""Tests for immujax/models/weights.py: timm name maps, layouts, safetensors round trips.

The expected key lists below are written out by hand from timm's ``resnet18`` and
``vit_base_patch16_224`` ``state_dict`` (identical to torchvision's ``resnet18`` for the
ResNet), so a change in the importer's map cannot silently agree with itself.
"""
import numpy as np
import pytest

from immujax import models
from immujax.models import weights

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, c):
  return [(f"{prefix}.{n}", () if n == "num_batches_tracked" else (c,)) for n in BN]


def timm_resnet18_keys():
  """(key, shape) of timm ``resnet18`` (== torchvision ``resnet18``)."""
  keys = [("conv1.weight", (64, 3, 7, 7))] + _bn("bn1", 64)
  keys += [("layer1.0.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn1", 64)
  keys += [("layer1.0.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.0.bn2", 64)
  keys += [("layer1.1.conv1.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn1", 64)
  keys += [("layer1.1.conv2.weight", (64, 64, 3, 3))] + _bn("layer1.1.bn2", 64)
  keys += [("layer2.0.conv1.weight", (128, 64, 3, 3))] + _bn("layer2.0.bn1", 128)
  keys += [("layer2.0.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.0.bn2", 128)
  keys += [("layer2.0.downsample.0.weight", (128, 64, 1, 1))] + _bn("layer2.0.downsample.1", 128)
  keys += [("layer2.1.conv1.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn1", 128)
  keys += [("layer2.1.conv2.weight", (128, 128, 3, 3))] + _bn("layer2.1.bn2", 128)
  keys += [("layer3.0.conv1.weight", (256, 128, 3, 3))] + _bn("layer3.0.bn1", 256)
  keys += [("layer3.0.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.0.bn2", 256)
  keys += [("layer3.0.downsample.0.weight", (256, 128, 1, 1))] + _bn("layer3.0.downsample.1", 256)
  keys += [("layer3.1.conv1.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn1", 256)
  keys += [("layer3.1.conv2.weight", (256, 256, 3, 3))] + _bn("layer3.1.bn2", 256)
  keys += [("layer4.0.conv1.weight", (512, 256, 3, 3))] + _bn("layer4.0.bn1", 512)
  keys += [("layer4.0.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.0.bn2", 512)
  keys += [("layer4.0.downsample.0.weight", (512, 256, 1, 1))] + _bn("layer4.0.downsample.1", 512)
  keys += [("layer4.1.conv1.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn1", 512)
  keys += [("layer4.1.conv2.weight", (512, 512, 3, 3))] + _bn("layer4.1.bn2", 512)
  keys += [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
  return keys


def timm_vit_b16_keys():
  """(key, shape) of timm ``vit_base_patch16_224``."""
  keys = [
      ("cls_token", (1, 1, 768)),
      ("pos_embed", (1, 197, 768)),
      ("patch_embed.proj.weight", (768, 3, 16, 16)),
      ("patch_embed.proj.bias", (768,)),
  ]
  for i in range(12):
    keys += [
        (f"blocks.{i}.norm1.weight", (768,)),
        (f"blocks.{i}.norm1.bias", (768,)),
        (f"blocks.{i}.attn.qkv.weight", (2304, 768)),
        (f"blocks.{i}.attn.qkv.bias", (2304,)),
        (f"blocks.{i}.attn.proj.weight", (768, 768)),
        (f"blocks.{i}.attn.proj.bias", (768,)),
        (f"blocks.{i}.norm2.weight", (768,)),
        (f"blocks.{i}.norm2.bias", (768,)),
        (f"blocks.{i}.mlp.fc1.weight", (3072, 768)),
        (f"blocks.{i}.mlp.fc1.bias", (3072,)),
        (f"blocks.{i}.mlp.fc2.weight", (768, 3072)),
        (f"blocks.{i}.mlp.fc2.bias", (768,)),
    ]
  keys += [("norm.weight", (768,)), ("norm.bias", (768,)),
           ("head.weight", (1000, 768)), ("head.bias", (1000,))]
  return keys


def random_state_dict(keys, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in keys:
    if k.endswith("num_batches_tracked"):
      sd[k] = np.array(7, np.int64)
    elif k.endswith("running_var"):
      sd[k] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      sd[k] = rng.random(shape, dtype=np.float32) - 0.5
  return sd


def _check_round_trip(model, keys, tmp_path):
  sd = random_state_dict(keys)
  path = tmp_path / "model.safetensors"
  weights.save_state_dict(path, sd)
  variables = weights.load_timm(model, path)
  exported = weights.to_timm_state_dict(model, variables)
  assert sorted(exported) == sorted(sd)
  for k, v in sd.items():
    if k.endswith("num_batches_tracked"):
      continue  # not kept by flax; exported as 0
    assert exported[k].shape == v.shape, k
    np.testing.assert_array_equal(exported[k], v, err_msg=k)
  return sd, variables


def test_resnet18_name_map_is_timms():
  name_map, _ = weights.timm_name_map(models.resnet18())
  want = {k for k, _ in timm_resnet18_keys() if not k.endswith("num_batches_tracked")}
  assert set(name_map) == want


def test_vit_b16_name_map_is_timms():
  name_map, _ = weights.timm_name_map(models.vit_base_patch16_224())
  assert set(name_map) == {k for k, _ in timm_vit_b16_keys()}


def test_resnet18_safetensors_round_trip(tmp_path):
  model = models.resnet18()
  sd, variables = _check_round_trip(model, timm_resnet18_keys(), tmp_path)
  # Spot-check layouts: OIHW -> HWIO, (out, in) -> (in, out), BN stats in batch_stats.
  p, bs = variables["params"], variables["batch_stats"]
  np.testing.assert_array_equal(p["conv1"]["kernel"][2, 5, 1, 7], sd["conv1.weight"][7, 1, 2, 5])
  np.testing.assert_array_equal(
      p["layer2_0"]["downsample_conv"]["kernel"][0, 0, 3, 9],
      sd["layer2.0.downsample.0.weight"][9, 3, 0, 0])
  np.testing.assert_array_equal(p["fc"]["kernel"][11, 4], sd["fc.weight"][4, 11])
  np.testing.assert_array_equal(p["layer4_1"]["bn2"]["scale"], sd["layer4.1.bn2.weight"])
  np.testing.assert_array_equal(bs["layer3_0"]["downsample_bn"]["var"],
                                sd["layer3.0.downsample.1.running_var"])
  assert p["conv1"]["kernel"].dtype == np.float32


def test_vit_b16_safetensors_round_trip(tmp_path):
  model = models.vit_base_patch16_224()
  sd, variables = _check_round_trip(model, timm_vit_b16_keys(), tmp_path)
  attn = variables["params"]["blocks_3"]["attn"]
  qkv = sd["blocks.3.attn.qkv.weight"]  # rows: [q heads | k heads | v heads], each h*64 + j
  # value kernel [d_in, head, j] == qkv[2*768 + head*64 + j, d_in]
  np.testing.assert_array_equal(attn["value"]["kernel"][5, 2, 7], qkv[2 * 768 + 2 * 64 + 7, 5])
  np.testing.assert_array_equal(attn["query"]["bias"][11, 63],
                                sd["blocks.3.attn.qkv.bias"][11 * 64 + 63])
  np.testing.assert_array_equal(attn["out"]["kernel"][4, 10, 3],
                                sd["blocks.3.attn.proj.weight"][3, 4 * 64 + 10])
  np.testing.assert_array_equal(variables["params"]["patch_embed"]["kernel"][15, 0, 2, 9],
                                sd["patch_embed.proj.weight"][9, 2, 15, 0])


def _small_resnet_sd():
  model = models.small_resnet()
  name_map, flat = weights.timm_name_map(model, input_shape=(1, 28, 28, 1))
  keys = [(k, weights.timm_shape(e.kind, tuple(flat[p].shape for p in e.paths)))
          for k, e in name_map.items()]
  return model, random_state_dict(keys)


def test_missing_key_error():
  model, sd = _small_resnet_sd()
  del sd["layer2.0.downsample.1.running_var"]
  with pytest.raises(ValueError,
                     match=r"missing keys \(1\): layer2\.0\.downsample\.1\.running_var"):
    weights.from_timm(model, sd, input_shape=(1, 28, 28, 1))


def test_unexpected_key_error():
  model, sd = _small_resnet_sd()
  sd["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  sd["bn1.num_batches_tracked"] = np.array(3)  # ignored, not "unexpected"
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): layer5\.0\.conv1\.weight$"):
    weights.from_timm(model, sd, input_shape=(1, 28, 28, 1))


def test_misshaped_key_error():
  model, sd = _small_resnet_sd()
  sd["fc.weight"] = np.zeros((1000, 128), np.float32)
  with pytest.raises(ValueError, match=r"mis-shaped keys \(1\): fc\.weight: checkpoint "
                     r"\(1000, 128\), model expects \(10, 128\)"):
    weights.from_timm(model, sd, input_shape=(1, 28, 28, 1))


def test_all_errors_reported_together():
  model, sd = _small_resnet_sd()
  del sd["conv1.weight"]
  sd["extra"] = np.zeros(1)
  sd["fc.bias"] = np.zeros(3)
  with pytest.raises(ValueError) as e:
    weights.from_timm(model, sd, input_shape=(1, 28, 28, 1))
  msg = str(e.value)
  assert "missing keys (1): conv1.weight" in msg
  assert "unexpected keys (1): extra" in msg
  assert "mis-shaped keys (1): fc.bias" in msg


def test_vit_pos_embed_length_checked():
  model = models.tiny_vit()
  name_map, flat = weights.timm_name_map(model, input_shape=(1, 16, 16, 3))
  keys = [(k, weights.timm_shape(e.kind, tuple(flat[p].shape for p in e.paths)))
          for k, e in name_map.items()]
  sd = random_state_dict(keys)
  weights.from_timm(model, sd, input_shape=(1, 16, 16, 3))
  with pytest.raises(ValueError, match=r"pos_embed: checkpoint \(1, 17, 32\), model expects "
                     r"\(1, 50, 32\)"):
    weights.from_timm(model, sd, input_shape=(1, 28, 28, 3))


def test_bad_paths(tmp_path):
  with pytest.raises(ValueError, match="must end in .safetensors, .pth"):
    weights.load_state_dict(tmp_path / "model.npz")
  with pytest.raises(ValueError, match="must end in .safetensors"):
    weights.save_state_dict(tmp_path / "model.npz", {})


def test_torch_checkpoint_without_torch(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("torch is installed, so .pth files load; the no-torch message is untestable")
  except ImportError:
    pass
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"not read")
  with pytest.raises(ValueError, match=r"torch is not installed: `pip install torch`, or "
                     r"convert it to \.safetensors"):
    weights.load_state_dict(path)


def test_matches_timm_forward():
  """Logits equal timm's forward on the same random weights (needs torch and timm)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  absent = [m for m in ("torch", "timm") if importlib.util.find_spec(m) is None]
  if absent:
    pytest.skip(f"comparison with timm's forward needs torch and timm; not importable here: "
                f"{', '.join(absent)} (the numpy reference tests in test_models.py check "
                "the layouts instead)")
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
  for name, ours, keys in (("resnet18", models.resnet18(), timm_resnet18_keys()),
                           ("vit_base_patch16_224", models.vit_base_patch16_224(),
                            timm_vit_b16_keys())):
    sd = random_state_dict(keys)
    for k in sd:  # keep activations O(1) in the deep nets
      if k.endswith("weight") and sd[k].ndim > 1:
        sd[k] *= 1.0 / np.sqrt(np.prod(sd[k].shape[1:]))
    tm = timm.create_model(name, pretrained=False).eval().float()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    with torch.no_grad():
      want = tm(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    variables = weights.from_timm(ours, sd)
    got = np.asarray(models.logits(ours, variables, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
