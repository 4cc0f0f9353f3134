"""The global batch inside a step: every replica's rows, and where this replica's start.

    z_all = distribute.all_gather(z)          # [global batch, ...], replica order
    offset = distribute.replica_offset(z)     # this replica's first row in z_all

Both are called inside `strategy.run` (a `train_step`, `eval_step` or a loss
term) and are the identity (offset 0) with one replica; under
MultiWorkerMirroredStrategy every worker must call them in the same order, as
any collective. Rows keep the order of the global batch that
`distribute.global_batches` deals (replica 0's rows first); replicas may hold
different numbers of rows (a partial last batch).

The gradient rule. Under a strategy each replica differentiates its own loss
``L_r`` and the optimizer *sums* the replicas' gradients, so the update
follows the gradient of the global loss ``L`` exactly when ``sum_r dL_r/dθ =
dL/dθ``. The parameters reach ``L`` on replica r only through r's own rows
``z_r``, so replica r must send back, into ``z_r``, its part of
``dL/dz_r``. A gathered ``Z = [z_1, ..., z_N]`` admits two consistent rules:

* ``gradient="own_slice"`` (default): every replica computes the *whole*
  global loss from ``Z`` (``L_r = L``, the same value everywhere, as on one
  device), and the gradient of ``Z`` reaches only this replica's rows:
  ``dL/dz_r = (dL/dZ)[rows of r]``; the other rows are constants here.
  Summed over replicas this is ``dL/dθ``. Without that stop, every replica
  would also push gradient into the other replicas' rows and the update
  would be N times too large.
* ``gradient="all_replicas"`` (TensorFlow's `ReplicaContext.all_gather`):
  replica r computes only its *share* ``L_r`` (the terms of its own anchors,
  divided by the global count, so that ``sum_r L_r = L``), and the
  gradient of ``Z`` is all-reduced: replica r receives ``sum_s
  (dL_s/dZ)[rows of r]``, every replica's pull on its rows. This is what the
  library's global-batch terms (`losses.NTXent`, `losses.Triplet`) do: each
  replica scores only its own anchors against the global batch, N times less
  work than the whole loss.

Pairing a loss form with the other rule is wrong by a factor (the whole loss
with "all_replicas": N times the gradient) or misses gradient (a share with
"own_slice": the pull of the other replicas' anchors on this replica's rows).
"""

from __future__ import annotations

import tensorflow as tf

GRADIENTS = ("own_slice", "all_replicas")


def _context() -> tf.distribute.ReplicaContext | None:
    """The replica context, None with one replica; fails in cross-replica context."""
    context = tf.distribute.get_replica_context()
    if context is None:
        strategy = tf.distribute.get_strategy()
        if strategy.num_replicas_in_sync == 1:
            return None
        raise RuntimeError(
            "framework.distribute.all_gather / replica_offset gather over replicas: call them inside the "
            f"step (train_step, eval_step or a loss term, which run per replica), not in the cross-replica "
            f"context of {type(strategy).__name__}."
        )
    return context if context.num_replicas_in_sync > 1 else None


def _check(value: tf.Tensor, axis: int, gradient: str | None = None) -> int:
    if gradient is not None and gradient not in GRADIENTS:
        raise ValueError(f"all_gather: gradient must be one of {GRADIENTS}, got {gradient!r}.")
    rank = value.shape.rank
    if rank is None or rank == 0:
        raise ValueError(
            f"all_gather / replica_offset need a tensor with a batch axis (rank >= 1), got shape {value.shape}."
        )
    if not -rank <= axis < rank:
        raise ValueError(f"all_gather / replica_offset: axis {axis} is out of range for shape {value.shape}.")
    return axis % rank


def _rows_before(context, sizes: tf.Tensor) -> tf.Tensor:
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return tf.reduce_sum(tf.where(tf.range(tf.shape(sizes)[0]) < replica, sizes, 0))


