"""Joining Ray: the one place a command starts a local Ray or connects to a cluster.

Light on purpose (imports only ray): `lct curate` and `lct train` both call it before any
heavy import.
"""

from __future__ import annotations

import logging
import os

import ray


def connect(address: str | None = None, num_cpus: int | None = None, dashboard_host: str = "127.0.0.1") -> str | None:
    """Join `address` (or RAY_ADDRESS), or start a local Ray with its dashboard on `dashboard_host`.

    Reuses a Ray already initialised in this process. Returns the dashboard URL when Ray knows it.
    """
    if ray.is_initialized():
        url = ray._private.worker.get_dashboard_url()  # no public getter once connected
    else:
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            context = ray.init(address=address, logging_level=logging.WARNING)
        else:
            context = ray.init(
                num_cpus=num_cpus, include_dashboard=True, dashboard_host=dashboard_host, logging_level=logging.WARNING
            )
        url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None
