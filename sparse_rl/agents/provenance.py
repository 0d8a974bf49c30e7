"""Where every preset value comes from, and `docs/PRESETS.md` rendered from it and the presets.

The values are read from each agent's `PRESETS`, `METHOD_DEFAULTS` and weight-decay tables at render
time, so the document cannot drift from the code; this module holds only the source of each
setting and, where we deviate on purpose, why. `tests/test_presets_doc.py` checks that every preset
field has a source and that docs/PRESETS.md equals `render()`.

Sources: PAPER.md (the paper's tables and text, /work/shared/PAPER.md in this project) and
github google-research/rigl, folder rigl/rl. Gin files are cited by line (`file.gin:N`); Python
files by function and argument, e.g. `dqn_train_eval.py train_eval(learning_rate=1e-3)`. Where the
paper's table and a gin file disagree, the paper stands (PAPER.md, "The paper's code").

Regenerate the document with `python -m sparse_rl.agents.provenance > docs/PRESETS.md`.
"""

from __future__ import annotations

import dataclasses

from sparse_rl.agents import dqn, ppo, sac
from sparse_rl.sparsity import SparsityConfig

AGENTS = {"dqn": dqn, "sac": sac, "ppo": ppo}

# Shorthands for the reference files (folder rigl/rl of github google-research/rigl).
DQN_PY = "tfagents/dqn_train_eval.py"
SAC_PY = "tfagents/sac_train_eval.py"
PPO_PY = "tfagents/ppo_train_eval.py"
PPO_ACTOR = "tfagents/sparse_ppo_actor_network.py"
PPO_VALUE = "tfagents/sparse_value_network.py"
ATARI_PY = "dqn_agents.py"
DQN_GIN = "tfagents/configs/dqn_gym_dense_config.gin"
DQN_SPARSE_GIN = "tfagents/configs/dqn_gym_sparse_config.gin"
DQN_PRUNE_GIN = "tfagents/configs/dqn_gym_pruning_config.gin"
SAC_GIN = "tfagents/configs/sac_mujoco_dense_config.gin"
SAC_SPARSE_GIN = "tfagents/configs/sac_mujoco_sparse_config.gin"
PPO_GIN = "tfagents/configs/ppo_mujoco_dense_config.gin"
PPO_SPARSE_GIN = "tfagents/configs/ppo_mujoco_sparse_config.gin"
ATARI_GIN = "sparsetrain_configs/dqn_atari_dense.gin"
ATARI_RIGL_GIN = "sparsetrain_configs/dqn_atari_rigl.gin"
DOPAMINE_GIN = "Dopamine dqn.gin (included by sparsetrain_configs/dqn_atari_dense.gin:1)"

OURS = "ours (not a training setting of the paper)"
FRACTION_NOTE = ("stored as a fraction of steps / train_every so that `--steps` rescales the window; "
                 "at the paper's budget it gives the paper's absolute step")

