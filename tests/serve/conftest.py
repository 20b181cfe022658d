"""The real server the tests of this folder share (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import Live, start_live


@pytest.fixture(scope="session")
def live() -> Iterator[Live]:
    """`r1lab serve tiny:llama` on a free loopback port, stopped after the session."""
    with start_live() as server:
        yield server
