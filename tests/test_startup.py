"""Start-up: what the training path imports (issue 15)."""

import subprocess
import sys


from sparse_rl.agents.rlax_import import DeferredModule


def imported_after(code: str) -> set[str]:
    """Top-level module names imported by a fresh interpreter after running `code`."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_training_path_does_not_import_tensorflow_probability():
    mods = imported_after("import sparse_rl.train.runner, sparse_rl.agents.dqn, sparse_rl.agents.ppo, "
                          "sparse_rl.agents.sac")
    assert "rlax" in mods
    assert "tensorflow_probability" not in mods
    for heavy in ("matplotlib", "ray", "wandb", "tyro"):
        assert heavy not in mods, heavy


def test_rlax_functions_work_and_distrax_loads_on_first_use():
    mods = imported_after(
        "from sparse_rl.agents.rlax_import import rlax\nimport jax.numpy as jnp\n"
        "assert float(rlax.q_learning(jnp.ones(3), 1, 1.0, 0.5, jnp.ones(3))) == 0.5\n"
        "import distrax\nassert type(distrax).__name__ == 'DeferredModule'\n"
        "assert rlax.softmax().probs(jnp.zeros(2)).shape == (2,)\n"
        "assert distrax.Categorical(logits=jnp.zeros(2)).probs.shape == (2,)")
    assert "tensorflow_probability" in mods


def test_deferred_module_forwards_to_the_real_module():
    import sys

    stand_in = DeferredModule("colorsys")
    saved = sys.modules.pop("colorsys", None)
    sys.modules["colorsys"] = stand_in
    try:
        assert stand_in.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
        assert sys.modules["colorsys"] is not stand_in
    finally:
        if saved is not None:
            sys.modules["colorsys"] = saved
