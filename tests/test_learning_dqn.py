"""Learning checks (slow): DQN on CartPole-v1 reaches 475 within 50k steps, 2 of 3 seeds."""

import pytest

from sparse_rl.cli import build_train_args
from sparse_rl.train.runner import train

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["dense", "rigl"])
def test_dqn_learns_cartpole(tmp_path, method):
    solved = 0
    for seed in range(3):
        run, config = build_train_args([
            "--env", "CartPole-v1", "--method", method, "--sparsity", "0.9", "--steps", "50000",
            "--seed", str(seed), "--out", str(tmp_path / f"s{seed}"), "--checkpoint-every", "0",
        ])
        summary = train(run, config)
        best = max(summary["eval_returns"])
        solved += best >= 475
        if solved >= 2:
            break
    assert solved >= 2, f"{method}: only {solved} of 3 seeds reached 475"
