"""The ``operationId`` of every API operation: stable camelCase names for generated clients.

An id is the route function's name in camelCase (``get_version`` -> ``getVersion``), unless
:data:`NAMES` gives one: where the function's name only makes sense inside its router module
(``download`` in ``routes/blobs.py`` is ``downloadBlob``), or where two functions share a name
(``check`` in ``routes/channels.py`` and ``routes/pools.py``). A HEAD route has its own entry.

Ids are part of the API: clients generated from ``/openapi.json`` name their functions after
them. ``tests/registry/test_operation_ids.py`` snapshots them, so that renaming a route
function cannot rename an operation by accident.
"""

from __future__ import annotations

from fastapi.routing import APIRoute

# "<router module>.<function>" (or "HEAD <router module>.<function>") -> operationId
NAMES: dict[str, str] = {
    "adapters.list_adapter_versions": "listVersions",
    "adapters.yank": "yankVersion",
    "adapters.unyank": "unyankVersion",
    "admin.version": "getServerVersion",
    "admin.metrics": "getPrometheusMetrics",
    "bases.register": "registerBase",
    "bases.manifest": "getBaseManifest",
    "blobs.missing": "findMissingBlobs",
    "blobs.upload": "uploadBlob",
    "blobs.download": "downloadBlob",
    "HEAD blobs.download": "headBlob",
    "channels.promote": "promoteVersion",
    "channels.rollback": "rollbackChannel",
    "channels.history": "channelHistory",
    "channels.check": "checkVersion",
    "jobs.merged": "getMergedArtifact",
    "ops.retention": "applyRetention",
    "ops.redeliver": "redeliverDelivery",
    "pools.bind": "bindPoolChannel",
    "pools.unbind": "unbindPoolChannel",
    "pools.pin": "pinPoolVersion",
    "pools.unpin": "unpinPoolVersion",
    "pools.desired": "getDesiredSet",
    "pools.check": "checkPoolVersion",
    "fleet.heartbeat": "reportReplicaHeartbeat",
    "fleet.forget": "forgetReplica",
    "fleet.status": "getPoolStatus",
    "fleet.where": "locateVersion",
}


def operation_id(route: APIRoute) -> str:
    """``generate_unique_id_function`` of the app (UI routes get one too; they are not in the
    document)."""
    key = f"{route.endpoint.__module__.rpartition('.')[2]}.{route.name}"
    if route.methods == {"HEAD"}:
        key = f"HEAD {key}"
    return NAMES.get(key) or camel(route.name)


def camel(name: str) -> str:
    """``list_all_versions`` -> ``listAllVersions``."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)
