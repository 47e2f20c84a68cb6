"""uvireid match --figure's drawing (viz.ranking.plot_matches): its geometry, captions,
ids and title, read back from the matplotlib objects (audit EC)."""

from __future__ import annotations

import numpy as np
import pytest

from uvireid.viz import ranking


def _grab(monkeypatch):
    seen = {}

    def grab(fig, path, dpi):
        seen.update(fig=fig, dpi=dpi)
        return path

    monkeypatch.setattr(ranking, "save", grab)
    return seen


def _texts(fig):
    return [(t.get_text(), t.get_color()) for t in fig.axes[0].texts]


def test_match_figure_geometry_is_the_ranking_figures(monkeypatch, tmp_path):
    seen = _grab(monkeypatch)
    index, dist = np.array([[0, 1], [1, 0]]), np.array([[0.1, 0.2], [0.3, 0.4]])
    ranking.plot_matches(["q1.png", "q2.png"], ["a.png", "b.png"], index, dist, tmp_path / "m.png")
    fig = seen["fig"]
    width, height = ranking.ranking_figsize(2, 2)
    assert tuple(fig.get_size_inches()) == pytest.approx((width, height))
    assert seen["dpi"] == ranking.DPI
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    assert not isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    (ax,) = fig.axes
    assert ax.get_position().bounds == pytest.approx(
        (
            ranking.LABEL_WIDTH / width,
            0.0,
            1.0 - ranking.LABEL_WIDTH / width,
            1.0 - ranking.TITLE_HEIGHT / height,
        )
    )
    assert not ax.axison
    assert ax.texts and all(not t.get_clip_on() for t in ax.texts)
    assert fig._suptitle.get_position()[1] == pytest.approx(1.0 - 0.05 / height)
    # no title given: the default one
    assert fig.get_suptitle().startswith("Top matches\n2 queries")


def test_identity_zero_is_an_identity(monkeypatch, tmp_path):
    seen = _grab(monkeypatch)
    ranking.plot_matches(["q.png"], ["a.png", "b.png"], np.array([[0, 1]]),
                         np.array([[0.1, 0.2]]), tmp_path / "m.png",
                         query_pids=np.array([0]), gallery_pids=np.array([0, 1]))  # fmt: skip
    texts = _texts(seen["fig"])
    assert texts[0] == ("query id 0", ranking.COLORS["query"])
    assert ("1: 0.1", ranking.COLORS["correct"]) in texts
    assert ("2: 0.2", ranking.COLORS["wrong"]) in texts
    assert "rank-1 same id 1/1" in " ".join(seen["fig"].get_suptitle().split())


def test_a_long_query_file_name_is_shortened_in_its_caption(monkeypatch, tmp_path):
    seen = _grab(monkeypatch)
    q = str(tmp_path / "a_very_long_file_name_0001.png")
    ranking.plot_matches([q], ["a.png"], np.array([[0]]), np.array([[0.1]]), tmp_path / "m.png")
    assert _texts(seen["fig"])[0][0] == "query a_very..01.png"


def test_ids_of_one_side_only_colour_nothing(monkeypatch, tmp_path):
    seen = _grab(monkeypatch)
    ranking.plot_matches(["q.png"], ["a.png"], np.array([[0]]), np.array([[0.1]]),
                         tmp_path / "m.png", query_pids=np.array([3]))  # fmt: skip
    assert ("1: 0.1", "#969696") in _texts(seen["fig"])
    assert "rank-1" not in seen["fig"].get_suptitle()


def test_no_rank1_count_when_no_query_id_is_known(monkeypatch, tmp_path):
    # uvireid match on a run's own images: every pid is -1 (unknown), arrays still given
    seen = _grab(monkeypatch)
    ranking.plot_matches(["q.png"], ["a.png"], np.array([[0]]), np.array([[0.1]]),
                         tmp_path / "m.png", query_pids=np.array([-1]),
                         gallery_pids=np.array([-1]))  # fmt: skip
    assert "rank-1" not in seen["fig"].get_suptitle()


def test_an_image_too_large_to_open_is_a_grey_tile(monkeypatch, tmp_path):
    from PIL import Image

    def bomb(*a, **kw):
        raise Image.DecompressionBombError("Image size (200000000 pixels) exceeds limit")

    monkeypatch.setattr(Image, "open", bomb)
    assert ranking._thumb_file(tmp_path / "huge.png") is None


def test_the_title_of_a_narrow_figure_fits_in_it(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(ranking, "save", lambda fig, path, dpi: seen.update(fig=fig) or path)
    title = (
        "runs/salcr-20261126-101500/features.npz: infrared queries, visible gallery, re-ranker none"
    )
    ranking.plot_matches(["q.png"], ["a.png"], np.array([[0]]), np.array([[0.1]]),
                         tmp_path / "m.png", title=title)  # fmt: skip
    fig = seen["fig"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # --top 1: the title was cut both sides
