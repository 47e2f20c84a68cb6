"""log.txt holds the run's INFO records whatever the process's logging configuration, and
the console shows during a run what it showed before."""

from __future__ import annotations

import logging

import pytest

from uvireid.engine.run_folder import RunFolder


@pytest.fixture()
def root(monkeypatch):
    """The root logger with no handlers at WARNING: a process that never configured
    logging (pytest's own capture handlers, which it adds around the test's call, are set
    aside by the test's first line: ``root.handlers.clear()``)."""
    log = logging.getLogger()
    monkeypatch.setattr(log, "handlers", list(log.handlers))
    monkeypatch.setattr(log, "level", logging.WARNING)
    pkg = logging.getLogger("uvireid")
    monkeypatch.setattr(pkg, "level", logging.NOTSET)
    logging.getLogger("uvireid.x").manager._clear_cache()
    yield log
    logging.getLogger("uvireid.x").manager._clear_cache()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _log_lines(folder: RunFolder) -> str:
    return (folder.path / "log.txt").read_text()


def test_an_unconfigured_process_gets_the_run_log_and_its_warnings_on_stderr(root, tmp_path, capfd):
    root.handlers.clear()
    folder = RunFolder.create(tmp_path, "r")
    run_log = folder.attach_log()
    log = logging.getLogger("uvireid.x")
    log.info("epoch 0 done")
    log.warning("clusters collapsed")
    logging.getLogger("other").warning("another library")
    run_log.close()
    text = _log_lines(folder)
    assert "INFO uvireid.x: epoch 0 done" in text
    assert "WARNING uvireid.x: clusters collapsed" in text
    assert "another library" in text
    err = capfd.readouterr().err
    assert "clusters collapsed" in err and "epoch 0 done" not in err  # as before the run
    # everything as it was
    assert root.handlers == [] and logging.getLogger("uvireid").level == logging.NOTSET
    log.info("after the run")
    assert "after the run" not in _log_lines(folder)


def test_a_process_configured_at_warning_keeps_its_console_and_the_file_gets_info(root, tmp_path):
    root.handlers.clear()
    mine = _Collect()
    root.addHandler(mine)
    folder = RunFolder.create(tmp_path, "r")
    run_log = folder.attach_log()
    log = logging.getLogger("uvireid.x")
    log.info("epoch 0 done")
    log.warning("clusters collapsed")
    run_log.close()
    assert "epoch 0 done" in _log_lines(folder)
    assert mine.messages == ["clusters collapsed"]
    assert mine.filters == [] and root.handlers == [mine]
    log.info("after the run")  # uvireid's level restored: not emitted at all
    assert mine.messages == ["clusters collapsed"]


def test_a_process_configured_at_info_is_left_alone(root, tmp_path):
    root.handlers.clear()
    mine = _Collect()
    root.addHandler(mine)
    root.setLevel(logging.INFO)
    folder = RunFolder.create(tmp_path, "r")
    run_log = folder.attach_log()
    assert mine.filters == [] and logging.getLogger("uvireid").level == logging.NOTSET
    logging.getLogger("uvireid.x").info("epoch 0 done")
    run_log.close()
    assert mine.messages == ["epoch 0 done"] and "epoch 0 done" in _log_lines(folder)


def test_a_metrics_record_logged_after_a_killed_write_is_kept(tmp_path):
    """Audit G (session 16): a resumed run appended its next record to the line a kill
    had cut short, so that epoch was lost as well."""
    folder = RunFolder(tmp_path)
    folder.log_metrics({"epoch": 0})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 1, "loss": {"to')  # the process was killed mid-write
    folder.log_metrics({"epoch": 2})  # the resumed run's next epoch
    folder.log_metrics({"epoch": 3})
    assert [r["epoch"] for r in folder.read_metrics()] == [0, 2, 3]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
