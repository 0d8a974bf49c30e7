"""The training loops reproduce the results recorded from release 7db19e6 (tests/data/golden.json,
written by `python -m tests.golden_regen`): every metrics column except timing, the evaluation
returns and the final non-zero parameter counts, exactly (same seed, same numbers on CPU)."""

import json

import pytest

from golden_regen import CASES, GOLDEN, GROUP, run_case, run_group

EXPECTED = json.loads(GOLDEN.read_text())


def _check(got: dict, want: dict, name: str):
    assert sorted(got["metrics"]) == sorted(want["metrics"]), name
    for column, values in want["metrics"].items():
        assert got["metrics"][column] == values, f"{name}: {column}"
    assert got["eval_returns"] == want["eval_returns"], name
    assert got["nonzero_params"] == want["nonzero_params"], name


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_run_matches_golden(name, tmp_path):
    _check(run_case(CASES[name], tmp_path / name), EXPECTED[name], name)


def test_vectorized_group_matches_golden(tmp_path):
    name, argv, seeds = GROUP
    for seed, got, want in zip(seeds, run_group(argv, seeds, tmp_path), EXPECTED[name]):
        _check(got, want, f"{name} seed {seed}")
