"""The fast tier (``make test-fast``, ``-m "not slow"``) never waits for a hear-eval-kit run."""

import pytest

from .conftest import HEAREVAL_RUNS


def test_every_test_using_a_heareval_run_is_slow(request: pytest.FixtureRequest) -> None:
    # In a fast run the slow tests are deselected, so none of these may be left.
    unmarked = [
        item.nodeid
        for item in request.session.items
        if HEAREVAL_RUNS.intersection(item.fixturenames) and not item.get_closest_marker("slow")
    ]
    assert unmarked == []
