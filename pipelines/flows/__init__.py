"""Prefect flows of lct. Flows only orchestrate: each step is a small task that calls into
dataprep/ or training/, and the logic a task runs is a plain function importable without Prefect.

    ingest      pipelines/flows/ingest.py      films -> curated WebDataset scene shards (scheduled)
    train       pipelines/flows/train.py       curated data -> LCT checkpoint (on demand)
    end_to_end  pipelines/flows/end_to_end.py  synth -> ingest -> train -> generate -> eval -> report (`lct demo`)

`pipelines/flows/common.py` has what more than one flow needs (the Ray Jobs API client).
`pipelines/serve.py` turns the flows into deployments with schedules (`lct flows serve`);
`infra/prefect/prefect.yaml` describes the same deployments for a production work pool.
Modules are not imported here, so `import pipelines.flows` does not import Prefect.
"""
