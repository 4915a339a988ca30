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


def rdrop_cross_entropy_sums(logits, targets, weights, label_smoothing: float, alpha: float):
  """R-Drop (Liang et al. 2021) sums from two dropout passes' logits [..., 2, vocab].

  Per target token the loss is the paper's CE(p₁) + CE(p₂) + α/2 (KL(p₁‖p₂) + KL(p₂‖p₁)) halved,
  i.e. the two passes' mean smoothed cross-entropy + α/4 of the symmetric KL, so that α = 0
  gives `cross_entropy_sums` of either pass and α means what it means in the paper. NLL and
  correct predictions are the means over the two passes.
  """
  logits = logits.astype(jnp.float32)
  pair_targets = jnp.broadcast_to(targets[..., None], logits.shape[:-1])
  pair_weights = jnp.broadcast_to(weights[..., None], logits.shape[:-1]) * 0.5
  loss, nll, correct = cross_entropy_sums(logits, pair_targets, pair_weights, label_smoothing)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  diff = log_p[..., 0, :] - log_p[..., 1, :]  # [..., vocab]
  sym_kl = jnp.sum((jnp.exp(log_p[..., 0, :]) - jnp.exp(log_p[..., 1, :])) * diff, axis=-1)
  return loss + 0.25 * alpha * jnp.sum(sym_kl * weights), nll, correct


def fused_cross_entropy_sums(
  features,
  kernel,
  bias,
  targets,
  weights,
  label_smoothing: float,
  chunk_size: int = 512,
  matmul_dtype=None,
  rdrop_alpha: float = 0.0,
):
  """`cross_entropy_sums` of logits = features · kernelᵀ + bias, without building the logits.

  Args:
    features: [..., d] decoder outputs (any float dtype; matmuls accumulate in float32).
    kernel: [vocab, d] output projection (the target embedding when tied).
    bias: [vocab] or None.
    targets, weights: [...] target ids and per-token weights (0 for padding).
    label_smoothing: epsilon of the smoothed loss.
    chunk_size: target tokens per chunk (the token count is padded up to a multiple of it).
    matmul_dtype: operand dtype of the three matmuls (logits, and the two gradient matmuls),
      accumulated in float32; None: the features' dtype. See `model.fast_ops.matmul`.
    rdrop_alpha: > 0: `rdrop_cross_entropy_sums` instead; the features are then [..., 2, d]
      (two dropout passes per target token) and the chunks hold whole pairs (an odd chunk_size
      is rounded up).

  Returns (loss_sum, nll_sum, correct_sum). Only loss_sum is differentiable; the other two are
  metrics and carry no gradient (stop_gradient).
  """
  d = features.shape[-1]
  h = features.reshape(-1, d)  # rdrop: the two passes of a token are neighbouring rows
  t, w = targets.reshape(-1), weights.reshape(-1).astype(jnp.float32)
  if rdrop_alpha:  # each pass carries half the token's weight
    t, w = jnp.repeat(t, 2), jnp.repeat(w, 2) * 0.5
    chunk_size += chunk_size % 2
  pad = -h.shape[0] % chunk_size
  if pad:  # padded rows get weight 0 and so add nothing to the sums or the gradients
    h = jnp.pad(h, ((0, pad), (0, 0)))
    t, w = jnp.pad(t, (0, pad)), jnp.pad(w, (0, pad))
  has_bias = bias is not None
  b = bias if has_bias else jnp.zeros((kernel.shape[0],), jnp.float32)
  operand_dtype = jnp.dtype(matmul_dtype or h.dtype)
  loss, metrics = _fused(
    (float(label_smoothing), float(rdrop_alpha)),
    int(chunk_size),
    has_bias,
    operand_dtype,
    h,
    kernel,
    b,
    t,
    w,
  )
  nll, correct = jax.lax.stop_gradient(metrics)
  return loss, nll, correct


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _fused(coefficients, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets, weights):
  loss, metrics, _ = _fused_forward_and_grads(
    coefficients, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets, weights
  )
  return loss, metrics


def _fused_fwd(
  coefficients, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets, weights
):
  loss, metrics, grads = _fused_forward_and_grads(
    coefficients, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets, weights
  )
  return (loss, metrics), grads


