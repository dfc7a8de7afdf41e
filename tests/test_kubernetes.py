"""deploy/kubernetes: the kustomize base and the production overlay.

Rendered by ``kustomize build`` (or ``kubectl kustomize``) when one is installed, else by the
small renderer below, which knows exactly the kustomize features these manifests use; when
both are there, a test proves they agree. Every rendered object is validated against the
Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail) and the
ServiceMonitor against the Prometheus Operator's CRD (as generated models). Then what no
schema sees: every selector, name and key reference resolves, the images are the Dockerfile's
targets, the commands parse in the real CLI (and the Job, CronJob and init-container ones run
against real PostgreSQL and a real API process), the probes are real routes, and the worker's
termination grace outlasts its job lease.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import kubernetes_validate
import psycopg
import pytest
import yaml
from sqlalchemy import func, select, update

from registry.blobs import LocalBlobStore
from registry.config import Settings
from registry.db import make_engine, make_session_factory, transaction
from registry.models import Adapter, AdapterVersion
from registry.services import bases, tokens, versions
from registry.services.context import Actor
from registry.services.versions import PushRequest
from tests.cli.helpers import run
from tests.conftest import PgDatabases
from tests.fixtures.adapters import adapter_files, store_files
from tests.fixtures.server import LiveServer, base_env
from tests.registry.test_bases import entries, registration
from tests.registry.test_gc import age, put
from tests.test_deployment import open_dockerfile_cmd

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
TREES = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
# The oldest Kubernetes we claim (autoscaling/v2, policy/v1, batch/v1 CronJob, seccompProfile
# are all GA well before it) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
CRD_GROUPS = ("monitoring.coreos.com/",)
WORKLOADS = {"Deployment", "Job", "CronJob"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"


# --- rendering ------------------------------------------------------------------------------

RENDERABLE = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas",
              "patches", "configMapGenerator"}
#: Lists that strategic merge patches merge item by item on ``name`` (the rest are replaced).
MERGED_BY_NAME = {"containers", "initContainers", "volumes", "env"}


def load_all(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_one(path: Path) -> Obj:
    (doc,) = load_all(path)
    return doc


def render(tree: Path) -> list[Obj]:
    """What ``kustomize build tree`` prints, for the features these manifests use."""
    spec = load_one(tree / "kustomization.yaml")
    unknown = set(spec) - RENDERABLE
    assert not unknown, f"{tree}: the fallback renderer cannot apply {sorted(unknown)}"
    objects = [obj for entry in spec.get("resources", [])
               for obj in (render(tree / entry) if (tree / entry).is_dir()
                           else load_all(tree / entry))]
    objects += [generated_config_map(tree, gen) for gen in spec.get("configMapGenerator", [])]
    for patch in spec.get("patches", []):
        apply_patch(objects, load_one(tree / patch["path"]))
    for obj in objects:
        transform(obj, spec)
    return objects


def generated_config_map(tree: Path, generator: Obj) -> Obj:
    assert set(generator) <= {"name", "files", "options"}, generator
    # kustomize's name hash is not reimplemented here: the generators must switch it off.
    assert generator["options"]["disableNameSuffixHash"] is True, generator
    data = {Path(name).name: (tree / name).read_text() for name in generator["files"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]},
            "data": data}


def apply_patch(objects: list[Obj], patch: Obj) -> None:
    """A strategic merge patch onto the one object of its kind and name."""
    hits = [i for i, obj in enumerate(objects) if key(obj)[:2] == key(patch)[:2]]
    assert len(hits) == 1, f"patch {key(patch)} matches {len(hits)} objects"
    objects[hits[0]] = merge(objects[hits[0]], patch)


def merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merge(base[k], v, k) if k in base else v
                           for k, v in patch.items()}}
    if field in MERGED_BY_NAME and isinstance(base, list):
        items = {item["name"]: item for item in base}
        # Patches here only change items: kustomize's place for a new one is not mimicked.
        assert {p["name"] for p in patch} <= set(items), f"patch adds items to {field}"
        # kustomize lists the patched items first, then the others in their order.
        return [merge(items[p["name"]], p) for p in patch] + [
            item for name, item in items.items() if name not in {p["name"] for p in patch}]
    return patch


def transform(obj: Obj, spec: Obj) -> None:
    """namespace, labels (metadata only), replicas and images, as kustomize applies them."""
    meta = obj["metadata"]
    if "namespace" in spec and obj["kind"] not in CLUSTER_SCOPED:
        meta["namespace"] = spec["namespace"]
    for group in spec.get("labels", []):
        assert not group.get("includeSelectors") and not group.get("includeTemplates"), group
        meta.setdefault("labels", {}).update(group["pairs"])
    for count in spec.get("replicas", []):
        if obj["kind"] == "Deployment" and meta["name"] == count["name"]:
            obj["spec"]["replicas"] = count["count"]
    for image in spec.get("images", []):
        for container in containers(obj):
            if image_name(container["image"]) == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"


def kustomize_command() -> list[str] | None:
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def kustomize_build(command: list[str], tree: Path) -> list[Obj]:
    done = subprocess.run([*command, str(tree)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    command = kustomize_command()
    return {name: kustomize_build(command, tree) if command else render(tree)
            for name, tree in TREES.items()}


@pytest.fixture(params=list(TREES))
def objects(request: pytest.FixtureRequest, rendered: dict[str, list[Obj]]) -> list[Obj]:
    return copy.deepcopy(rendered[request.param])


@pytest.fixture
def production(rendered: dict[str, list[Obj]]) -> list[Obj]:
    return copy.deepcopy(rendered["production"])


# --- helpers over rendered objects ----------------------------------------------------------

def key(obj: Obj) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta["name"], meta.get("namespace", "")


def kinds(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    (obj,) = [o for o in kinds(objects, kind) if o["metadata"]["name"] == name]
    return obj


def pod_template(obj: Obj) -> Obj | None:
    if obj["kind"] not in WORKLOADS:
        return None
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    template: Obj = spec["template"]
    return template


def pod_spec(obj: Obj) -> Obj:
    template = pod_template(obj)
    assert template is not None, key(obj)
    spec: Obj = template["spec"]
    return spec


def containers(obj: Obj) -> list[Obj]:
    template = pod_template(obj)
    if template is None:
        return []
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def pods(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, pod template) of every workload."""
    return [(obj, t) for obj in objects if (t := pod_template(obj)) is not None]


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    wanted: Mapping[str, str] = selector["matchLabels"]
    return wanted.items() <= labels.items()