# agent -> preset ("*" for every preset) -> setting -> (source, deliberate deviation or "").
SOURCES: dict[str, dict[str, dict[str, tuple[str, str]]]] = {
    "dqn": {
        "*": {
            "network": ("PAPER.md setup table: MLP (classic), Nature CNN (Atari)", ""),
            "widths": ("PAPER.md setup table (512-512); " + DQN_GIN + ":4", ""),
            "activation": (DQN_PY + " build_network (tf.keras.activations.relu)", ""),
            "width_multiplier": (DQN_GIN + ":10 (width = 1.0)", ""),
            "weight_decay": ("PAPER.md 'Weight decay used' (per preset and method, weight_decay_table); "
                             "applied as an L2 term on kernels: " + DQN_PY + " build_network kernel_regularizer",
                             "the paper's table (classic 1e-6) stands over " + DQN_GIN + ":9 (0.0)"),
            "n_step": (DQN_PY + " train_eval(n_step_update=1)", ""),
            "double_q": (DQN_PY + " (tf-agents DqnAgent, not DdqnAgent)", ""),
            "gamma": (DQN_PY + " train_eval(gamma=0.99)", ""),
            "mask_update_timing": (DQN_PY + " SparseDqnAgent._train: mask update before apply_gradients", ""),
            "weight_decay_table": (OURS + ": picks the PAPER.md weight-decay row", ""),
            "sparsity.method": ("PAPER.md methods; " + DQN_SPARSE_GIN + ":16 (set per run)", ""),
            "sparsity.sparsity": (DQN_SPARSE_GIN + ":11 (0.9)", ""),
            "sparsity.distribution": (DQN_SPARSE_GIN + ":9 (erdos_renyi_kernel)", ""),
            "sparsity.sparse_init": (DQN_SPARSE_GIN + ":10 (fixed_sparse_init = True); off for dense and "
                                     "pruning (METHOD_DEFAULTS)", ""),
            "sparsity.start_step": ("PAPER.md 'SET and RigL' (updates from t = 0)", ""),
            "sparsity.dense": ("PAPER.md: no layer is forced dense; " + DQN_SPARSE_GIN + ":6 "
                               "(sparse_output_layer = True)", ""),
            "sparsity.overrides": ("PAPER.md (no per-layer overrides in the main results)", ""),
            "sparsity.structure": ("PAPER.md (unstructured)", ""),
        },
        "classic": {
            "learning_rate": ("PAPER.md setup table; " + DQN_PY + " train_eval(learning_rate=1e-3)", ""),
            "adam_eps": (DQN_PY + " train_eval: tf.keras.optimizers.Adam(learning_rate) default epsilon 1e-7", ""),
            "l2_output_layer": (DQN_PY + " build_network: the output Dense has no kernel_regularizer", ""),
            "initializer": (DQN_PY + " build_network: VarianceScaling(2.0, fan_in, truncated_normal), "
                            "output RandomUniform(-0.03, 0.03), bias Constant(-0.2)", ""),
            "batch_size": ("PAPER.md setup table; " + DQN_GIN + ":6", ""),
            "loss": ("PAPER.md setup table (MSE); " + DQN_PY + " train_eval (common.element_wise_squared_loss)", ""),
            "target_update_every": ("PAPER.md setup table; " + DQN_GIN + ":5", ""),
            "replay_capacity": ("PAPER.md setup table; " + DQN_PY + " train_eval(replay_capacity=100000)", ""),
            "learning_starts": ("PAPER.md setup table; " + DQN_PY + " train_eval(initial_collect_steps=1000)", ""),
            "train_every": ("PAPER.md setup table (1 gradient step per env step); " + DQN_PY +
                            " train_eval(update_frequency=1)", ""),
            "epsilon_start": (DQN_GIN + ":12 (epsilon_greedy = 0.01, constant)", ""),
            "epsilon_end": (DQN_GIN + ":12", ""),
            "epsilon_decay_steps": (OURS + ": no decay since epsilon_start = epsilon_end", ""),
            "eval_epsilon": (DQN_PY + " train_eval: eval_actor runs agent.policy (greedy)", ""),
            "sparsity.update_every": ("PAPER.md defaults (classic DQN RigL 1000); " + DQN_SPARSE_GIN + ":18", ""),
            "sparsity.drop_fraction": ("PAPER.md defaults (classic DQN RigL 0.5)",
                                       "the paper's 0.5 stands over " + DQN_SPARSE_GIN + ":19 (0.1)"),
            "sparsity.end_step": ("PAPER.md defaults (75k); " + DQN_SPARSE_GIN + ":21",
                                  "the window is taken from schedule_end_fraction"),
            "schedule_start_fraction": ("PAPER.md pruning window 20k of 100k; " + DQN_PRUNE_GIN + ":19",
                                        FRACTION_NOTE),
            "schedule_end_fraction": ("PAPER.md 75k of 100k; " + DQN_PRUNE_GIN + ":20; " + DQN_SPARSE_GIN + ":21",
                                      FRACTION_NOTE),
        },
        "atari": {
            "learning_rate": ("PAPER.md setup table; " + ATARI_GIN + ":7", ""),
            "adam_eps": ("PAPER.md setup table (eps 1e-8); " + ATARI_GIN + ":6 (tf.train.AdamOptimizer default)", ""),
            "l2_output_layer": (ATARI_PY + " SparseDQNAgent._build_train_op: every non-bias variable", ""),
            "initializer": (ATARI_PY + " NatureDQNNetwork: Keras defaults (glorot_uniform, zero bias)", ""),
            "batch_size": ("PAPER.md setup table; " + ATARI_GIN + ":9", ""),
            "loss": ("PAPER.md setup table (Huber); " + ATARI_PY + " _build_train_op (tf1.losses.huber_loss)", ""),
            "target_update_every": ("PAPER.md setup table (8000 env steps = 2000 gradient steps at 1 per 4); "
                                    + DOPAMINE_GIN, ""),
            "replay_capacity": ("PAPER.md setup table (1M); " + DOPAMINE_GIN, ""),
            "learning_starts": ("PAPER.md setup table (20k); " + DOPAMINE_GIN, ""),
            "train_every": ("PAPER.md setup table (1 gradient step per 4 env steps); " + DOPAMINE_GIN, ""),
            "epsilon_start": (DOPAMINE_GIN + " (linearly decaying epsilon from 1.0)", ""),
            "epsilon_end": ("PAPER.md setup table (0.01 train); " + DOPAMINE_GIN, ""),
            "epsilon_decay_steps": (DOPAMINE_GIN + " (epsilon_decay_period 250000)", ""),
            "eval_epsilon": ("PAPER.md setup table (0.001 eval); " + DOPAMINE_GIN, ""),
            "mask_update_timing": (ATARI_PY + " UpdatedRigLOptimizer / UpdatedSETOptimizer: a mask update "
                                   "replaces that step's gradient step", ""),
            "sparsity.update_every": ("PAPER.md defaults (Atari 5000); " + ATARI_RIGL_GIN + ":20", ""),
            "sparsity.drop_fraction": ("PAPER.md defaults (Atari 0.3); " + ATARI_RIGL_GIN + ":22", ""),
            "sparsity.end_step": ("PAPER.md defaults (2M); " + ATARI_RIGL_GIN + ":19",
                                  "the window is taken from schedule_end_fraction"),
            "sparsity.start_step": ("PAPER.md pruning window (Atari 500k)", "the window is taken from "
                                    "schedule_start_fraction"),
            "schedule_start_fraction": ("PAPER.md pruning window 500k of 2.5M gradient steps", FRACTION_NOTE),
            "schedule_end_fraction": ("PAPER.md 2M of 2.5M gradient steps; " + ATARI_RIGL_GIN + ":16-19",
                                      FRACTION_NOTE),
        },
    },
    "sac": {
        "*": {
            "actor_network": ("PAPER.md setup table (MLP)", ""),
            "critic_network": ("PAPER.md setup table (MLP on [obs, action])", ""),
            "actor_widths": ("PAPER.md setup table; " + SAC_PY + " train_eval(actor_fc_layers=(256, 256))", ""),
            "critic_widths": ("PAPER.md setup table; " + SAC_PY + " train_eval(critic_joint_fc_layers=(256, 256))",
                              ""),
            "activation": (SAC_PY + " dense (tf.keras.activations.relu)", ""),
            "width_multiplier": (SAC_GIN + ":6 (width = 1.0)", ""),
            "log_std_min": (SAC_PY + " SparseTanhNormalProjectionNetwork (std_transform = exp, no clip)", ""),
            "log_std_max": (SAC_PY + " SparseTanhNormalProjectionNetwork (no clip)", ""),
            "reward_scale": (SAC_PY + " train_eval(reward_scale_factor=0.1)", ""),
            "actor_learning_rate": ("PAPER.md setup table; " + SAC_PY + " train_eval(actor_learning_rate=3e-4)", ""),
            "critic_learning_rate": ("PAPER.md setup table; " + SAC_PY + " train_eval(critic_learning_rate=3e-4)",
                                     ""),
            "temperature_learning_rate": ("PAPER.md setup table; " + SAC_PY + " train_eval(alpha_learning_rate=3e-4)",
                                          ""),
            "adam_eps": (SAC_PY + " train_eval: tf.keras.optimizers.Adam(learning_rate) default epsilon 1e-7", ""),
            "weight_decay": ("PAPER.md 'Weight decay used' (SAC 1e-4, RigL 1e-6; per network from its method); "
                             "L2 on every kernel: " + SAC_PY + " create_fc_layers kernel_regularizer", ""),
            "batch_size": ("PAPER.md setup table; " + SAC_PY + " train_eval(batch_size=256)", ""),
            "gamma": ("PAPER.md setup table; " + SAC_PY + " train_eval(gamma=0.99)", ""),
            "tau": ("PAPER.md setup table; " + SAC_PY + " train_eval(target_update_tau=0.005)", ""),
            "replay_capacity": ("PAPER.md setup table; " + SAC_PY + " train_eval(replay_capacity=1000000)", ""),
            "learning_starts": ("PAPER.md setup table (10k HalfCheetah and Ant, else 1k: None resolves per env); "
                                + SAC_GIN + ":4", ""),
            "train_every": ("PAPER.md setup table (1 gradient step per env step)", ""),
            "gradient_steps": ("PAPER.md setup table", ""),
            "init_temperature": (SAC_PY + " SparseSacAgent (tf-agents SacAgent initial_log_alpha = 0)", ""),
            "target_entropy": (SAC_PY + " SparseSacAgent (tf-agents default: -|A|)", ""),
            "schedule_start_fraction": ("PAPER.md pruning window 200k of 1M", FRACTION_NOTE),
            "schedule_end_fraction": ("PAPER.md 800k of 1M; " + SAC_SPARSE_GIN + ":21", FRACTION_NOTE),
        },
    },
    "ppo": {
        "*": {
            "actor_widths": ("PAPER.md setup table; " + PPO_GIN + ":4", ""),
            "value_widths": ("PAPER.md setup table; " + PPO_GIN + ":5", ""),
            "width_multiplier": (PPO_GIN + ":14 (width = 1.0)", ""),
            "adam_eps": ("PAPER.md setup table; " + PPO_PY + " train_eval (AdamOptimizer epsilon=1e-5)", ""),
            "max_grad_norm": ("PAPER.md setup table; " + PPO_PY + " train_eval(gradient_clipping=0.5), "
                              "one clip over both networks", ""),
            "weight_decay": ("PAPER.md 'Weight decay used' (PPO per method) via weight_decay_table; L2 on "
                             "kernels: " + PPO_PY + " train_eval(policy_l2_reg=value_function_l2_reg=weight_decay)",
                             "the paper's table stands over " + PPO_GIN + ":13 (0.001)"),
            "clip_value_loss": (PPO_PY + " train_eval(value_clipping=None)", ""),
            "normalize_advantages": (PPO_PY + " _normalize_advantages", ""),
            "observation_clip": ("SB3 VecNormalize / CleanRL (clip 10)",
                                 "tf-agents' own normaliser clip was not checked in this pass"),
            "reward_clip": ("tf-agents PPOAgent(reward_norm_clipping=10.0) default",
                            "not read from the file in this pass"),
            "sparsity.sparsity": (PPO_SPARSE_GIN + ":11 (0.9)", ""),
            "sparsity.distribution": (PPO_SPARSE_GIN + ":9 (erdos_renyi_kernel)", ""),
            "sparsity.sparse_init": (PPO_SPARSE_GIN + ":10 (fixed_sparse_init = True); off for dense and pruning", ""),
            "sparsity.method": ("PAPER.md methods", ""),
            "sparsity.update_every": ("PAPER.md defaults (PPO RigL 250)",
                                      "the paper's 250 stands over " + PPO_SPARSE_GIN + ":18 (1000)"),
            "sparsity.drop_fraction": ("PAPER.md defaults (PPO RigL 0.3)",
                                       "the paper's 0.3 stands over " + PPO_SPARSE_GIN + ":19 (0.1)"),
            "sparsity.start_step": ("PAPER.md pruning window (PPO 32k)", "the window is taken from "
                                    "schedule_start_fraction"),
            "sparsity.end_step": ("PAPER.md (120k); " + PPO_SPARSE_GIN + ":21", "the window is taken from "
                                  "schedule_end_fraction"),
            "sparsity.dense": ("PAPER.md: no layer is forced dense; " + PPO_SPARSE_GIN + ":5", ""),
            "sparsity.overrides": ("PAPER.md (no per-layer overrides in the main results)", ""),
            "sparsity.structure": ("PAPER.md (unstructured)", ""),
            "weight_decay_table": (OURS + ": picks the PAPER.md weight-decay row", ""),
            "schedule_start_fraction": ("PAPER.md pruning window 32k of 489 x 320 = 156,480 gradient steps",
                                        FRACTION_NOTE),
            "schedule_end_fraction": ("PAPER.md 120k of 156,480; " + PPO_SPARSE_GIN + ":21", FRACTION_NOTE),
        },
        "mujoco": {
            "network": ("PAPER.md setup table (separate MLPs)", ""),
            "activation": ("PAPER.md setup table (actor tanh); " + PPO_ACTOR + " dense_layer (tf.nn.tanh)", ""),
            "value_activation": (PPO_VALUE + " ValueNetwork(activation_fn=relu default; " + PPO_PY +
                                 " passes none)", ""),
            "initializer": (PPO_ACTOR + " dense_layer Orthogonal(), means_layers VarianceScaling(scale=0.1); "
                            + PPO_VALUE + " hidden Orthogonal() (" + PPO_PY + "), output U(-0.03, 0.03)", ""),
            "init_std": (PPO_ACTOR + " std_layers (softplus bias log(exp(0.35) - 1))", ""),
            "std_transform": (PPO_ACTOR + " create_dist (tf.math.softplus)", ""),
            "squash_mean": (PPO_ACTOR + " tanh_and_scale_to_spec", ""),
            "num_envs": (PPO_PY + " train_eval (num_environments = 1)", ""),
            "rollout_length": ("PAPER.md setup table (2048); " + PPO_PY + " train_eval(collect_sequence_length=2048)",
                               ""),
            "epochs": ("PAPER.md setup table; " + PPO_GIN + ":16", ""),
            "minibatch_size": ("PAPER.md setup table; " + PPO_PY + " train_eval(minibatch_size=64)", ""),
            "learning_rate": ("PAPER.md setup table; " + PPO_PY + " train_eval(learning_rate=3e-4)", ""),
            "anneal_learning_rate": ("PAPER.md setup table (linearly decayed); " + PPO_PY + " learning_rate_fn",
                                     "decayed per gradient step; the reference decays per iteration"),
            "clip_epsilon": ("PAPER.md setup table; " + PPO_PY + " train_eval(importance_ratio_clipping=0.2)", ""),
            "value_coef": (PPO_PY + " train_eval(value_pred_loss_coef=0.5)", ""),
            "entropy_coef": (PPO_PY + " train_eval(entropy_regularization=0.)", ""),
            "gamma": (PPO_PY + " train_eval(discount_factor=0.99)", ""),
            "gae_lambda": ("PAPER.md setup table; " + PPO_PY + " train_eval(lambda_value=0.95)", ""),
            "normalize_observations": ("tf-agents PPOClipAgent default (normalize_observations=True)", ""),
            "normalize_rewards": ("tf-agents PPOClipAgent default (normalize_rewards=True)", ""),
            "deterministic_evaluation": (PPO_PY + " train_eval: eval_actor runs agent.policy (greedy)", ""),
        },
        "classic": {
            **{name: ("rl-zoo PPO CartPole-v1 hyperparameters", "the paper ran no PPO on classic control")
               for name in ("network", "activation", "value_activation", "num_envs", "rollout_length", "epochs",
                            "minibatch_size", "learning_rate", "anneal_learning_rate", "clip_epsilon",
                            "value_coef", "entropy_coef", "gamma", "gae_lambda", "normalize_observations",
                            "normalize_rewards", "deterministic_evaluation")},
            **{name: ("CleanRL / SB3 PPO", "the paper ran no PPO on classic control")
               for name in ("initializer", "init_std", "std_transform", "squash_mean")},
        },
        "atari": {
            **{name: ("CleanRL ppo_atari.py", "the paper ran no PPO on Atari")
               for name in ("network", "activation", "value_activation", "num_envs", "rollout_length", "epochs",
                            "minibatch_size", "learning_rate", "anneal_learning_rate", "clip_epsilon",
                            "value_coef", "entropy_coef", "gamma", "gae_lambda", "normalize_observations",
                            "normalize_rewards", "deterministic_evaluation", "initializer", "init_std",
                            "std_transform", "squash_mean")},
        },
    },
}

