"""Fixture dataset folders in the real release layouts (builders: uvireid.data.fixtures)."""

from __future__ import annotations

import pytest

from uvireid.data.fixtures import make_folder_tree, make_llcm_tree, make_regdb_tree, make_sysu_tree


@pytest.fixture
def sysu_root(tmp_path):
    """Ids 1..12 (train 1,2,4,7,8,10; val 5,11; test 3,6,9,12), cams 1..6, 2 images each."""
    return make_sysu_tree(tmp_path / "SYSU-MM01", ids=12, images_per=2)


@pytest.fixture
def regdb_root(tmp_path):
    return make_regdb_tree(tmp_path / "RegDB", ids=8, images_per=2, splits=(1, 2))


@pytest.fixture
def llcm_root(tmp_path):
    return make_llcm_tree(tmp_path / "LLCM", train_ids=4, test_ids=3)


@pytest.fixture
def folder_root(tmp_path):
    return make_folder_tree(tmp_path / "mine")