def selected_pods(objects: list[Obj], selector: Obj) -> list[Obj]:
    return [t for _, t in pods(objects) if selects(selector, t["metadata"]["labels"])]


def image_name(image: str) -> str:
    """The image without its tag or digest (a registry's port stays)."""
    return re.sub(r"(@sha256:[0-9a-f]+|:[^/:]+)$", "", image)


def config_map_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and plain ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= named(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return env


def secret_examples() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["stringData"] for doc in load_all(SECRET_EXAMPLE)}


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


# --- rendering and schemas ------------------------------------------------------------------

@pytest.mark.parametrize("tree", list(TREES))
def test_fallback_renderer_agrees_with_kustomize(tree: str) -> None:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl installed; the fallback renderer is used")
    ours = {key(obj): obj for obj in render(TREES[tree])}
    theirs = {key(obj): obj for obj in kustomize_build(command, TREES[tree])}
    assert sorted(ours) == sorted(theirs)
    for name, obj in theirs.items():
        assert ours[name] == obj, name


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(objects: list[Obj],
                                                                version: str) -> None:
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue  # not a Kubernetes API type: see the ServiceMonitor test
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{key(obj)} against Kubernetes {version}: {path}: {exc.message}")
        checked += 1
    assert checked >= 15


def test_servicemonitor_fits_the_prometheus_operator_crd(production: list[Obj]) -> None:
    """cloudcoil's models are generated from the Prometheus Operator's CRD schemas; they
    ignore unknown fields, so a round trip that loses a field means a misspelt one."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    (monitor,) = kinds(production, "ServiceMonitor")
    model = ServiceMonitor.model_validate(monitor)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == monitor
    (service,) = [s for s in kinds(production, "Service")
                  if selects(monitor["spec"]["selector"], s["metadata"].get("labels", {}))]
    ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


# --- references -----------------------------------------------------------------------------

def test_workload_selectors_match_their_own_pods(objects: list[Obj]) -> None:
    for obj in kinds(objects, "Deployment"):
        assert selects(obj["spec"]["selector"], obj["spec"]["template"]["metadata"]["labels"])
        for spread in obj["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert selects(spread["labelSelector"],
                           obj["spec"]["template"]["metadata"]["labels"])


def test_services_and_budgets_select_pods_that_exist(objects: list[Obj]) -> None:
    for service in kinds(objects, "Service"):
        targets = selected_pods(objects, {"matchLabels": service["spec"]["selector"]})
        assert targets, key(service)
        ports = {p["name"] for t in targets for c in t["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (key(service), port)
    for budget in kinds(objects, "PodDisruptionBudget"):
        assert selected_pods(objects, budget["spec"]["selector"]), key(budget)


def test_hpa_scales_an_existing_deployment_it_alone_sizes(objects: list[Obj]) -> None:
    (hpa,) = kinds(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = named(objects, target["kind"], target["name"])
    # An applied replica count would reset the HPA's choice on every `kubectl apply`.
    assert "replicas" not in deployment["spec"]
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # CPU utilisation is measured against the request: every container needs one.
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert container["resources"]["requests"]["cpu"], container["name"]


def test_every_pod_has_a_network_policy_and_workers_take_no_ingress(objects: list[Obj]) -> None:
    policies = kinds(objects, "NetworkPolicy")
    for workload, template in pods(objects):
        covering = [p for p in policies
                    if selects(p["spec"]["podSelector"], template["metadata"]["labels"])]
        assert len(covering) == 1, key(workload)
        policy = covering[0]["spec"]
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
        assert 53 in egress_ports, key(workload)
        served = {p["containerPort"] for c in template["spec"]["containers"]
                  for p in c.get("ports", [])}
        ingress_ports = {p["port"] for rule in policy.get("ingress", []) for p in rule["ports"]}
        assert ingress_ports == served, key(workload)  # the API's 8080; nothing for the rest
    worker = named(policies, "NetworkPolicy", "lorareg-worker")["spec"]
    assert "ingress" not in worker
    assert {5432, 443} <= {p["port"] for rule in worker["egress"] for p in rule["ports"]}


def test_config_maps_secrets_volumes_and_accounts_resolve(objects: list[Obj]) -> None:
    config_maps = {o["metadata"]["name"] for o in kinds(objects, "ConfigMap")}
    accounts = {o["metadata"]["name"] for o in kinds(objects, "ServiceAccount")}
    secrets = secret_examples()
    assert not kinds(objects, "Secret"), "real Secrets are created by the operator"
    for workload, template in pods(objects):
        spec = template["spec"]
        assert spec["serviceAccountName"] in accounts, key(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, key(workload)
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (key(workload), mount)
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_maps, key(workload)
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, key(workload)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], (key(workload), ref)


def test_secret_example_is_documentation_not_a_resource() -> None:
    listed = load_one(K8S / "base" / "kustomization.yaml")["resources"]
    assert SECRET_EXAMPLE.name not in listed
    for name, data in secret_examples().items():
        for field, value in data.items():
            assert "CHANGE-ME" in value, f"{name}.{field} must be a placeholder"


def test_settings_in_the_config_map_are_real_and_production_accepts_them(
    objects: list[Obj], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = named(objects, "ConfigMap", "lorareg-config")["data"]
    secret = secret_examples()["lorareg-secrets"]
    known = {f"LORAREG_{name.upper()}" for name in Settings.model_fields}
    assert set(config) <= known, set(config) - known
    assert {k for k in secret if k.startswith("LORAREG_")} <= known
    for name in config:  # secrets belong in the Secret
        assert not re.search(r"DATABASE_URL|SECRET|PASSWORD|TOKEN|ACCESS_KEY", name), name
    for name in [n for n in os.environ if n.startswith("LORAREG_")]:
        monkeypatch.delenv(name)
    for name, value in {**config, **secret}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    settings.check_production("0.0.0.0")
    assert settings.mode == "production" and settings.auth_required("0.0.0.0")
    assert settings.effective_blob_url.startswith("s3://")


# --- images, commands, probes ---------------------------------------------------------------

def test_images_are_the_dockerfile_targets_and_init_containers_share_them(
    rendered: dict[str, list[Obj]],
) -> None:
    base = rendered["base"]
    targets = re.findall(r"^FROM \S+ AS (\w+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert {"api", "worker"} <= set(targets)
    for workload, template in pods(base):
        images = {c["image"] for c in containers(workload)}
        # the init container's schema check must know the same migrations as the main one
        assert len(images) == 1, key(workload)
        assert images <= {f"lorareg-{t}" for t in targets}, key(workload)
        command = template["spec"]["containers"][0]["command"]
        runs_merges = command[:2] == ["lorareg", "worker"]
        assert (images == {"lorareg-worker"}) == runs_merges, key(workload)


def test_production_pins_every_image_to_this_release(production: list[Obj]) -> None:
    images = {c["image"] for obj in production for c in containers(obj)}
    assert len(images) == 2
    for image in images:
        name, tag = image.rsplit(":", 1)
        assert "/" in name and tag == project_version(), image


def parse_lorareg(argv: Sequence[str]) -> click.Command:
    """Parse ``lorareg ...`` as click does (sub-commands, options, their types), run nothing."""
    from cli.main import main

    command: click.Command = main
    context: click.Context | None = None
    name, args = "lorareg", list(argv[1:])
    while True:
        context = click.Context(command, info_name=name, parent=context,
                                **command.context_settings)
        rest = click.Command.parse_args(command, context, args)
        if not isinstance(command, click.Group):
            return command
        assert rest, f"{argv}: no sub-command"
        found, sub, args = command.resolve_command(context, rest)
        assert found and sub is not None, argv
        command, name = sub, found


def test_commands_exist_in_the_cli_uvicorn_and_the_scripts_config_map(
    objects: list[Obj],
) -> None:
    from uvicorn.main import main as uvicorn_main

    seen: set[str] = set()
    for workload in objects:
        for container in containers(workload):
            command = container["command"]
            seen.add(command[0])
            if command[0] == "lorareg":
                assert parse_lorareg(command).callback is not None, command
            elif command[0] == "uvicorn":
                uvicorn_main.make_context("uvicorn", command[1:])
                check_api_command(container)
            else:
                assert command[0] == "python", command
                check_script(workload, container)
    assert seen == {"lorareg", "uvicorn", "python"}
    assert parse_lorareg(["lorareg", "worker", "--workers", "1"]).name == "worker"


def check_api_command(container: Obj) -> None:
    """The Dockerfile's CMD, but for the number of processes; on the port the pod exposes."""
    import registry.api.app

    command, dockerfile = container["command"], open_dockerfile_cmd("api")
    at = dockerfile.index("--workers") + 1
    assert command[:at] + command[at + 1:] == dockerfile[:at] + dockerfile[at + 1:]
    module, attr = command[1].split(":")
    assert module == "registry.api.app" and callable(getattr(registry.api.app, attr))
    port = int(command[command.index("--port") + 1])
    assert [p["containerPort"] for p in container["ports"]] == [port]


