"""The command line: help texts, listing, errors reported without a traceback."""

from __future__ import annotations

import pytest

from uvireid.cli import COMMANDS, build_parser, main
from uvireid.registry import REGISTRIES


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"uvireid {command}" in out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_list_prints_every_registry_with_modules_and_docs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for plural, reg in REGISTRIES.items():
        assert f"{plural} ({len(reg)})" in out
        # this registry's section: a name (pgm, mbccm) may be a recipe and an associator
        section = out.split(f"{plural} ({len(reg)})", 1)[1].split("\n\n", 1)[0]
        for name in reg.names():
            entry = reg.entry(name)
            line = next(ln for ln in section.splitlines() if ln.strip().startswith(name + " "))
            assert entry.module in line


def test_list_one_registry(capsys):
    assert main(["list", "rerankers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rerankers (") and "datasets (" not in out


def test_wrong_device_is_an_error_at_once(capsys):
    assert main(["run", "salcr", "device=coda:1", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "device 'coda:1' is not a device; use auto, cpu, cuda or cuda:N" in err


def test_unknown_recipe_and_typo_override_are_reported(capsys):
    assert main(["run", "slacr", "--dry-run"]) == 2
    assert "did you mean 'salcr'" in capsys.readouterr().err
    assert main(["run", "salcr", "train.epoch=3", "--dry-run"]) == 2
    assert "did you mean 'train.epochs'" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_recipe(tmp_path, capsys):
    assert main(["run", "salcr", f"data.root={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"root: {tmp_path}" in out and "weight_decay: 0.0005" in out


def test_parser_builds_without_side_effects():
    parser = build_parser()
    assert parser.prog == "uvireid"


@pytest.mark.parametrize("sub", ["check", "synth"])
def test_data_subcommands_have_help_with_an_example(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", sub, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"uvireid data {sub}" in out


def test_a_misspelt_option_names_the_closest_and_v_works_after_the_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "f.npz", "--protocol", "sysu-all", "--trails", "3"])
    assert exc.value.code == 2
    assert "'--trails': did you mean '--trials'?" in capsys.readouterr().err
    assert main(["list", "rerankers", "-v"]) == 0  # as `uvireid -v list rerankers`
    assert "cmfp" in capsys.readouterr().out


def test_list_samplers_names_every_sampler_type_a_recipe_accepts(capsys):
    from uvireid.config import load_recipe
    from uvireid.registry import SAMPLERS

    assert main(["list", "samplers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("samplers (3)")
    assert SAMPLERS.names() == ["identity", "matched", "paired"]
    for name in SAMPLERS.names():
        assert f"  {name} " in out
        cfg = load_recipe("mbccm", [f"stages.1.sampler.type={name}"])
        assert cfg["stages"][1]["sampler"]["type"] == name
    assert "(MBCCM's many-to-many assignment sampler, Cheng et al., ACM MM 2023)" in out


def test_a_reader_that_has_gone_ends_the_command_quietly(monkeypatch, capsys):
    """Audit V (session 17): `uvireid list | head -1` ended in a BrokenPipeError
    traceback when head had exited."""
    import io
    import os

    class ClosedPipe(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):  # where main points stdout at devnull
            return self.fd

    r, w = os.pipe()
    pipe = ClosedPipe()
    pipe.fd = w
    monkeypatch.setattr("sys.stdout", pipe)
    try:
        assert main(["list", "rerankers"]) == 141  # 128 + SIGPIPE, as a pipe's writer
    finally:
        os.close(r)
        os.close(w)
    assert "Traceback" not in capsys.readouterr().err


def test_double_dash_ends_the_options_and_bare_words_get_the_override_message(capsys):
    """Audit V: `run demo --dry-run -- data.ids=40` was refused ("unrecognized arguments:
    --"), a bare word after an option got argparse's message, not the key=value one."""
    assert main(["run", "demo", "--dry-run", "--", "data.ids=40"]) == 0
    assert "ids: 40" in capsys.readouterr().out
    for argv in (
        ["run", "demo", "--dry-run", "data.ids"],
        ["run", "demo", "data.ids", "--dry-run"],
    ):
        assert main(argv) == 2
        assert "override 'data.ids' is not of the form key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the sub-command's usage line, not the top level's
        main(["eval", "f.npz", "--protocol", "sysu-all", "--trails", "3"])
    assert capsys.readouterr().err.startswith("usage: uvireid eval ")


def test_what_commands_print_cites_no_developer_notes(tmp_path, capsys):
    """Audit V: `list` and `data check` cited shared/notes/*.md and shared/data, which
    are not shipped."""
    from uvireid.data import check

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for source in (check._SYSU_TRAIN, check._SYSU_TEST, check._REGDB, check._LLCM, out):
        assert "shared/" not in source and ".md" not in source


def test_version_flag_prints_the_version(capsys):
    """Audit I (session 16): the first thing a bug report asks for."""
    import uvireid
    from uvireid.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"uvireid {uvireid.__version__}"


def test_manifest_versions_name_the_packages_of_installed_plugins(monkeypatch):
    """Audit I: a run with a plugin's part recorded neither the plugin nor its version."""
    import importlib.metadata as md

    from uvireid.engine import run_folder

    class _Dist:
        name, version = "zz-plugin-dist", "9.9.9"

    ep = md.EntryPoint(name="zz", value="zz_mod", group="uvireid.plugins")
    object.__setattr__(ep, "dist", _Dist())
    real = md.entry_points
    monkeypatch.setattr(
        md,
        "entry_points",
        lambda **kw: [ep] if kw.get("group") == "uvireid.plugins" else real(**kw),
    )
    assert run_folder.package_versions()["zz-plugin-dist"] == "9.9.9"


def test_faiss_loaders_info_lines_are_quiet_unless_verbose(capsys):
    """Audit FC: faiss's loader logs at INFO the CPU builds it could not load
    ("ModuleNotFoundError ... swigfaiss_avx512"), which reads as faiss's breakage."""
    import logging

    loader = logging.getLogger("faiss.loader")
    before = loader.level
    try:
        assert main(["list"]) == 0
        assert loader.level == logging.WARNING
        loader.setLevel(logging.NOTSET)
        assert main(["-v", "list"]) == 0
        assert loader.level == logging.NOTSET  # -v: left to the root's DEBUG
    finally:
        loader.setLevel(before)
        capsys.readouterr()