# SAC's two sparsity configs share their sources.
for _prefix in ("actor_sparsity", "critic_sparsity"):
    SOURCES["sac"]["*"].update({
        f"{_prefix}.method": ("PAPER.md methods; " + SAC_SPARSE_GIN + ":7-9", ""),
        f"{_prefix}.sparsity": (SAC_SPARSE_GIN + ":14 (0.9)", ""),
        f"{_prefix}.distribution": (SAC_SPARSE_GIN + ":12 (erdos_renyi_kernel; ERK per network)", ""),
        f"{_prefix}.update_every": ("PAPER.md defaults (SAC RigL 1000, SET 250); " + SAC_SPARSE_GIN + ":18", ""),
        f"{_prefix}.drop_fraction": ("PAPER.md defaults (SAC RigL 0.5, SET 0.3)",
                                     "the paper's value stands over " + SAC_SPARSE_GIN + ":19 (0.1)"),
        f"{_prefix}.start_step": ("PAPER.md 'SET and RigL' (updates from t = 0)", ""),
        f"{_prefix}.end_step": ("PAPER.md (800k); " + SAC_SPARSE_GIN + ":21",
                                "the window is taken from schedule_end_fraction"),
        f"{_prefix}.sparse_init": (SAC_SPARSE_GIN + ":13 (fixed_sparse_init = True); off for dense and pruning", ""),
        f"{_prefix}.dense": ("PAPER.md: no layer is forced dense; " + SAC_SPARSE_GIN + ":6", ""),
        f"{_prefix}.overrides": ("PAPER.md (no per-layer overrides in the main results)", ""),
        f"{_prefix}.structure": ("PAPER.md (unstructured)", ""),
    })