def check_script(workload: Obj, container: Obj) -> None:
    """``python /mount/script.py``: the file is a key of the ConfigMap mounted there."""
    script = container["command"][1]
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    (mount,) = [m for m in container["volumeMounts"]
                if m["mountPath"] == posixpath.dirname(script)]
    source = volumes[mount["name"]]["configMap"]["name"]
    assert source == "lorareg-scripts"
    shipped = (K8S / "base" / posixpath.basename(script)).read_text()
    assert shipped.startswith('"""Init container'), script


def test_probes_use_real_routes_on_the_served_port(objects: list[Obj]) -> None:
    api = named(objects, "Deployment", "lorareg-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        # a real API process answers them: test_probes_answer_on_a_real_api_process
        assert container[probe]["httpGet"]["port"] in ports


def test_worker_outlives_its_job_lease_on_shutdown(objects: list[Obj]) -> None:
    worker = named(objects, "Deployment", "lorareg-worker")
    (container,) = pod_spec(worker)["containers"]
    env = config_map_env(objects, container)
    lease = float(env.get("LORAREG_WORKER_LEASE_SECONDS",
                          Settings.model_fields["worker_lease_seconds"].default))
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > lease


def test_pods_run_restricted_and_write_only_to_volumes(objects: list[Obj]) -> None:
    for workload, template in pods(objects):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, key(workload)
        assert spec["automountServiceAccountToken"] is False, key(workload)
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, key(workload)
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"], container["name"]
            check_writable_paths(objects, container)


def check_writable_paths(objects: list[Obj], container: Obj) -> None:
    """/tmp and ~ always; the worker's caches too (the API writes nothing else locally)."""
    mounts = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")]
    env = config_map_env(objects, container)
    paths = ["/tmp", env["HOME"]]
    if container["command"][:2] == ["lorareg", "worker"]:
        paths += [env[k] for k in ("LORAREG_HOME", "LORAREG_WORKER_CACHE",
                                   "LORAREG_FINGERPRINT_CACHE", "NUMBA_CACHE_DIR")]
    for path in paths:
        assert any(path == m or path.startswith(m + "/") for m in mounts), (
            container["name"], path)


# --- the commands, run ----------------------------------------------------------------------

def manifest_env(objects: list[Obj], container: Obj, **overrides: str) -> dict[str, str]:
    """The container's ConfigMap environment (no secrets), plus test values."""
    env = {k: v for k, v in config_map_env(objects, container).items() if k != "HOME"}
    return base_env(**{**env, **overrides})


def run_schema_check(script: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), "--timeout", "0"], env=dict(env),
                          capture_output=True, text=True, timeout=120, check=False)


