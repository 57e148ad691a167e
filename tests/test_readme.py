"""The README's two quick-start commands are exactly what CI (.ci/run) runs, each in a fresh virtual environment."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_the_install_and_the_test_command():
    install, tests = quick_start_commands()
    assert install.startswith("pip install torch==2.13.0") and "una-bundle demo" in install
    assert tests.startswith("pip install torch==2.13.0") and "pytest" in tests and ".[test]" in tests


def test_ci_runs_both_commands_verbatim_in_fresh_venvs():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install, tests = quick_start_commands()
    assert tests in ci and install in ci
    venvs = [i for i, line in enumerate(ci) if "-m venv --clear" in line]
    assert len(venvs) == 2 and venvs[0] < ci.index(tests) < venvs[1] < ci.index(install)


def test_model_card_command_is_the_cpu_overlay_and_inference_matches_it():
    """One recipe: the model card trains the shipped weights with configs/train_cpu.yaml on train.yaml, states its
    network, and the inference config builds that same network."""
    import yaml

    card = (ROOT / "una_bundle" / "docs" / "README.md").read_text()
    commands = [line for line in card.splitlines() if "monai.bundle run training" in line]
    assert any("configs/train.yaml','configs/train_cpu.yaml" in line for line in commands), commands
    cpu = yaml.safe_load((ROOT / "una_bundle" / "configs" / "train_cpu.yaml").read_text())
    levels, features = cpu["network_def#levels"], cpu["network_def#features"]
    assert f"{levels} levels, {features} base features capped at {cpu['network_def#max_features']}" in card
    inference = yaml.safe_load((ROOT / "una_bundle" / "configs" / "inference.yaml").read_text())
    assert (inference["levels"], inference["features"], inference["max_features"]) == (
        levels,
        features,
        cpu["network_def#max_features"],
    )
