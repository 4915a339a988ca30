"""Label-smoothed cross-entropy over the vocabulary: a plain reference and a fused, chunked path.

The plain path (`cross_entropy_sums`) takes the [batch, length, vocab] logits. The fused path
(`fused_cross_entropy_sums`) takes the decoder's final features and the output projection and
never materialises the logits: it walks over chunks of target tokens, and for each chunk
computes the logits, the loss terms and, in the same pass, the gradient of the loss with respect
to the logits, which it contracts at once into the gradients of the features and of the
projection. The backward pass then only scales those by the incoming cotangent. On a CPU this
keeps a [chunk, vocab] block in cache instead of streaming several [tokens, vocab] arrays through
memory (see benchmarks/train_step.py); the values and gradients equal the plain path's
(tests/test_losses.py).
"""

import functools

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits, targets, weights, label_smoothing: float):
  """Sums over weighted target tokens: (smoothed loss, NLL, correct predictions).

  Label smoothing mixes the one-hot target with a uniform distribution over the vocabulary:
  loss = (1 - eps) * NLL + eps * mean_v(-log p_v), computed without materialising one-hots.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  smooth = log_z - jnp.mean(logits, axis=-1)
  loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  correct = jnp.argmax(logits, axis=-1) == targets
  return (jnp.sum(loss * weights), jnp.sum(nll * weights), jnp.sum(correct * weights))


def fused_cross_entropy_sums(features, kernel, bias, targets, weights, label_smoothing: float,
                             chunk_size: int = 512, matmul_dtype=None):
  """`cross_entropy_sums` of logits = features · kernelᵀ + bias, without building the logits.

  Args:
    features: [..., d] decoder outputs (any float dtype; matmuls accumulate in float32).
    kernel: [vocab, d] output projection (the target embedding when tied).
    bias: [vocab] or None.
    targets, weights: [...] target ids and per-token weights (0 for padding).
    label_smoothing: epsilon of the smoothed loss.
    chunk_size: target tokens per chunk (the token count is padded up to a multiple of it).
    matmul_dtype: operand dtype of the three matmuls (logits, and the two gradient matmuls),
      accumulated in float32; None: the features' dtype. See `model.attention.matmul`.

  Returns (loss_sum, nll_sum, correct_sum). Only loss_sum is differentiable; the other two are
  metrics and carry no gradient (stop_gradient).
  """
  d = features.shape[-1]
  h = features.reshape(-1, d)
  t, w = targets.reshape(-1), weights.reshape(-1).astype(jnp.float32)
  pad = -h.shape[0] % chunk_size
  if pad:  # padded rows get weight 0 and so add nothing to the sums or the gradients
    h = jnp.pad(h, ((0, pad), (0, 0)))
    t, w = jnp.pad(t, (0, pad)), jnp.pad(w, (0, pad))
  has_bias = bias is not None
  b = bias if has_bias else jnp.zeros((kernel.shape[0],), jnp.float32)
  operand_dtype = jnp.dtype(matmul_dtype or h.dtype)
  loss, metrics = _fused(float(label_smoothing), int(chunk_size), has_bias, operand_dtype, h,
                         kernel, b, t, w)
  nll, correct = jax.lax.stop_gradient(metrics)
  return loss, nll, correct


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(label_smoothing, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets,
           weights):
  loss, metrics, _ = _fused_forward_and_grads(label_smoothing, chunk_size, has_bias,
                                              operand_dtype, h, kernel, bias, targets, weights)
  return loss, metrics


def _fused_fwd(label_smoothing, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets,
               weights):
  loss, metrics, grads = _fused_forward_and_grads(label_smoothing, chunk_size, has_bias,
                                                  operand_dtype, h, kernel, bias, targets,
                                                  weights)
  return (loss, metrics), grads


def _fused_bwd(label_smoothing, chunk_size, has_bias, operand_dtype, residuals, cotangents):
  del label_smoothing, chunk_size, has_bias, operand_dtype
  dh, dkernel, dbias = residuals
  scale = cotangents[0]  # the metrics' cotangents are zero: they are stop_gradient-ed outside
  return (dh * scale.astype(dh.dtype), dkernel * scale.astype(dkernel.dtype),
          dbias * scale.astype(dbias.dtype), None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _fused_forward_and_grads(label_smoothing, chunk_size, has_bias, operand_dtype, h, kernel,
                             bias, targets, weights):
  """Loss sums and d(loss_sum)/d(h, kernel, bias), one [chunk, vocab] block at a time."""
  vocab, d = kernel.shape
  eps = label_smoothing
  # XLA:CPU runs a bfloat16 dot as such only in some layouts (others in float32): the logits
  # take the kernel pre-transposed and the kernel gradient a transposed copy of g (README, Speed)
  w_in = kernel.astype(operand_dtype)  # [vocab, d]
  w_t = kernel.T.astype(operand_dtype)  # [d, vocab]
  # mean_v logits = h · mean_v(kernel) + mean(bias): no pass over the logits needed
  kernel_mean = jnp.mean(w_in.astype(jnp.float32), axis=0)  # of the kernel the logits use
  bias_mean = jnp.mean(bias.astype(jnp.float32))

  def chunk(carry, xs):
    loss_sum, nll_sum, correct_sum, dkernel, dbias = carry
    hc, tc, wc = xs
    hc_in = hc.astype(operand_dtype)
    logits = jnp.dot(hc_in, w_t, preferred_element_type=jnp.float32)
    if has_bias:
      logits = logits + bias.astype(jnp.float32)
    top = jnp.max(logits, axis=-1)
    log_z = top + jnp.log(jnp.sum(jnp.exp(logits - top[:, None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, tc[:, None], axis=-1)[:, 0]
    nll = log_z - target_logit
    mean_logit = jnp.dot(hc_in.astype(jnp.float32), kernel_mean) + bias_mean
    loss = (1.0 - eps) * nll + eps * (log_z - mean_logit)
    correct = target_logit >= top
    # d loss / d logits = w * (softmax - (1 - eps) * onehot - eps / V)
    onehot = jnp.arange(vocab)[None, :] == tc[:, None]
    g = wc[:, None] * (jnp.exp(logits - log_z[:, None]) - jnp.where(onehot, 1.0 - eps, 0.0)
                       - eps / vocab)
    if has_bias:
      dbias = dbias + jnp.sum(g, axis=0)
    dh = jnp.dot(g.astype(operand_dtype), w_in, preferred_element_type=jnp.float32)
    dkernel = dkernel + jnp.dot(g.T.astype(operand_dtype), hc_in,
                                preferred_element_type=jnp.float32)
    return (loss_sum + jnp.sum(loss * wc), nll_sum + jnp.sum(nll * wc),
            correct_sum + jnp.sum(correct * wc), dkernel, dbias), dh.astype(h.dtype)

  n = h.shape[0] // chunk_size
  xs = (h.reshape(n, chunk_size, d), targets.reshape(n, chunk_size),
        weights.reshape(n, chunk_size))
  zero = jnp.zeros((), jnp.float32)
  init = (zero, zero, zero, jnp.zeros((vocab, d), jnp.float32), jnp.zeros((vocab,), jnp.float32))
  (loss, nll, correct, dkernel, dbias), dh = jax.lax.scan(chunk, init, xs)
  grads = (dh.reshape(h.shape), dkernel.astype(kernel.dtype), dbias.astype(bias.dtype))
  return loss, (nll, correct), grads
