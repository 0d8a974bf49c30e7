"""sparse_rl: sparse training of deep reinforcement-learning agents in JAX."""

__version__ = "0.1.0"
