"""The sparsity core in a plain optax loop: RigL at 90% ERK sparsity on a regression MLP.

`sparsify` wraps any optax optimiser; the masks live in its state and the params stay exactly
masked after every `optax.apply_updates`. Run: python docs/examples/optax_loop.py [--steps N]
"""

import argparse

import haiku as hk
import jax
import jax.numpy as jnp
import optax

from sparse_rl.sparsity import SparsityConfig, apply_masks, get_masks, sparsify, sparsity_summary


def main(steps: int = 1000, seed: int = 0) -> dict:
    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([256, 256, 1])(x)))
    x = jax.random.normal(jax.random.PRNGKey(1), (512, 8))
    y = jnp.sin(x).sum(-1, keepdims=True)
    params = net.init(jax.random.PRNGKey(seed), x)
    config = SparsityConfig(method="rigl", sparsity=0.9, update_every=max(steps // 10, 1),
                            end_step=int(0.75 * steps))
    # The key draws the initial masks: give each seed its own (without one, sparsify warns).
    tx = sparsify(optax.adam(1e-3), config, key=jax.random.PRNGKey(seed))
    opt_state = tx.init(params)
    params = apply_masks(params, get_masks(opt_state))

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((net.apply(p, x) - y) ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state)
    kernels = sparsity_summary(params)["layers"]
    zeros = sum(layer["total"] - layer["nonzero"] for layer in kernels.values())
    result = {"loss": float(loss), "kernel_sparsity": zeros / sum(l["total"] for l in kernels.values())}
    print(f"loss {result['loss']:.4f}, kernel sparsity {result['kernel_sparsity']:.3f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.seed)
