import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_rl.errors import ConfigError
from sparse_rl.nets import (MLP, NETWORKS, ImpalaResNet, NatureCNN, QHead, count_params,
                            make_torso, scaled_widths)


def _init(fn, x, seed=0):
    f = hk.without_apply_rng(hk.transform(fn))
    params = jax.jit(f.init)(jax.random.PRNGKey(seed), x)   # one compilation, not one per op
    return f, params


def _random_params(fn, x, seed=0):
    """Random params of the right shapes without running haiku's initialisers.

    (Compiling truncated-normal initialisers costs seconds of CPU; tests of forward passes do not
    need them.)"""
    f, shapes = _shapes(fn, x)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape).astype(np.float32)), shapes)
    return f, params


def _shapes(fn, x):
    """Parameter shapes without computing anything (fast: tracing only)."""
    f = hk.without_apply_rng(hk.transform(fn))
    return f, jax.eval_shape(f.init, jax.random.PRNGKey(0), x)


def test_mlp_torso_and_head_paths_and_counts():
    f, params = _shapes(lambda x: QHead(2)(make_torso("mlp", widths=(512, 512))(x)),
                        jnp.zeros((3, 4)))
    assert set(params) == {"mlp/~/linear_0", "mlp/~/linear_1", "q_head/~/linear"}
    assert params["mlp/~/linear_0"]["w"].shape == (4, 512)
    assert count_params(params) == 4 * 512 + 512 + 512 * 512 + 512 + 512 * 2 + 2
    assert jax.eval_shape(f.apply, params, jnp.zeros((3, 4))).shape == (3, 2)


def test_mlp_activate_final_and_activation():
    x = jnp.linspace(-3, 3, 12).reshape(3, 4)
    f, p = _init(lambda x: MLP((8, 5), activate_final=True)(x), x)
    assert np.all(np.asarray(f.apply(p, x)) >= 0)
    f, p = _random_params(lambda x: MLP((8, 5))(x), x)   # default: last layer linear
    assert np.any(np.asarray(f.apply(p, x)) < 0)
    f, p = _random_params(lambda x: MLP((8,), activation="tanh", activate_final=True)(x), x)
    assert np.all(np.abs(np.asarray(f.apply(p, x))) <= 1)
    with pytest.raises(ConfigError, match="activation"):
        _shapes(lambda x: MLP((8,), activation="nope")(x), x)


def test_width_multiplier():
    assert scaled_widths((512, 512), 0.5) == (256, 256)
    assert scaled_widths((3, 10), 0.1) == (1, 1)
    assert scaled_widths((64,), 1.3) == (83,)
    x = jnp.zeros((1, 4))
    _, p = _shapes(lambda x: MLP((512, 512), width_multiplier=0.25, activate_final=True)(x), x)
    assert p["mlp/~/linear_1"]["w"].shape == (128, 128)
    # activate_final=False: the last layer is an output layer and is not scaled
    _, p = _shapes(lambda x: MLP((512, 2), width_multiplier=0.25)(x), x)
    assert p["mlp/~/linear_1"]["w"].shape == (128, 2)
    with pytest.raises(ConfigError, match="width_multiplier"):
        scaled_widths((4,), 0.0)


def test_nature_cnn_valid_and_same():
    x = jax.ShapeDtypeStruct((2, 84, 84, 4), jnp.uint8)
    f, p = _shapes(lambda x: NatureCNN(padding="VALID")(x), x)
    assert p["nature_cnn/~/linear"]["w"].shape == (3136, 512)
    assert p["nature_cnn/~/conv_0"]["w"].shape == (8, 8, 4, 32)
    expected = (8 * 8 * 4 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64) \
        + (3136 * 512 + 512)
    assert count_params(p) == expected == 1_684_128
    assert jax.eval_shape(f.apply, p, x).shape == (2, 512)
    _, p = _shapes(lambda x: NatureCNN()(x), x)  # the paper's code: SAME (dqn_agents.py)
    assert p["nature_cnn/~/linear"]["w"].shape == (7744, 512)
    _, p = _shapes(lambda x: NatureCNN(width_multiplier=0.5, padding="VALID")(x), x)
    assert p["nature_cnn/~/linear"]["w"].shape == (7 * 7 * 32, 256)
    with pytest.raises(ConfigError, match="padding"):
        _shapes(lambda x: NatureCNN(padding="full")(x), x)


def test_nature_cnn_scales_uint8_and_leading_dims():
    # 36x36 keeps the VALID convs valid (36 -> 8 -> 3 -> 1) and the test fast
    x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 36, 36, 4), dtype=np.uint8))
    f, p = _random_params(lambda x: NatureCNN(width_multiplier=0.125, padding="VALID")(x), x)
    apply = jax.jit(f.apply)
    a = apply(p, x)
    b = apply(p, x.astype(jnp.float32) / 255.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert jax.eval_shape(f.apply, p, x[0]).shape == (64,)
    assert jax.eval_shape(f.apply, p, x.reshape(2, 1, 36, 36, 4)).shape == (2, 1, 64)


def test_impala():
    x = jax.ShapeDtypeStruct((2, 84, 84, 4), jnp.uint8)
    f, p = _shapes(lambda x: ImpalaResNet()(x), x)
    assert p["impala/~/linear"]["w"].shape == (11 * 11 * 64, 512)
    assert p["impala/~/stack_0_res_0/~/conv_0"]["w"].shape == (3, 3, 32, 32)
    n_conv = 3 * 3 * 4 * 32 + 32 + 4 * (3 * 3 * 32 * 32 + 32) \
        + 3 * 3 * 32 * 64 + 64 + 4 * (3 * 3 * 64 * 64 + 64) \
        + 3 * 3 * 64 * 64 + 64 + 4 * (3 * 3 * 64 * 64 + 64)
    assert count_params(p) == n_conv + 7744 * 512 + 512
    assert jax.eval_shape(f.apply, p, x).shape == (2, 512)
    # a real forward pass on a small input (maxpool SAME: 20 -> 10 -> 5 -> 3)
    f, p = _random_params(lambda x: ImpalaResNet(stacks=(4, 4, 4), dense=8)(x),
                          jnp.zeros((1, 20, 20, 2)))
    assert p["impala/~/linear"]["w"].shape == (3 * 3 * 4, 8)
    assert jax.jit(f.apply)(p, jnp.ones((2, 20, 20, 2), jnp.uint8)).shape == (2, 8)


def test_registry_and_callables():
    assert set(NETWORKS) == {"mlp", "nature_cnn", "impala"}
    with pytest.raises(ConfigError, match="network.*mlp, nature_cnn, impala"):
        make_torso("resnet50")

    def custom(width=7):
        return hk.Sequential([hk.Linear(width), jax.nn.relu])

    f, p = _random_params(lambda x: make_torso(custom, width=3)(x), jnp.zeros((1, 4)))
    assert f.apply(p, jnp.zeros((1, 4))).shape == (1, 3)
