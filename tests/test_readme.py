"""The README's two set-up commands stay true: CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    test_cmds = [b for b in _bash_blocks(readme) if "pytest" in b and "\n" not in b]
    assert len(test_cmds) == 1, test_cmds
    assert test_cmds[0] in ci, "the README's test command must be a line of .ci/run"


def test_readme_main_job_runs_a_recipe_that_exists():
    from uvireid.config import load_recipe

    readme = (REPO / "README.md").read_text()
    run_cmds = [b for b in _bash_blocks(readme) if "uvireid run" in b and "\n" not in b]
    assert len(run_cmds) == 1, run_cmds
    recipe = run_cmds[0].split("uvireid run", 1)[1].split()[0]
    assert load_recipe(recipe)["data"]["type"] == "synthetic"


def test_every_documented_run_command_loads_its_recipe():
    """Each ``uvireid run RECIPE [overrides] [--sweep ...]`` line of the README and of
    ``run --help`` resolves, each run of a sweep too (``train.epochs=10`` on a recipe
    with stages once did not); resumes of run folders are left out."""
    import shlex

    from uvireid.cli.run_cmd import EPILOG
    from uvireid.config import load_recipe
    from uvireid.engine.sweep import parse_sweep, variants

    readme = "\n".join(_bash_blocks((REPO / "README.md").read_text()))
    lines = [ln.split("#", 1)[0].strip() for ln in (readme + "\n" + EPILOG).splitlines()]
    commands = [ln[ln.index("uvireid run ") :] for ln in lines if "uvireid run " in ln]
    checked = 0
    for cmd in commands:
        words = shlex.split(cmd)[2:]
        if "--resume" in words or words[0].startswith("runs/") or words[0].isupper():
            continue
        recipe = str(REPO / words[0]) if "/" in words[0] else words[0]
        sweeps = [b for a, b in zip(words, words[1:]) if a == "--sweep"]
        overrides = [
            w for a, w in zip(words, words[1:]) if not w.startswith("-") and a != "--sweep"
        ]
        base = load_recipe(recipe, overrides)
        for variant in variants(base["name"], parse_sweep(sweeps)) if sweeps else []:
            load_recipe(recipe, [*overrides, *variant.overrides])  # each run of a sweep
        checked += 1
    assert checked >= 5, commands
