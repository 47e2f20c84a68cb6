"""``uvireid rerank`` on features files written by uvireid and by a plain numpy script."""

from __future__ import annotations

import json

import numpy as np
import pytest
from feature_fixtures import sysu_like

from uvireid.cli import main
from uvireid.features import save_features


@pytest.fixture
def numpy_file(tmp_path):
    # what another codebase would write: ten lines of numpy, no uvireid
    feats, pids, cams, modality = sysu_like()
    path = tmp_path / "other_method.npz"
    np.savez(path, feats=feats, pids=pids, cams=cams, modality=modality)
    return path


@pytest.fixture
def uvireid_file(tmp_path):
    feats, pids, cams, modality = sysu_like(1)
    return save_features(
        tmp_path / "uv.npz", feats, pids, cams, modality, dataset="sysu", split="test"
    )


def test_rerank_prints_both_tables_and_the_time(numpy_file, tmp_path, capsys):
    out = tmp_path / "rr.json"
    rc = main(
        ["rerank", str(numpy_file), "--reranker", "cmfp", "--k", "5", "--protocol",
         "sysu-all", "--trials", "2", "--json", str(out)]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "== without re-ranking ==" in text and "== with cmfp(k=5) ==" in text
    assert "re-ranking time:" in text and "over 2 trial(s)" in text
    assert "reranker: cmfp(k=5)" in text and "change: R1" in text
    doc = json.loads(out.read_text())
    assert set(doc) == {"baseline", "reranked", "summary", "failed"} and doc["failed"] == {}
    assert doc["reranked"]["cmfp(k=5)"]["rerank_calls"] == 2


def test_rerank_all_prints_a_side_by_side_table(uvireid_file, capsys):
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1", "--k", "5"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    for name in ("none", "cmfp(k=5)", "kreciprocal(", "cmrr(k=5", "aim("):
        assert name in text
    assert "time/trial" in text and "mINP" in text


def test_rerank_set_passes_keywords(uvireid_file, capsys):
    rc = main(["rerank", str(uvireid_file), "--reranker", "aim", "--set", "k1=3",
               "--set", "k2=2", "--protocol", "sysu-indoor", "--trials", "1"])  # fmt: skip
    assert rc == 0 and "aim(k1=3,k2=2)" in capsys.readouterr().out


def test_unknown_reranker_is_the_registry_error(numpy_file, capsys):
    rc = main(["rerank", str(numpy_file), "--reranker", "cmfq", "--protocol", "sysu-all"])
    err = capsys.readouterr().err
    assert rc == 2 and "did you mean 'cmfp'" in err and "available:" in err


def test_wrong_keyword_names_the_closest(numpy_file, capsys):
    rc = main(["rerank", str(numpy_file), "--reranker", "aim", "--k", "4",
               "--protocol", "sysu-all"])  # fmt: skip
    assert rc == 2 and "has no keyword 'k'" in capsys.readouterr().err


def test_features_file_missing_a_key(tmp_path, capsys):
    feats, pids, cams, _ = sysu_like()
    path = tmp_path / "bad.npz"
    np.savez(path, feats=feats, pids=pids, cams=cams)
    rc = main(["rerank", str(path), "--reranker", "cmfp", "--protocol", "sysu-all"])
    err = capsys.readouterr().err
    assert rc == 2 and "FeatureFileError" in err and "modality" in err


def test_rerank_device_is_checked_and_used(numpy_file, capsys, monkeypatch):
    """--device: the re-ranker computes there (it gets tensors on that device), the
    tables are the CPU default's; a device torch cannot use is a clear error."""
    import torch

    from uvireid.rerank.cmfp import CMFP

    args = ["rerank", str(numpy_file), "--reranker", "cmfp", "--k", "5", "--protocol",
            "sysu-all", "--trials", "1"]  # fmt: skip
    assert main(args) == 0
    default = capsys.readouterr().out
    seen = []
    rerank = CMFP.rerank

    def spy(self, query, gallery):
        seen.append(query.device.type if isinstance(query, torch.Tensor) else "numpy")
        return rerank(self, query, gallery)

    monkeypatch.setattr(CMFP, "rerank", spy)
    assert main([*args, "--device", "cpu"]) == 0
    again = capsys.readouterr().out
    assert seen == ["cpu"]
    assert again.split("re-ranking time")[0] == default.split("re-ranking time")[0]
    rc = main([*args, "--device", "gpu"])
    assert rc == 2 and "is not a device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--k", "5", "--set", "k=7"], "k is given twice: --k 5 and --set k=7"),
        (["--set", "k=7", "--k", "5"], "k is given twice: --k 5 and --set k=7"),
        (["--set", "k=7", "--set", "k=9"], "--set k= is given twice"),
    ],
)
def test_a_keyword_given_twice_is_refused_not_silently_chosen(numpy_file, capsys, flags, said):
    rc = main(["rerank", str(numpy_file), "--reranker", "cmfp", *flags, "--protocol", "sysu-all"])
    assert rc == 2 and said in capsys.readouterr().err