for _prefix in ("actor_sparsity", "value_sparsity"):
    SOURCES["ppo"]["*"].update({f"{_prefix}.{k[len('sparsity.'):]}": v
                                for k, v in SOURCES["ppo"]["*"].items() if k.startswith("sparsity.")})
for _key in [k for k in SOURCES["ppo"]["*"] if k.startswith("sparsity.")]:
    del SOURCES["ppo"]["*"][_key]


def flat_settings(config) -> dict[str, object]:
    """{setting: value} of an agent config, sparsity configs expanded to `field.subfield`."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, SparsityConfig):
            for sub in dataclasses.fields(value):
                out[f"{field.name}.{sub.name}"] = getattr(value, sub.name)
        else:
            out[field.name] = value
    return out


def source(agent: str, preset: str, setting: str) -> tuple[str, str] | None:
    table = SOURCES[agent]
    return table.get(preset, {}).get(setting) or table.get("*", {}).get(setting)


def missing_sources() -> list[str]:
    """`agent/preset/setting` of every preset setting without a source (empty when complete)."""
    return [f"{agent}/{preset}/{name}"
            for agent, module in AGENTS.items() for preset, config in module.PRESETS.items()
            for name in flat_settings(config) if source(agent, preset, name) is None]


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + (",)" if len(value) == 1 else ")")
    return str(value)


def _method_tables(agent: str, module) -> list[str]:
    lines = []
    defaults = getattr(module, "METHOD_DEFAULTS", {})
    for preset, per_method in defaults.items():
        lines += ["", f"Per-method defaults, preset `{preset}` (applied when `--method` changes the method):", "",
                  "| method | settings |", "|---|---|"]
        for method, values in per_method.items():
            settings = ", ".join(f"{k}={_value(v)}" for k, v in values.items()) or "(none)"
            lines.append(f"| {method} | {settings} |")
    return lines


WEIGHT_DECAY_TABLES = {
    "dqn": {"classic": dqn.CLASSIC_WEIGHT_DECAY, "atari": dqn.ATARI_WEIGHT_DECAY},
    "sac": {"mujoco": sac.WEIGHT_DECAY},
    "ppo": dict(ppo.WEIGHT_DECAY_TABLES),
}


def render() -> str:
    lines = [
        "# Preset provenance",
        "",
        "Generated by `python -m sparse_rl.agents.provenance > docs/PRESETS.md` from the presets",
        "themselves and the sources in `sparse_rl/agents/provenance.py`; `tests/test_presets_doc.py`",
        "fails when this file and the code disagree or a preset setting has no source.",
        "",
        "Sources: PAPER.md is the paper's tables and text as this project records them; file names are",
        "in github google-research/rigl, folder rigl/rl (gin files cited by line, Python files by function",
        "and argument). Where the paper's table and a gin file disagree, the table stands. A deviation",
        "column entry is a deliberate difference from the source, with the reason.",
        "",
        "Mechanics that are not preset values but follow the same sources: weight decay is an L2 term",
        "`wd * sum(w^2)` over kernels added to the loss (not decoupled AdamW); sparse initialisation",
        "counts conv fans over (kh, kw, in) / (kh, kw, out) and re-draws every sparsified kernel, also one",
        "ERK left dense (rigl_tf2 init_utils.py unit_scaled_init_tf1 via rl/sparse_utils.py init_masks);",
        "static masks have exactly floor(s * N) zeros per layer; the Nature CNN pads SAME",
        "(dqn_agents.py NatureDQNNetwork).",
    ]
    for agent, module in AGENTS.items():
        lines += ["", f"## {agent.upper()}"]
        for preset, config in module.PRESETS.items():
            lines += ["", f"### preset `{preset}`", "", "| setting | value | source | deliberate deviation |",
                      "|---|---|---|---|"]
            for name, value in flat_settings(config).items():
                src, note = source(agent, preset, name) or ("MISSING", "")
                lines.append(f"| {name} | {_cell(_value(value))} | {_cell(src)} | {_cell(note)} |")
        lines += _method_tables(agent, module)
        lines += ["", "Weight decay by method (PAPER.md 'Weight decay used'; `default` covers the rest):", "",
                  "| table | values |", "|---|---|"]
        for table, values in WEIGHT_DECAY_TABLES[agent].items():
            lines.append(f"| {table} | " + ", ".join(f"{k}: {_value(v)}" for k, v in values.items()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