def set_revision(url: str, revision: str) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = %s", (revision,))


def test_migration_job_and_schema_wait_on_real_postgresql(
    rendered: dict[str, list[Obj]], pg_databases: PgDatabases, tmp_path: Path
) -> None:
    """The init container holds pods back until the Job's `lorareg db upgrade` ran, then
    lets them go; and lets an older image go on a schema newer than it knows (rollback)."""
    from alembic.script import ScriptDirectory

    from registry import migrate

    objects = rendered["production"]
    job = named(objects, "Job", "lorareg-migrate")
    (migrator,) = pod_spec(job)["containers"]
    api = named(objects, "Deployment", "lorareg-api")
    (waiter,) = pod_spec(api)["initContainers"]
    script = tmp_path / "wait_for_schema.py"
    script.write_text(named(objects, "ConfigMap", "lorareg-scripts")["data"][script.name])
    url = pg_databases.empty()
    env = manifest_env(objects, waiter, LORAREG_DATABASE_URL=url, HOME=str(tmp_path))
    before = run_schema_check(script, env)
    assert before.returncode == 1 and "run the lorareg-migrate Job" in before.stderr
    job_env = manifest_env(objects, migrator, LORAREG_DATABASE_URL=url, HOME=str(tmp_path))
    assert run(job_env, *migrator["command"][1:]).code == 0
    assert run_schema_check(script, env).returncode == 0
    first = ScriptDirectory.from_config(migrate.alembic_config()).get_base()
    assert isinstance(first, str)
    set_revision(url, first)
    assert run_schema_check(script, env).returncode == 1
    set_revision(url, "f00dfeedbeef")  # a revision from a release newer than this image
    assert run_schema_check(script, env).returncode == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_probes_answer_on_a_real_api_process(live_server: LiveServer,
                                             production: list[Obj]) -> None:
    api = named(production, "Deployment", "lorareg-api")
    (container,) = pod_spec(api)["containers"]
    (monitor,) = kinds(production, "ServiceMonitor")
    paths = [container["readinessProbe"]["httpGet"]["path"],
             container["livenessProbe"]["httpGet"]["path"],
             *[e["path"] for e in monitor["spec"]["endpoints"]]]
    for path in paths:
        assert httpx.get(f"{live_server.url}{path}", timeout=10).status_code == 200, path


