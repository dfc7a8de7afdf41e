"""Every operation of ``/openapi.json`` has an explicit, stable, camelCase ``operationId``
(registry/api/operation_ids.py): generated clients name their functions after them, so the
list is snapshotted here and a rename has to be made on purpose, in this file too."""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import APIRoute

from registry.api.operation_ids import NAMES, camel, operation_id
from tests.fixtures.api import Api

# operationId, method, path: sorted by id. A new operation adds its line; a renamed or
# removed one breaks every generated client, and must be changed here deliberately.
SNAPSHOT = """
addWebhook           POST   /api/v1/namespaces/{ns}/webhooks
applyRetention       POST   /api/v1/retention
bindPoolChannel      PUT    /api/v1/pools/{ns}/{pool}/channels/{adapter_ns}/{name}/{channel}
cancelJob            POST   /api/v1/jobs/{job_id}/cancel
channelHistory       GET    /api/v1/adapters/{ns}/{name}/channels/{channel}/history
checkPoolVersion     GET    /api/v1/pools/{ns}/{pool}/check/{adapter_ns}/{name}/{sel}
checkVersion         GET    /api/v1/adapters/{ns}/{name}/versions/{sel}/check
collectGarbage       POST   /api/v1/gc
configureChannel     PUT    /api/v1/adapters/{ns}/{name}/channels/{channel}
controlRollout       POST   /api/v1/rollouts/{rollout_id}/{action}
createNamespace      POST   /api/v1/namespaces
createPool           POST   /api/v1/pools/{ns}
createToken          POST   /api/v1/tokens
downloadBlob         GET    /api/v1/blobs/{digest}
findMissingBlobs     POST   /api/v1/blobs/missing
forgetReplica        DELETE /api/v1/pools/{ns}/{pool}/replicas/{replica_id}
getAdapter           GET    /api/v1/adapters/{ns}/{name}
getBase              GET    /api/v1/bases/{base_id}
getBaseManifest      GET    /api/v1/bases/{base_id}/manifest
getChannel           GET    /api/v1/adapters/{ns}/{name}/channels/{channel}
getDesiredSet        GET    /api/v1/pools/{ns}/{pool}/desired
getJob               GET    /api/v1/jobs/{job_id}
getMergedArtifact    GET    /api/v1/adapters/{ns}/{name}/versions/{sel}/merged
getPool              GET    /api/v1/pools/{ns}/{pool}
getPoolStatus        GET    /api/v1/pools/{ns}/{pool}/status
getPrometheusMetrics GET    /metrics
getRollout           GET    /api/v1/rollouts/{rollout_id}
getServerVersion     GET    /api/v1/version
getVersion           GET    /api/v1/adapters/{ns}/{name}/versions/{sel}
headBlob             HEAD   /api/v1/blobs/{digest}
healthz              GET    /healthz
listAdapters         GET    /api/v1/adapters
listAllVersions      GET    /api/v1/versions
listAudit            GET    /api/v1/audit
listBases            GET    /api/v1/bases
listChannels         GET    /api/v1/adapters/{ns}/{name}/channels
listDeliveries       GET    /api/v1/webhooks/{webhook_id}/deliveries
listJobs             GET    /api/v1/jobs
listNamespaces       GET    /api/v1/namespaces
listPools            GET    /api/v1/pools
listTokens           GET    /api/v1/tokens
listVersions         GET    /api/v1/adapters/{ns}/{name}/versions
listWebhooks         GET    /api/v1/namespaces/{ns}/webhooks
locateVersion        GET    /api/v1/where/{ns}/{name}/{sel}
logMetrics           POST   /api/v1/adapters/{ns}/{name}/versions/{sel}/metrics
metricHistory        GET    /api/v1/adapters/{ns}/{name}/versions/{sel}/metrics
patchAdapter         PATCH  /api/v1/adapters/{ns}/{name}
pinPoolVersion       PUT    /api/v1/pools/{ns}/{pool}/pins/{adapter_ns}/{name}/{number}
promoteVersion       POST   /api/v1/adapters/{ns}/{name}/channels/{channel}/promote
pushVersion          POST   /api/v1/adapters/{ns}/{name}/versions
readyz               GET    /readyz
redeliverDelivery    POST   /api/v1/deliveries/{delivery_id}/redeliver
registerBase         POST   /api/v1/bases
removeWebhook        DELETE /api/v1/webhooks/{webhook_id}
reportLive           POST   /api/v1/metrics/live
reportReplicaHeartbeat PUT  /api/v1/pools/{ns}/{pool}/replicas/{replica_id}
requestMerge         POST   /api/v1/adapters/{ns}/{name}/versions/{sel}/merge
resolve              GET    /api/v1/resolve/{ns}/{target}
resolveBatch         POST   /api/v1/resolve
resolveNamespace     GET    /api/v1/resolve/{ns}
revokeToken          DELETE /api/v1/tokens/{token_id}
rollbackChannel      POST   /api/v1/adapters/{ns}/{name}/channels/{channel}/rollback
rolloutEvaluations   GET    /api/v1/rollouts/{rollout_id}/evaluations
setRetention         PUT    /api/v1/adapters/{ns}/{name}/retention
testWebhook          POST   /api/v1/webhooks/{webhook_id}/test
unbindPoolChannel    DELETE /api/v1/pools/{ns}/{pool}/channels/{adapter_ns}/{name}/{channel}
unpinPoolVersion     DELETE /api/v1/pools/{ns}/{pool}/pins/{adapter_ns}/{name}/{number}
unyankVersion        POST   /api/v1/adapters/{ns}/{name}/versions/{sel}/unyank
updatePool           PATCH  /api/v1/pools/{ns}/{pool}
uploadBlob           PUT    /api/v1/blobs/{digest}
whoami               GET    /api/v1/whoami
yankVersion          POST   /api/v1/adapters/{ns}/{name}/versions/{sel}/yank
"""


def documented(api: Api) -> list[tuple[str, str, str]]:
    spec: dict[str, Any] = api.client.get("/openapi.json").json()
    return sorted((op["operationId"], method.upper(), path)
                  for path, item in spec["paths"].items() for method, op in item.items())


def test_operation_ids_are_the_snapshot(api: Api) -> None:
    expected = [tuple(line.split()) for line in SNAPSHOT.strip().splitlines()]
    assert documented(api) == expected


def test_operation_ids_are_unique_camel_case(api: Api) -> None:
    ids = [operation for operation, _, _ in documented(api)]
    assert len(ids) == len(set(ids))
    for operation in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]*([A-Z][a-z0-9]*)*", operation), operation


def test_every_named_exception_is_used(api: Api) -> None:
    """An entry of NAMES whose route was renamed or removed would silently stop applying."""
    ids = {operation for operation, _, _ in documented(api)}
    assert set(NAMES.values()) <= ids


def test_camel_case_and_head_routes() -> None:
    assert camel("list_all_versions") == "listAllVersions"
    assert camel("healthz") == "healthz"

    def download() -> None:
        """A stand-in endpoint in a module named like a router."""

    download.__module__ = "registry.api.routes.blobs"
    head = APIRoute("/x", download, methods=["HEAD"])
    get = APIRoute("/x", download, methods=["GET"])
    assert (operation_id(head), operation_id(get)) == ("headBlob", "downloadBlob")
