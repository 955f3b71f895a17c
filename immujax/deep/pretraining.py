"""Ordinary supervised pre-training of a whole model: θ0 of the CPU stand-in."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import optax

from immujax import models
from immujax import training
from immujax.deep.train import CHUNK_MODES
from immujax.deep.train import batch_indices
from immujax.deep.train import stack_trees

Array = jax.Array
PyTree = Any


class PretrainState(NamedTuple):
  """Full model variables and the optimizer state of the pre-training run."""
  variables: dict
  opt_state: PyTree


def make_pretrain_chunk(model: nn.Module, optimizer: optax.GradientTransformation, *,
                        batch_size: int, chunk_steps: int, mode: str = "scan") -> Callable:
  """A chunk of ordinary supervised training of the whole model (to make θ0).

  Plain softmax cross-entropy, every parameter trained, BatchNorms in training mode (batch
  statistics, running averages updated). Minibatches as :func:`batch_indices`.

  Args:
    model: the model.
    optimizer: e.g. ``optax.adam(1e-3)``.
    batch_size: B.
    chunk_steps: steps per call.
    mode: ``"scan"`` (one compiled scan) or ``"loop"`` (Python loop over a compiled step;
      much faster on XLA:CPU, see :func:`make_chunk`).

  Returns:
    ``chunk(state, start, key, x, y) -> (state, metrics)`` with a :class:`PretrainState`
    (initialise with ``PretrainState(variables, optimizer.init(variables["params"]))``).
  """
  if mode not in CHUNK_MODES:
    raise ValueError(f"`mode` must be one of {CHUNK_MODES}; got {mode!r}.")

  def loss_fn(params, variables, x, y):
    logits, new_vars = models.apply(model, {**variables, "params": params}, x,
                                    output="logits", train=True, train_trunk_bn=True)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return loss, (new_vars, jnp.mean(jnp.argmax(logits, -1) == y))

  def body(st, step, key, x, y):
    idx = batch_indices(key, step, n=x.shape[0], batch_size=batch_size)
    (loss, (new_vars, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        st.variables["params"], st.variables, x[idx], y[idx])
    updates, opt_state = optimizer.update(grads, st.opt_state, st.variables["params"])
    params = optax.apply_updates(st.variables["params"], updates)
    return PretrainState({**new_vars, "params": params}, opt_state), {"loss": loss, "acc": acc}

  if mode == "scan":
    @jax.jit
    def chunk(state, start, key, x, y):
      return lax.scan(lambda st, t: body(st, t, key, x, y), state,
                      start + jnp.arange(chunk_steps))
    return chunk

  jitted = jax.jit(body)

  def loop_chunk(state, start, key, x, y):
    ms = []
    for t in range(int(start), int(start) + chunk_steps):
      state, m = jitted(state, jnp.asarray(t), key, x, y)
      ms.append(m)
    return state, stack_trees(ms)

  return loop_chunk


def pretrain(model: nn.Module, variables: dict, x, y, key: Array, *,
             optimizer: optax.GradientTransformation, batch_size: int, total_steps: int,
             chunk_steps: int, mode: str = "scan", checkpointer=None,
             on_progress=None) -> dict:
  """Supervised training of the whole model (θ0 of the stand-in), resumable.

  Args:
    model: the model.
    variables: initial variables.
    x: ``(N, H, W, C)`` images; y: ``(N,)`` int labels.
    key: PRNG key of the minibatch order.
    optimizer: an optax optimizer over ``variables["params"]``.
    batch_size, total_steps, chunk_steps, mode, checkpointer, on_progress: as
      :func:`immunize`.

  Returns:
    The trained variables (running BatchNorm statistics included).
  """
  chunk = make_pretrain_chunk(model, optimizer, batch_size=batch_size,
                              chunk_steps=chunk_steps, mode=mode)
  state = PretrainState(variables, optimizer.init(variables["params"]))
  x, y = jnp.asarray(x), jnp.asarray(y)
  final, _ = training.run_chunked(
      lambda st, start: chunk(PretrainState(*st), start, key, x, y), state,
      total_steps=total_steps, chunk_steps=chunk_steps, checkpointer=checkpointer,
      on_progress=on_progress)
  return PretrainState(*final).variables