def test_rerank_all_keywords_go_where_they_are_meant(uvireid_file, capsys):
    """With ``all``, a plain keyword goes to every re-ranker that has it (and the command
    says which), ``NAME.KEY`` to NAME only, and a keyword that no re-ranker has is an
    error instead of being dropped."""
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1", "--k", "5", "--set", "aim.k1=3"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert "aim(k1=3,k2=1)" in text and "kreciprocal(k1=20," in text  # k1 for AIM only
    assert "cmfp(k=5)" in text and "cmrr(k=5," in text
    line = next(ln for ln in text.splitlines() if ln.startswith("keywords:"))
    assert "k -> cmfp, cmrr" in line and "k1 -> aim" in line
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--set", "kk=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "no re-ranker has a keyword 'kk'" in err and "did you mean 'k'" in err
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--set", "amm.k1=3"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "'amm' is not a registered re-ranker" in err and "aim.k1" in err
    rc = main(["rerank", str(uvireid_file), "--reranker", "cmfp", "--protocol", "sysu-all",
               "--set", "aim.k1=3"])  # fmt: skip
    assert rc == 2 and "which this command does not run" in capsys.readouterr().err


def test_rerank_all_keeps_the_other_rows_when_one_reranker_fails(
    uvireid_file, tmp_path, capsys, monkeypatch
):
    """A re-ranker refused for memory under ``all`` gets a row saying why; the baseline
    and the other re-rankers are still printed and written, and the command fails."""
    import uvireid.rerank.inputs as inputs

    monkeypatch.setattr(inputs, "available_memory", lambda device: 1000)  # the dense ones refused
    out = tmp_path / "all.json"
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1", "--json", str(out)])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 2
    rows = {ln.split()[0]: ln for ln in cap.out.splitlines() if ln[:1].isalpha()}
    assert "failed: ConfigError" in rows["cmrr(k=15,eta=0.1)"]
    assert "failed" not in rows["cmfp(k=30)"] and "failed" not in rows["none"]
    doc = json.loads(out.read_text())
    assert {"cmrr(k=15,eta=0.1)", "kreciprocal(k1=20,k2=6,lambda=0.3)"} <= set(doc["failed"])
    assert "cmfp(k=30)" in doc["reranked"] and "cmfp(k=30)" not in doc["failed"]
    assert doc["baseline"]["mean"]["mAP"] > 0
    assert "error: re-ranker cmrr(k=15,eta=0.1) failed: ConfigError" in cap.err
    assert "needs about" in cap.err


class _Buggy:
    """A plugin re-ranker with a bug in rerank."""

    name = "zz_buggy"

    def rerank(self, query, gallery):
        raise RuntimeError("plugin bug")


def test_rerank_all_keeps_the_other_rows_when_a_plugin_raises(uvireid_file, tmp_path, capsys):
    """Audit I (session 16): a plugin's own exception (not a uvireid error) ended the
    command in a traceback, and every other re-ranker's row and the JSON were lost."""
    from uvireid.registry import RERANKERS

    out = tmp_path / "all.json"
    with RERANKERS.registered("zz_buggy", _Buggy):
        rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
                   "--trials", "1", "--json", str(out)])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 2
    assert "RuntimeError: plugin bug" in cap.out and "cmfp(k=30)" in cap.out
    doc = json.loads(out.read_text())
    assert "cmfp(k=30)" in doc["reranked"]
    assert any("RuntimeError: plugin bug" in v for v in doc["failed"].values())


def test_rerank_numbers_equal_the_library_and_the_options_reach_it(uvireid_file, tmp_path, capsys):
    """The before/after numbers, the summary row and the change line equal run_protocol's
    with the same options (--shot, --stable, a NAME.KEY keyword of the one re-ranker)."""
    import re

    from uvireid.evaluation import run_protocol
    from uvireid.registry import RERANKERS

    out = tmp_path / "rr.json"
    rc = main(["rerank", str(uvireid_file), "--reranker", "cmfp", "--set", "cmfp.k=5",
               "--protocol", "sysu-all", "--trials", "2", "--shot", "multi", "--stable",
               "--json", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out.read_text())
    opts = {"trials": 2, "shot": "multi", "stable": True}
    base = run_protocol(uvireid_file, "sysu-all", **opts)
    rr = run_protocol(
        uvireid_file, "sysu-all", reranker=RERANKERS.build({"type": "cmfp", "k": 5}), **opts
    )
    single = run_protocol(uvireid_file, "sysu-all", trials=2)
    assert base.mean["mAP"] != pytest.approx(single.mean["mAP"])  # --shot matters here
    assert doc["baseline"]["mean"] == pytest.approx(base.mean)
    assert doc["baseline"]["provenance"]["ranking"] == base.provenance["ranking"]
    assert base.provenance["ranking"] != single.provenance["ranking"]  # --stable recorded
    assert list(doc["reranked"]) == ["cmfp(k=5)"]
    got = doc["reranked"]["cmfp(k=5)"]
    assert got["mean"] == pytest.approx(rr.mean)
    row = doc["summary"][1]
    assert row["reranker"] == "cmfp(k=5)"
    for k in ("R1", "mAP", "mINP"):
        assert row[k] == pytest.approx(rr.mean[k])
    assert row["seconds_per_trial"] == pytest.approx(got["rerank_seconds_total"] / 2)
    change = re.search(r"change: R1 (\S+), mAP (\S+), mINP (\S+)", text).groups()
    want = [rr.mean[k] - base.mean[k] for k in ("R1", "mAP", "mINP")]
    assert [float(c) for c in change] == pytest.approx(want, abs=0.006)
    assert any(abs(w) > 0.01 for w in want)  # the sign is visible


def test_rerank_all_a_scoped_keyword_wins_over_the_plain_one(uvireid_file, capsys):
    rc = main(["rerank", str(uvireid_file), "--reranker", "all", "--protocol", "sysu-all",
               "--trials", "1", "--k", "5", "--set", "cmfp.k=7"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0 and "cmfp(k=7)" in text and "cmrr(k=5," in text


def _regdb_split(tmp_path, split: int):
    rng = np.random.default_rng(split)
    n = 40
    return save_features(
        tmp_path / f"split{split}.npz",
        rng.normal(size=(n, 8)).astype(np.float32),
        np.repeat(np.arange(10), 4),
        np.tile([1, 2], n // 2),
        np.tile([0, 1], n // 2),
        dataset="regdb",
        split=split,
        train_split=split,
    )


def test_rerank_averages_every_regdb_split_file(tmp_path, capsys):
    """Several RegDB split files are averaged, before and after re-ranking, as the
    numbers of each file on its own averaged by hand."""
    from uvireid.evaluation import run_protocol
    from uvireid.registry import RERANKERS

    files = [_regdb_split(tmp_path, s) for s in (1, 2)]
    out = tmp_path / "rr.json"
    rc = main(["rerank", *map(str, files), "--reranker", "cmfp", "--k", "3",
               "--protocol", "regdb-v2i", "--json", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    one = [run_protocol(f, "regdb-v2i").mean["mAP"] for f in files]
    assert one[0] != pytest.approx(one[1])  # the splits differ
    assert doc["baseline"]["mean"]["mAP"] == pytest.approx(np.mean(one))
    cmfp = RERANKERS.build({"type": "cmfp", "k": 3})
    rr = [run_protocol(f, "regdb-v2i", reranker=cmfp).mean["mAP"] for f in files]
    assert doc["reranked"]["cmfp(k=3)"]["mean"]["mAP"] == pytest.approx(np.mean(rr))
