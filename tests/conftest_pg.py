"""The PostgreSQL fixtures (imported by conftest.py): one real server for the session, started
on first use by a test that asks for it, and a fresh database per test. See pg.py.

Deliberately no skip: a machine that cannot start PostgreSQL fails the tests that need it,
with the reason (the repo's rule: no test is skipped silently)."""

from __future__ import annotations

import pytest
from pg import PostgresServer, ensure_bindir


@pytest.fixture(scope="session")
def pg_server():
    """A running PostgresServer (a throw-away cluster on a unix socket), stopped at the end."""
    server = PostgresServer(ensure_bindir()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server, request) -> str:
    """`postgresql+psycopg://…` URL of a new, empty database for this test."""
    return pg_server.create_database(request.node.name)
