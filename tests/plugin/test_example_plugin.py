"""``examples/plugin``: the documented example plugin builds, installs and works.

It is installed into a temporary target folder (never into the test environment); a
fresh interpreter with that folder on its path must see ``alpha_qe`` in the registry and
in ``uvireid list``, rank with it through ``uvireid rerank``, and pass the registry-wide
parts test. Its numerics are checked against a loop over queries.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugin"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("example_site")
    # built from a copy: setuptools writes build/ and *.egg-info next to the sources
    src = tmp_path_factory.mktemp("example_src") / "plugin"
    shutil.copytree(
        EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    cmd += ["--no-build-isolation", "--target", str(site), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(site.glob("uvireid_alpha_qe-0.1.0.dist-info/entry_points.txt"))
    return site


def _run(args: list[str], site: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _alpha_qe_loop(q: np.ndarray, g: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """The paper's alpha-QE, one query at a time: expand, then 2 - 2 cos to each gallery row."""
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = np.empty((len(q), len(g)))
    for i, row in enumerate(q):
        row = row / np.linalg.norm(row)
        sims = g @ row
        new = row.copy()
        for j in np.argsort(-sims, kind="stable")[: min(k, len(g))]:
            new += max(sims[j], 0.0) ** alpha * g[j]
        new /= np.linalg.norm(new)
        out[i] = 2.0 - 2.0 * g @ new
    return out


def test_example_plugin_reranks_as_the_papers_formula(example_site, tmp_path):
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(7, 5)), rng.normal(size=(11, 5))
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "g.npy", g)
    code = textwrap.dedent(f"""
        import numpy as np
        import uvireid
        from uvireid.registry import RERANKERS
        r = RERANKERS.build({{"type": "alpha_qe", "k": 3, "alpha": 2.0}})
        d = r.rerank(np.load({str(tmp_path / "q.npy")!r}), np.load({str(tmp_path / "g.npy")!r}))
        np.save({str(tmp_path / "d.npy")!r}, d)
        assert RERANKERS.entry("alpha_qe").module == "uvireid_alpha_qe"
        try:
            RERANKERS.build({{"type": "alpha_qe", "alfa": 3}})
        except Exception as exc:
            print("error:", exc)
    """)
    res = _run([sys.executable, "-c", code], example_site)
    assert res.returncode == 0, res.stderr
    assert np.allclose(np.load(tmp_path / "d.npy"), _alpha_qe_loop(q, g, 3, 2.0), atol=1e-12)
    assert "alpha" in res.stdout.split("error:", 1)[1]  # the closest valid keyword named


def test_example_plugin_in_list_rerank_and_the_parts_test(example_site, tmp_path):
    res = _run([sys.executable, "-m", "uvireid", "list"], example_site)
    assert res.returncode == 0, res.stderr
    line = next(ln for ln in res.stdout.splitlines() if "alpha_qe" in ln)
    assert "uvireid_alpha_qe" in line
    # uvireid rerank on a features file written by a 10-line numpy script
    from uvireid.features import save_features

    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(6), 4)
    modality = np.tile([0, 0, 1, 1], 6)
    cams = np.where(modality == 1, 3, 1) + np.tile([0, 1, 0, 3], 6)  # IR 3/6, visible 1/2
    feats = rng.normal(size=(6, 8))[pids] + 0.3 * rng.normal(size=(24, 8))
    path = save_features(tmp_path / "f.npz", feats, pids, cams, modality)
    res = _run(
        [sys.executable, "-m", "uvireid", "rerank", str(path), "--reranker", "alpha_qe"]
        + ["--set", "k=2", "--protocol", "sysu-all", "--trials", "2"],
        example_site,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== with " in res.stdout and "change: R1" in res.stdout, res.stdout
    res = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(REPO / "tests" / "test_parts.py"), "-k", "alpha_qe"],
        example_site,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout
