"""`uvireid extract` ends with "next: uvireid eval OUT --protocol P", a command the user is
told to run next: it must work. For features of the validation ids made by weights that
trained on them (a run without data.validation, extracted with data.validation=true) the
protocols refuse the file, and the hint, printed all the same, exited 2 (audit JB); a note
says why instead, as for RegDB's cross-split files."""

from __future__ import annotations

import re

import numpy as np

import uvireid.engine.export as export_mod
from uvireid.cli import main
from uvireid.features import save_features


def _fake_export(validation: bool, train_validation: bool):
    def export_features(cfg, out, **kwargs):
        rng = np.random.default_rng(0)
        pids, cams = [], []
        for pid in range(1, 9):
            for cam in range(1, 7):
                pids += [pid, pid]
                cams += [cam, cam]
        pids, cams = np.asarray(pids), np.asarray(cams)
        modality = np.isin(cams, (3, 6)).astype(np.int64)
        feats = rng.normal(size=(len(pids), 16)).astype(np.float32)
        meta = {"dataset": "sysu", "split": "test", "protocols": ["sysu-all", "sysu-indoor"]}
        if validation:
            meta.update(
                validation=True,
                validation_ids="exp/val_id.txt",
                train_validation=train_validation,
            )
        return save_features(out, feats, pids, cams, modality, **meta)

    return export_features


def _next_command(text: str) -> list[str] | None:
    m = re.search(r"^next: uvireid (eval .*)$", text, re.M)
    return m.group(1).split() if m else None


def _extract_then_follow_hint(tmp_path, monkeypatch, capsys, **kw):
    monkeypatch.setattr(export_mod, "export_features", _fake_export(**kw))
    out = tmp_path / "f.npz"
    assert main(["extract", "demo", "--checkpoint", "none", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    hint = _next_command(printed)
    rc = None if hint is None else main(hint)
    return hint, rc, printed


def test_extract_hint_is_a_command_that_works_for_test_features(tmp_path, monkeypatch, capsys):
    # control: ordinary test features -> the hint is printed and the hinted command works
    hint, rc, _ = _extract_then_follow_hint(
        tmp_path, monkeypatch, capsys, validation=False, train_validation=False
    )
    assert hint is not None and hint[-2:] == ["--protocol", "sysu-all"]
    assert rc == 0


def test_extract_hints_no_eval_that_refuses_validation_features(tmp_path, monkeypatch, capsys):
    # validation ids by a model that trained on them: eval refuses them
    hint, rc, printed = _extract_then_follow_hint(
        tmp_path, monkeypatch, capsys, validation=True, train_validation=False
    )
    assert hint is None, (hint, rc)
    assert "note: these are the validation ids' images" in printed