def _gather(context, value: tf.Tensor, axis: int, gradient: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(every replica's `value` along `axis`, the rows before this replica) under `gradient`'s rule."""
    size = tf.shape(value)[axis : axis + 1]
    own_slice = gradient == "own_slice"
    source = tf.stop_gradient(value) if own_slice else value  # own_slice: its rows come back from `value`
    if own_slice and axis == 0:  # one collective
        gathered, sizes = context.all_gather([source, size], axis=0)
    else:  # TensorFlow's gradient all-reduces every gathered input's: keep the sizes out of it
        gathered, sizes = context.all_gather(source, axis=axis), context.all_gather(size, axis=0)
    offset = _rows_before(context, sizes)
    if own_slice:
        gathered = _own_slice_only(value, gathered, offset, axis)
    return gathered, offset


def _own_slice_only(value: tf.Tensor, gathered: tf.Tensor, offset: tf.Tensor, axis: int) -> tf.Tensor:
    """`gathered` as a constant, except this replica's rows, which are `value` itself.

    A roll rather than a split at `offset`: XLA (a TPU) needs static split
    sizes, but rolls by a shift that depends on the replica.
    """
    size, total = tf.shape(value)[axis], tf.shape(gathered)[axis]
    rest = tf.tensor_scatter_nd_update(tf.shape(value), [[axis]], [total - size])
    padded = tf.concat([value, tf.zeros(rest, value.dtype)], axis=axis)  # value's rows first, then zeros
    index = tf.range(total) - offset
    own = tf.reshape((index >= 0) & (index < size), [-1 if d == axis else 1 for d in range(value.shape.rank)])
    return tf.where(own, tf.roll(padded, offset, axis=axis), tf.stop_gradient(gathered))


def all_gather(value: tf.Tensor, axis: int = 0, *, gradient: str = "own_slice") -> tf.Tensor:
    """Every replica's `value`, concatenated along `axis` in replica order: the global batch.

    Call it inside the step (per replica). With one replica it returns
    `value`. The module docstring derives the gradient rules:

    * "own_slice" (default): for a loss every replica computes whole, as on
      one device, from the gathered tensor (an NT-Xent over all pairs). The
      gradient reaches this replica's rows only; the optimizer's sum over
      replicas is then the gradient of that global loss.
    * "all_replicas": for a loss each replica computes only its share (its
      own rows' terms over the global count, e.g. `compute_loss`'s terms).
      The gradient of every replica flows to the rows' owner (summed).

    Args:
      value: a tensor whose `axis` is the batch axis; replicas may hold
        different sizes along it, the other dimensions must agree.
      axis: the batch axis.
      gradient: "own_slice" or "all_replicas", as above.

    Returns:
      The gathered tensor; `replica_offset(value, axis)` is where this
      replica's rows start in it (for labels that index the global batch).

    Raises:
      ValueError: a scalar `value`, an `axis` out of range, an unknown `gradient`.
      RuntimeError: called in cross-replica context under several replicas.
    """
    value = tf.convert_to_tensor(value)
    axis = _check(value, axis, gradient)
    context = _context()
    if context is None:
        return value
    if gradient == "all_replicas":
        return context.all_gather(value, axis=axis)
    return _gather(context, value, axis, gradient)[0]


def replica_offset(value: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """The index of this replica's first row in `all_gather(value, axis)`: an int32 scalar.

    Row i of this replica's `value` is row ``replica_offset(value) + i`` of
    the gathered batch, e.g. the label of example i in a contrastive loss
    over the global batch. 0 with one replica; with several, one small
    collective (every replica's size along `axis`).

    Args:
      value: this replica's tensor, as passed to `all_gather`.
      axis: its batch axis.

    Returns:
      An int32 scalar tensor.

    Raises:
      ValueError: a scalar `value` or an `axis` out of range.
      RuntimeError: called in cross-replica context under several replicas.
    """
    value = tf.convert_to_tensor(value)
    axis = _check(value, axis)
    context = _context()
    if context is None:
        return tf.constant(0, tf.int32)
    sizes = context.all_gather(tf.shape(value)[axis : axis + 1], axis=0)
    return _rows_before(context, sizes)


def all_gather_with_offset(
    value: tf.Tensor, axis: int = 0, *, gradient: str = "own_slice"
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(all_gather(value, axis, gradient=gradient), replica_offset(value, axis))` in one collective.

    Args, Raises: as for `all_gather`.

    Returns:
      The gathered tensor and this replica's offset in it (int32 scalar).
    """
    value = tf.convert_to_tensor(value)
    axis = _check(value, axis, gradient)
    context = _context()
    if context is None:
        return value, tf.constant(0, tf.int32)
    return _gather(context, value, axis, gradient)
