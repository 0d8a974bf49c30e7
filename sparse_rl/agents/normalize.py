"""Running mean / variance statistics for observation and reward normalisation.

The state is a NamedTuple of arrays (`RunningMeanStd`), so it lives inside an agent state, is
checkpointed with it and can be vmapped over seeds. Every function works on `jax.numpy` arrays
under `jit` and equally on plain numpy arrays (the env loop's reward scaling runs in numpy), since
only array methods and arithmetic are used.

`update` merges a batch with Chan et al.'s parallel formula, so feeding the data in any chunking
gives the population mean and variance of everything seen (count starts at 0, exactly).
"""

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np


class RunningMeanStd(NamedTuple):
    """Mean and (population) variance over `count` samples of arrays of a fixed shape."""

    mean: Any
    var: Any
    count: Any  # scalar float


def init(shape, xp=jnp) -> RunningMeanStd:
    """Empty statistics for samples of `shape` (mean 0, var 1, count 0): normalising is the identity."""
    shape = tuple(shape)
    return RunningMeanStd(
        mean=xp.zeros(shape, xp.float32), var=xp.ones(shape, xp.float32), count=xp.zeros((), xp.float32)
    )


def update(state: RunningMeanStd, batch) -> RunningMeanStd:
    """Statistics after also seeing `batch` [..., *shape] (all leading axes are samples)."""
    feature_ndim = state.mean.ndim
    batch = batch.astype(state.mean.dtype)
    sample_axes = tuple(range(batch.ndim - feature_ndim))
    n = 1
    for axis in sample_axes:
        n *= batch.shape[axis]
    if n == 0:
        return state
    batch_mean = batch.mean(axis=sample_axes)
    batch_var = batch.var(axis=sample_axes)
    count = state.count + n
    delta = batch_mean - state.mean
    mean = state.mean + delta * (n / count)
    m2 = state.var * state.count + batch_var * n + delta * delta * (state.count * n / count)
    var = m2 / count
    dtype = state.mean.dtype
    return RunningMeanStd(mean.astype(dtype), var.astype(dtype), count.astype(state.count.dtype))


def normalize(state: RunningMeanStd, x, clip: float | None = 10.0, eps: float = 1e-8):
    """(x - mean) / sqrt(var + eps), clipped to [-clip, clip] (clip=None: no clipping)."""
    y = (x - state.mean) / (state.var + eps) ** 0.5
    if clip is not None:
        y = y.clip(-clip, clip)
    return y


def scale(state: RunningMeanStd, x, clip: float | None = 10.0, eps: float = 1e-8):
    """x / sqrt(var + eps) (no centering, as reward scaling does), clipped to [-clip, clip]."""
    y = x / (state.var + eps) ** 0.5
    if clip is not None:
        y = y.clip(-clip, clip)
    return y


def to_numpy(state: RunningMeanStd) -> RunningMeanStd:
    return RunningMeanStd(*(np.asarray(v) for v in state))


class RewardScaling(NamedTuple):
    """Reward scaling as gymnasium's NormalizeReward: rewards divided by the running std of the
    discounted return, per env, clipped to [-clip, clip]."""

    gamma: float
    clip: float | None


def scale_rewards(scaling: RewardScaling, stats: RunningMeanStd, discounted, reward, done):
    """(stats, discounted, scaled reward) after one vector-env step, in numpy: `discounted` [N]
    float64 per-env discounted returns (reset to 0 where `done`), `stats` over their float32 values."""
    discounted = discounted * scaling.gamma + reward
    stats = update(stats, discounted.astype(np.float32))
    scaled = scale(stats, reward, scaling.clip)
    return stats, np.where(done, 0.0, discounted), scaled
