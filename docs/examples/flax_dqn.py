"""A sparse DQN written with Flax: the sparsity core inside someone else's training code.

Flax's `TrainState.apply_gradients` calls `tx.update(grads, opt_state, params)`, so a `sparsify`d
optimiser drops in as `tx`; apply the initial masks once and the params stay sparse from then on.
CartPole-v1, RigL at 80% sparsity. Needs flax (`pip install "sparse_rl[examples]"`).
Run: python docs/examples/flax_dqn.py [--steps N]
"""

import argparse

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from sparse_rl.sparsity import SparsityConfig, apply_masks, get_masks, sparsify, sparsity_summary


class QNetwork(nn.Module):
    num_actions: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_actions)(x)


def main(steps: int = 20_000, seed: int = 0, learning_starts: int = 1000, batch: int = 64) -> dict:
    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    net = QNetwork(int(env.action_space.n))
    obs, _ = env.reset(seed=seed)
    params = net.init(jax.random.PRNGKey(seed), jnp.asarray(obs[None]))
    gradient_steps = max(steps - learning_starts, 1)
    config = SparsityConfig(method="rigl", sparsity=0.8, update_every=max(gradient_steps // 20, 1),
                            drop_fraction=0.5, end_step=int(0.75 * gradient_steps))
    tx = sparsify(optax.adam(1e-3), config, key=jax.random.PRNGKey(seed))
    state = TrainState.create(apply_fn=net.apply, params=params, tx=tx)
    state = state.replace(params=apply_masks(state.params, get_masks(state.opt_state)))
    target = state.params

    @jax.jit
    def update(state, target, o, a, r, o2, d):
        q_next = jnp.max(net.apply(target, o2), axis=-1)
        y = r + 0.99 * (1.0 - d) * q_next

        def loss_fn(p):
            q = jnp.take_along_axis(net.apply(p, o), a[:, None], axis=-1)[:, 0]
            return jnp.mean((q - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    greedy = jax.jit(lambda p, o: jnp.argmax(net.apply(p, o[None]), axis=-1)[0])
    size = env.observation_space.shape
    buffer = {"o": np.zeros((steps, *size), np.float32), "a": np.zeros(steps, np.int32),
              "r": np.zeros(steps, np.float32), "o2": np.zeros((steps, *size), np.float32),
              "d": np.zeros(steps, np.float32)}
    returns, episode_return = [], 0.0
    for t in range(steps):
        epsilon = max(0.05, 1.0 - t / max(steps // 2, 1))
        action = int(env.action_space.sample()) if rng.random() < epsilon else int(greedy(state.params, obs))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        for key, value in zip(buffer, (obs, action, reward, next_obs, float(terminated))):
            buffer[key][t] = value
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return = 0.0
            obs, _ = env.reset()
        if t >= learning_starts:
            idx = rng.integers(0, t + 1, batch)
            state, loss = update(state, target, *(buffer[k][idx] for k in buffer))
            if t % 500 == 0:
                target = state.params
    kernels = sparsity_summary(state.params)["layers"]
    zeros = sum(layer["total"] - layer["nonzero"] for layer in kernels.values())
    result = {"recent_return": float(np.mean(returns[-10:])) if returns else 0.0,
              "kernel_sparsity": zeros / sum(layer["total"] for layer in kernels.values())}
    print(f"mean return of the last 10 episodes {result['recent_return']:.1f}, "
          f"kernel sparsity {result['kernel_sparsity']:.3f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
