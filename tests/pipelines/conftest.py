import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server + SQLite database (~10 s to start) for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def flow_run_artifacts(state) -> dict:
    """key -> artifact of the flow run behind `state`, read back from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, FlowRunFilterId, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # the sync client sends unset fields as null: set them all
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
            offset=0,
        )
    return {a.key: a for a in found}
