"""Your own network and environment for a sparse_rl agent, from Python.

A DQN whose Q-network torso is a custom Haiku module (a residual MLP with layer norm), trained with
RigL at 90% sparsity on CartPole-v1 wrapped by a user-defined reward-scaling wrapper, through
`sparse_rl.train`: the same defaults, paper schedules and run directory as `sparse-rl train`.
Run: python docs/examples/custom_network.py [--steps N] [--out DIR]
"""

import argparse

import gymnasium as gym
import haiku as hk
import jax

import sparse_rl


class ResidualTorso(hk.Module):
    """Two residual blocks of width 128; sparse_rl sparsifies every kernel it creates."""

    def __call__(self, x):
        x = jax.nn.relu(hk.Linear(128)(x))
        for _ in range(2):
            h = hk.LayerNorm(-1, create_scale=True, create_offset=True)(x)
            x = x + hk.Linear(128)(jax.nn.relu(hk.Linear(128)(h)))
        return jax.nn.relu(x)


def make_env() -> gym.Env:
    """Any callable returning a gymnasium.Env works; wrappers go here."""
    return gym.wrappers.TransformReward(gym.make("CartPole-v1"), lambda r: 0.1 * r)


def main(steps: int = 30_000, out: str = "runs/custom-network", seed: int = 0) -> sparse_rl.Run:
    run = sparse_rl.train("dqn", make_env, method="rigl", sparsity=0.9, steps=steps, seed=seed,
                          out=out, network=ResidualTorso, eval_every=max(steps // 4, 1))
    networks = sparse_rl.load(run.dir, env=make_env).networks
    print(f"final eval return {run.summary['final_eval_return']:.2f} (rewards scaled by 0.1); "
          f"Q-network layers: {sorted(run.summary['networks']['q']['layers'])}; "
          f"networks: {list(networks)}; run directory {run.dir}")
    return run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--out", default="runs/custom-network")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.out, args.seed)
