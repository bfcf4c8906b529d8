import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server + SQLite database (~10 s to start) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
