"""The README's Python examples and docs/examples/ run as written (tiny sizes where they take
arguments), so the documentation cannot drift from the code."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "docs" / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # config.json names its classes as module:Name; load finds them
    spec.loader.exec_module(module)
    return module


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_example(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples write runs/ under the working directory
    exec(compile(readme_python_blocks()[index], f"README.md python block {index}", "exec"), {})
    assert capsys.readouterr().out.strip(), "every README example prints its result"


def test_optax_loop_example():
    result = load_example("optax_loop").main(steps=200, seed=1)
    assert result["kernel_sparsity"] == pytest.approx(0.9, abs=0.005)
    assert result["loss"] < 1.0


def test_flax_dqn_example():
    pytest.importorskip("flax")
    result = load_example("flax_dqn").main(steps=400, learning_starts=100, batch=16)
    assert result["kernel_sparsity"] == pytest.approx(0.8, abs=0.005)


def test_custom_network_example(tmp_path):
    run = load_example("custom_network").main(steps=300, out=str(tmp_path / "custom"))
    assert (run.dir / "COMPLETE").is_file()
    layers = run.summary["networks"]["q"]["layers"]
    assert any(path.startswith("residual_torso/") for path in layers)
