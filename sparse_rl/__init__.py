"""sparse_rl: sparse training of deep reinforcement-learning agents in JAX.

    import sparse_rl
    run = sparse_rl.train("dqn", "CartPole-v1", method="rigl", sparsity=0.9, steps=50_000)
    policy = sparse_rl.load(run.dir)
    returns = sparse_rl.evaluate(policy, episodes=10)

`sparse_rl.train` is also the package of training infrastructure (runner, checkpoints, metrics);
calling it runs `sparse_rl.api.train`. The API's names are imported on first use, so that
`import sparse_rl` stays light.
"""

__version__ = "0.1.0"

API = ("load", "evaluate", "record_video", "configure_run", "Run", "Policy", "Network", "Callback")


def __getattr__(name):
    if name in API:
        from sparse_rl import api

        return getattr(api, name)
    if name == "train":
        import sparse_rl.train

        return sparse_rl.train
    raise AttributeError(f"module 'sparse_rl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(API) + ["train"])
