"""Immunization of deep feature extractors, its evaluation and its attackers (Sec. 5.3).

A deep model is ``head ∘ extractor ∘ trunk`` (:mod:`immujax.models`); only the immunized
extractor θ (and, during immunization, the head ω) train. One module per job:

========================  =================================================================
:mod:`.network`           trainable / frozen split, forward pass, float64 Grams (Eq. 18),
                          batched inference
:mod:`.losses`            the four methods' objectives (Eq. 11, R_ill Only, Opt κ, IMMA),
                          :class:`Spec`, :class:`HParams`
:mod:`.train`             the optimizer, the pure training step, chunks vmapped over seeds,
                          :func:`immunize` (resumable)
:mod:`.pretraining`       supervised training of a whole model (θ0 of the CPU stand-in)
:mod:`.evaluate`          D_P accuracy, RIR_θ0 over groups (Eq. 17), a Table 3 row, the
                          relative fine-tuning difficulty (RFD) of attack curves
:mod:`.finetune`          the attackers: linear probing (Fig. 3), full fine-tuning and LoRA
                          of the immunized stage, each a harmful test-accuracy curve
:mod:`.stand_in`          the CPU stand-in's MNIST digit tasks (arrays in, splits out)
========================  =================================================================

Every public name of the submodules is re-exported here (``from immujax import deep;
deep.make_train_step``).

References:
  Zheng, Bai, Bullins, Yeh. "Model Immunization from a Condition Number Perspective",
  ICML 2025, Eq. 11, 17, 18, Sec. 5.3, Table 3, Fig. 3.
"""

from immujax.deep.network import apply_in_batches
from immujax.deep.network import forward
from immujax.deep.network import gram64
from immujax.deep.network import head_apply
from immujax.deep.network import merge_variables
from immujax.deep.network import split_variables
from immujax.deep.losses import METHODS
from immujax.deep.losses import HParams
from immujax.deep.losses import Spec
from immujax.deep.losses import make_hparams
from immujax.deep.losses import objective
from immujax.deep.losses import require_x64
from immujax.deep.losses import smoothed_cross_entropy
from immujax.deep.losses import unrolled_probe
from immujax.deep.train import CHUNK_MODES
from immujax.deep.train import TaskData
from immujax.deep.train import TrainState
from immujax.deep.train import batch_indices
from immujax.deep.train import immunize
from immujax.deep.train import init_state
from immujax.deep.train import make_chunk
from immujax.deep.train import make_optimizer
from immujax.deep.train import make_scan_steps
from immujax.deep.train import make_train_step
from immujax.deep.train import stack_trees
from immujax.deep.pretraining import PretrainState
from immujax.deep.pretraining import make_pretrain_chunk
from immujax.deep.pretraining import pretrain
from immujax.deep.evaluate import RIRTheta0
from immujax.deep.evaluate import accuracy
from immujax.deep.evaluate import group_indices
from immujax.deep.evaluate import relative_finetuning_difficulty
from immujax.deep.evaluate import rir_theta0
from immujax.deep.evaluate import table3_row
from immujax.deep.stand_in import digit_tasks
from immujax.deep.stand_in import take_digits
from immujax.deep.finetune import ADAPTERS
from immujax.deep.finetune import ATTACKS
from immujax.deep.finetune import AttackSettings
from immujax.deep.finetune import FinetuneSpec
from immujax.deep.finetune import FinetuneCurve
from immujax.deep.finetune import FinetuneState
from immujax.deep.finetune import ProbeCurve
from immujax.deep.finetune import adapted_stage
from immujax.deep.finetune import feature_dim
from immujax.deep.finetune import finetune_curve
from immujax.deep.finetune import finetune_logits
from immujax.deep.finetune import init_finetune
from immujax.deep.finetune import lora_init
from immujax.deep.finetune import lora_matrix_shape
from immujax.deep.finetune import lora_merge
from immujax.deep.finetune import make_finetune_step
from immujax.deep.finetune import probe_curve
from immujax.deep.finetune import run_attacks
