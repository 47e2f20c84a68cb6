"""Third-party parts arrive through the entry-point group ``uvireid.plugins``.

A tiny plugin distribution is built and installed (into a temporary target folder, not
into the test environment) and a fresh interpreter with it on its path must see its
parts in the registries, in ``uvireid list``, and in the registry-wide parts test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "uvireid-tinyplugin"
version = "0.1.0"

[project.entry-points."uvireid.plugins"]
tiny = "uvireid_tinyplugin"
broken = "uvireid_tinyplugin.broken"

[tool.setuptools]
packages = ["uvireid_tinyplugin"]
"""

PLUGIN = '''\
"""A tiny uvireid plugin: one re-ranker."""

import numpy as np

from uvireid.registry import RERANKERS


@RERANKERS.register("tiny_cosine")
class TinyCosine:
    """Plain cosine distance (a plugin's re-ranker)."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def rerank(self, query, gallery):
        q = np.asarray(query, dtype=np.float64)
        g = np.asarray(gallery, dtype=np.float64)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return self.scale * (1.0 - q @ g.T)
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    pkg = src / "uvireid_tinyplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN)
    (pkg / "broken.py").write_text("raise RuntimeError('this plugin is broken on purpose')\n")
    site = tmp_path_factory.mktemp("plugin_site")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "--target",
        str(site),
        str(src),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(site.glob("uvireid_tinyplugin-0.1.0.dist-info/entry_points.txt"))
    return site


def _run(args: list[str], site: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_plugin_parts_are_registered_on_import(plugin_site):
    code = textwrap.dedent("""
        import numpy as np
        import uvireid
        from uvireid.registry import RERANKERS, PLUGIN_ERRORS
        r = RERANKERS.build({"type": "tiny_cosine", "scale": 2.0})
        d = r.rerank(np.eye(2), np.eye(2))
        assert np.allclose(d, [[0, 2], [2, 0]]), d
        assert RERANKERS.entry("tiny_cosine").module == "uvireid_tinyplugin"
        print("broken:", PLUGIN_ERRORS["broken"])
    """)
    res = _run([sys.executable, "-c", code], plugin_site)
    assert res.returncode == 0, res.stderr
    assert "broken: RuntimeError: this plugin is broken on purpose" in res.stdout


def test_uvireid_list_shows_plugin_parts_and_broken_plugins(plugin_site):
    res = _run([sys.executable, "-m", "uvireid", "list"], plugin_site)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "tiny_cosine" in ln)
    assert "uvireid_tinyplugin" in line and "Plain cosine distance" in line
    assert "plugins that failed to load" in res.stdout
    assert "broken: RuntimeError" in res.stdout


def test_plugin_parts_are_tested_for_free(plugin_site):
    """The registry-wide parts test picks the plugin's re-ranker up and passes."""
    res = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(REPO / "tests" / "test_parts.py"),
            "-k",
            "tiny_cosine",
        ],
        plugin_site,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
