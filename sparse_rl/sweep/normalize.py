"""Score normalisation for aggregates across environments.

* Atari (``ALE/<Game>-v5``, and the older ``<Game>NoFrameskip-v4`` style ids): human-normalised,
  ``(score - random) / (human - random)``, with the cited table shipped in
  ``sparse_rl/data/atari_scores.csv`` (57 games; see its header for the sources).
* Every other task: normalised by the mean final return of the *dense* runs of the same agent on the
  same environment in the same sweep, ``1 + (score - dense) / |dense|``. For a positive dense return
  this is exactly ``score / dense`` (the paper's MuJoCo normalisation); for a negative one
  (Acrobot, MountainCar) it still maps dense to 1 and keeps "higher is better", which a plain ratio
  would invert. A task whose dense mean is 0, or that has no complete dense run, cannot be
  normalised this way and is left out of the aggregates (with a note).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import re
from importlib import resources
from typing import Iterable, Mapping

__all__ = ["AtariScore", "atari_table", "atari_game", "is_atari", "human_normalized",
           "dense_normalized", "Normalizer", "build_normalizers"]

_TABLE = "atari_scores.csv"


@dataclasses.dataclass(frozen=True)
class AtariScore:
    game: str        # snake_case, as in Dopamine / DQN Zoo
    ale_name: str    # the <Game> of ALE/<Game>-v5
    random: float
    human: float


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.lru_cache(maxsize=1)
def atari_table() -> dict[str, AtariScore]:
    """The shipped table: {snake_case game name: AtariScore}, 57 games."""
    text = resources.files("sparse_rl").joinpath("data", _TABLE).read_text(encoding="utf-8")
    rows = csv.DictReader(io.StringIO("\n".join(l for l in text.splitlines()
                                                 if l.strip() and not l.startswith("#"))))
    table = {}
    for row in rows:
        table[row["game"]] = AtariScore(row["game"], row["ale_name"], float(row["random"]),
                                        float(row["human"]))
    return table


@functools.lru_cache(maxsize=1)
def _by_key() -> dict[str, AtariScore]:
    return {_key(score.game): score for score in atari_table().values()}


_ID_PATTERNS = (
    re.compile(r"^ALE/(?P<game>[A-Za-z0-9_]+?)(?:-ram)?-v\d+$"),
    re.compile(r"^(?P<game>[A-Za-z0-9_]+?)(?:-ram)?(?:NoFrameskip|Deterministic)?-v\d+$"),
    re.compile(r"^(?P<game>[A-Za-z0-9_]+)$"),
)


def atari_game(env_id: str) -> AtariScore | None:
    """The table entry of an Atari env id (``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ``pong``),
    or None when `env_id` is not one of the 57 games."""
    if not isinstance(env_id, str):
        return None
    for pattern in _ID_PATTERNS:
        match = pattern.match(env_id.strip())
        if match:
            found = _by_key().get(_key(match.group("game")))
            if found is not None:
                return found
    return None


def is_atari(env_id: str) -> bool:
    return atari_game(env_id) is not None


def human_normalized(env_id: str, score: float) -> float:
    """``(score - random) / (human - random)`` for an Atari env id or game name."""
    entry = atari_game(env_id)
    if entry is None:
        raise KeyError(f"{env_id!r} is not one of the 57 Atari games of the human-score table")
    return (float(score) - entry.random) / (entry.human - entry.random)


def dense_normalized(score: float, dense_mean: float) -> float:
    """``1 + (score - dense) / |dense|`` (= ``score / dense`` for a positive dense return)."""
    if dense_mean == 0 or not math.isfinite(dense_mean):
        raise ValueError(f"cannot normalise by a dense return of {dense_mean!r}")
    return 1.0 + (float(score) - dense_mean) / abs(dense_mean)


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """How the scores of one (agent, env) are normalised."""
    agent: str
    env: str
    suite: str            # "atari" (human-normalised) or "dense" (normalised by the sweep's dense)
    reference: float      # human - random, or the dense mean
    offset: float         # random, or the dense mean

    def __call__(self, score: float) -> float:
        if self.suite == "atari":
            return (float(score) - self.offset) / self.reference
        return 1.0 + (float(score) - self.offset) / abs(self.reference)

    @property
    def label(self) -> str:
        return "human-normalised score" if self.suite == "atari" else "score normalised by dense"


def build_normalizers(dense_means: Mapping[tuple[str, str], float],
                      tasks: Iterable[tuple[str, str]]) -> tuple[dict[tuple[str, str], Normalizer], list[str]]:
    """Normalisers for the (agent, env) `tasks`; `dense_means[(agent, env)]` is the mean final
    return of that task's complete dense runs. Returns ({task: Normalizer}, notes on the tasks
    that could not be normalised)."""
    normalizers, notes = {}, []
    for agent, env in sorted(set(tasks)):
        entry = atari_game(env)
        if entry is not None:
            normalizers[(agent, env)] = Normalizer(agent, env, "atari", entry.human - entry.random,
                                                   entry.random)
            continue
        dense = dense_means.get((agent, env))
        if dense is None:
            notes.append(f"{agent} {env}: no complete dense runs, so no dense-normalised score; "
                         "left out of the aggregates")
        elif dense == 0 or not math.isfinite(dense):
            notes.append(f"{agent} {env}: dense mean return is {dense!r}, cannot normalise by it; "
                         "left out of the aggregates")
        else:
            normalizers[(agent, env)] = Normalizer(agent, env, "dense", float(dense), float(dense))
    return normalizers, notes