def _fused_bwd(coefficients, chunk_size, has_bias, operand_dtype, residuals, cotangents):
  del coefficients, chunk_size, has_bias, operand_dtype
  dh, dkernel, dbias = residuals
  scale = cotangents[0]  # the metrics' cotangents are zero: they are stop_gradient-ed outside
  return (
    dh * scale.astype(dh.dtype),
    dkernel * scale.astype(dkernel.dtype),
    dbias * scale.astype(dbias.dtype),
    None,
    None,
  )


_fused.defvjp(_fused_fwd, _fused_bwd)


def _fused_forward_and_grads(
  coefficients, chunk_size, has_bias, operand_dtype, h, kernel, bias, targets, weights
):
  """Loss sums and d(loss_sum)/d(h, kernel, bias), one [chunk, vocab] block at a time.

  coefficients: (label smoothing epsilon, R-Drop alpha); with alpha > 0 rows 2i and 2i + 1 are
  the two passes of one token, each weighted by 1/2 (the weights arrive repeated per pass).
  """
  vocab, d = kernel.shape
  eps, alpha = coefficients
  # XLA:CPU runs a bfloat16 dot as such only in some layouts (others in float32): the logits
  # take the kernel pre-transposed. The kernel gradient stays a plain XLA dot in either
  # orientation (XLA folds a transposed copy of g back into it); accumulated transposed,
  # [d, vocab] = hᵀ g and transposed once after the loop, it measured 8% more training tokens/s
  # on one core than gᵀ h, level on two (docs/speed.md)
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
    log_p = logits - log_z[:, None]
    probs = jnp.exp(log_p)
    onehot = jnp.arange(vocab)[None, :] == tc[:, None]
    g = probs - jnp.where(onehot, 1.0 - eps, 0.0) - eps / vocab
    if alpha:  # + alpha/4 (KL(p||q) + KL(q||p)) of each pair (p, q), split over its two rows
      sign = jnp.array([1.0, -1.0])[None, :, None]  # [1, 2, 1]: row p, row q
      p = probs.reshape(-1, 2, vocab)
      diff = sign * (log_p[0::2] - log_p[1::2])[:, None, :]  # [pairs, 2, vocab]: log p - log q
      kl = jnp.sum(p * diff, axis=-1)  # [pairs, 2]: KL(p||q), KL(q||p)
      # d KL(p||q) / d logits_p = p (log p - log q - KL(p||q)); d KL(q||p) / d logits_p = p - q
      kl_grad = p * (diff - kl[..., None]) + sign * (p[:, 0] - p[:, 1])[:, None, :]
      # each row carries half the pair's weight: row sums give alpha/4 w KL_sym and its gradient
      g = g + 0.5 * alpha * kl_grad.reshape(-1, vocab)
      loss = loss + 0.25 * alpha * jnp.repeat(jnp.sum(kl, axis=-1), 2)
    g = wc[:, None] * g
    if has_bias:
      dbias = dbias + jnp.sum(g, axis=0)
    dh = jnp.dot(g.astype(operand_dtype), w_in, preferred_element_type=jnp.float32)
    dkernel = dkernel + jnp.dot(
      hc_in.T,
      g.astype(operand_dtype),  # [d, vocab]
      preferred_element_type=jnp.float32,
    )
    return (
      loss_sum + jnp.sum(loss * wc),
      nll_sum + jnp.sum(nll * wc),
      correct_sum + jnp.sum(correct * wc),
      dkernel,
      dbias,
    ), dh.astype(h.dtype)

  n = h.shape[0] // chunk_size
  xs = (h.reshape(n, chunk_size, d), targets.reshape(n, chunk_size), weights.reshape(n, chunk_size))
  zero = jnp.zeros((), jnp.float32)
  init = (zero, zero, zero, jnp.zeros((d, vocab), jnp.float32), jnp.zeros((vocab,), jnp.float32))
  (loss, nll, correct, dkernel, dbias), dh = jax.lax.scan(chunk, init, xs)
  grads = (dh.reshape(h.shape), dkernel.T.astype(kernel.dtype), dbias.astype(bias.dtype))
  return loss, (nll, correct), grads
