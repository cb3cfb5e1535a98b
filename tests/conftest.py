import pytest
from conftest_pg import pg_server, pg_url  # noqa: F401 - PostgreSQL fixtures

# --- real local model server ---
# One gemma-3-270m llama.cpp server for the whole session, started through the same code path
# the `local` provider uses (a `python -m oversight.models.local_server` child process).
# Deliberately no skip: a missing model package must fail the run, not hide the HTTP tests.


@pytest.fixture(scope="session")
def gemma_server():
    """Base URL (…/v1) of a real OpenAI-compatible server on 127.0.0.1 with 4 slots."""
    from oversight.models.local import launch_server

    server = launch_server("gemma-3-270m", ctx=1024, parallel=4, threads=2)
    try:
        yield server.base_url
    finally:
        server.stop()


def pytest_collection_modifyitems(items):
    """Tests that start the real llama.cpp server are slow (deselect with -m "not slow")."""
    for item in items:
        if "gemma_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
