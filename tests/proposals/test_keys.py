"""Proposal cache folders are named ``<method>-<key>``: the same settings must keep the same key
across refactors, or every existing cache is silently recomputed. The literals below were
computed before the proposer configs became typed dataclasses (OpenCV 5.1.0 for Selective
Search, whose key includes OpenCV's version: it is pinned here)."""

from __future__ import annotations

import pytest

from rcnn.proposals import make_proposer
from rcnn.proposals import selective_search as ss


@pytest.fixture
def opencv_510(monkeypatch):
    monkeypatch.setattr(ss.cv2, "__version__", "5.1.0")


@pytest.mark.parametrize(
    ("method", "params", "key"),
    [
        ("selective_search", {}, "36700b37d709"),
        ("selective_search", {"max_boxes": 500}, "9bca32257eb0"),
        ("selective_search", {"mode": "fast", "max_boxes": 500}, "f9d7a62a3fa9"),
        ("sliding_window", {}, "72fe69567c31"),
        ("sliding_window", {"max_boxes": 500, "scales": [0.5, 1.0]}, "2c9e3fd1bc98"),
    ],
)
def test_keys_of_existing_caches_are_unchanged(opencv_510, method, params, key):
    proposer = make_proposer(method, **params)
    assert proposer.key() == key
    assert proposer.method == method and proposer.params()["method"] == method
