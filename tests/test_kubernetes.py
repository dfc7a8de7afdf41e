"""deploy/kubernetes: the kustomize base and the production overlay, checked without a cluster.

Rendered by ``kustomize build`` (or ``kubectl kustomize``) when one is installed, else by the
small renderer of tests/fixtures/kustomize.py; when both are there, a test proves they agree.
Every rendered object is validated against the Kubernetes API schemas (kubernetes-validate,
strict: unknown fields fail) and the ServiceMonitor against the Prometheus Operator's CRD (as
generated models). Then what no schema sees: every selector, name and key reference resolves,
the images are the Dockerfile's targets, every command parses in the real CLI or uvicorn, the
probes use the served port, the pods write only to volumes, and the worker's termination grace
outlasts its job lease. tests/test_kubernetes_runs.py runs the commands.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
from collections.abc import Sequence

import click
import kubernetes_validate
import pytest

from registry.config import Settings
from tests.fixtures.kustomize import (
    K8S,
    ROOT,
    SECRET_EXAMPLE,
    TREES,
    Obj,
    config_map_env,
    containers,
    key,
    kinds,
    kustomize_build,
    kustomize_command,
    load_one,
    named,
    pod_spec,
    pods,
    project_version,
    render,
    rendered_trees,
    secret_examples,
    selected_pods,
    selects,
)
from tests.test_deployment import open_dockerfile_cmd

# The oldest Kubernetes we claim (autoscaling/v2, policy/v1, batch/v1 CronJob, seccompProfile
# are all GA well before it) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
CRD_GROUPS = ("monitoring.coreos.com/",)


@pytest.fixture(params=list(TREES))
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    return copy.deepcopy(rendered_trees()[request.param])


@pytest.fixture
def production() -> list[Obj]:
    return copy.deepcopy(rendered_trees()["production"])


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

def test_images_are_the_dockerfile_targets_and_init_containers_share_them() -> None:
    base = rendered_trees()["base"]
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



def test_cronjobs_reach_the_api_service_they_name(objects: list[Obj]) -> None:
    service = named(objects, "Service", "lorareg-api")
    (port,) = service["spec"]["ports"]
    for cron in kinds(objects, "CronJob"):
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = pod_spec(cron)["containers"]
        url = config_map_env(objects, container)["LORAREG_URL"]
        assert url == f"http://{service['metadata']['name']}:{port['port']}", url