ACTOR = Actor("k8s-test")


def seed_garbage_and_retention(db_url: str, blobs: Path) -> str:
    """Three versions of acme/bot with keep-last 1, and an unreferenced blob two days old."""
    engine = make_engine(db_url)
    store = LocalBlobStore(blobs)
    try:
        with transaction(make_session_factory(engine)) as session:
            bases.register_base(session, ACTOR, registration(entries()))
            for seed in range(3):
                files = store_files(session, store, adapter_files(seed=seed))
                versions.push_version(session, store, ACTOR, PushRequest(
                    "acme/bot", files, "tiny/llama", "abc"))
            session.execute(update(Adapter).values(keep_last=1))
            garbage = put(session, store, b"an abandoned upload" * 64)
            age(session, [garbage], timedelta(days=2))
        return garbage
    finally:
        engine.dispose()


def yanked(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(AdapterVersion)
                                   .where(AdapterVersion.status == "yanked")) or 0)
    finally:
        engine.dispose()


def namespace_admin(db_url: str) -> str:
    engine = make_engine(db_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, plaintext = tokens.create_token(session, ACTOR, name="not-global",
                                               role="admin", namespace="other")
        return plaintext
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_maintenance_cronjobs_run_against_a_real_api(
    live_server: LiveServer, fresh_db_url: str, tmp_path: Path, production: list[Obj]
) -> None:
    """The CronJobs' exact commands: refused (exit 5, nothing changed) with an admin token
    of one namespace, done with the global admin token the Secret is documented to hold."""
    garbage = seed_garbage_and_retention(fresh_db_url, tmp_path / "blobs")
    store = LocalBlobStore(tmp_path / "blobs")
    jobs = {name: pod_spec(named(production, "CronJob", name))["containers"][0]
            for name in ("lorareg-gc", "lorareg-retention")}
    scoped = namespace_admin(fresh_db_url)
    for container in jobs.values():
        env = manifest_env(production, container, LORAREG_URL=live_server.url,
                           LORAREG_TOKEN=scoped, HOME=str(tmp_path))
        assert run(env, *container["command"][1:]).code == 5, container["command"]
    assert store.exists(garbage) and yanked(fresh_db_url) == 0
    assert live_server.admin_token is not None
    for container in jobs.values():
        env = manifest_env(production, container, LORAREG_URL=live_server.url,
                           LORAREG_TOKEN=live_server.admin_token, HOME=str(tmp_path))
        done = run(env, *container["command"][1:])
        assert done.code == 0, done.stderr
    assert not store.exists(garbage) and yanked(fresh_db_url) == 2


def test_cronjobs_reach_the_api_service_they_name(objects: list[Obj]) -> None:
    service = named(objects, "Service", "lorareg-api")
    (port,) = service["spec"]["ports"]
    for cron in kinds(objects, "CronJob"):
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = pod_spec(cron)["containers"]
        url = config_map_env(objects, container)["LORAREG_URL"]
        assert url == f"http://{service['metadata']['name']}:{port['port']}", url

