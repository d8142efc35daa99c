"""deploy/: Kubernetes manifests validate offline against the Kubernetes schemas; compose, Dockerfile
and the container entrypoint are consistent with each other and with the code's settings.

Offline and fast: no cluster, no Docker engine, no network.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service_runtime.readiness import LIVENESS
from service_runtime.settings import Settings, env_name

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.py"

# The oldest Kubernetes we claim (grpc probes are GA since 1.27) and the newest schema shipped.
OLDEST_K8S = "1.30.0"
K8S_VERSIONS = sorted({v for v in (OLDEST_K8S, kubernetes_validate.latest_version())
                       if v in kubernetes_validate.utils.all_versions()})

TIERS = ("ledger", "invoice", "billing", "worker", "portal")
GRPC_TIERS = {"ledger": 50051, "invoice": 50052, "billing": 50053}
HTTP_TIERS = {"portal": 8090}

# Every CREDITS_* variable the code reads: the one settings object (service_runtime/settings.py) declares
# them all. Manifests must not invent others.
KNOWN_ENV = {env_name(f) for f in Settings.model_fields}
SECRET_ENV = {"CREDITS_LEDGER_DSN", "CREDITS_INVOICE_DSN", "CREDITS_API_KEY", "CREDITS_COORDINATOR_KEYS",
              "CREDITS_PORTAL_SECRET"}


def _documents() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((str(path.relative_to(K8S)), i, doc))
    return out


DOCS = _documents()


def _kinds(kind: str) -> list[dict[str, Any]]:
    return [doc for _, _, doc in DOCS if doc["kind"] == kind]


def _by_name(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _kinds(kind)}


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in _kinds("Deployment") + _kinds("Job")]


def test_found_manifests_and_versions() -> None:
    assert len(DOCS) >= 15, [f for f, _, _ in DOCS]
    assert K8S_VERSIONS, "kubernetes-validate ships none of the versions we target"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("file", "index", "doc"), DOCS, ids=[f"{f}#{i}" for f, i, _ in DOCS])
def test_document_validates_against_kubernetes_schema(file: str, index: int, doc: dict[str, Any],
                                                      version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_every_tier_has_deployment_hpa_and_pdb_and_services_for_grpc_tiers() -> None:
    deployments, hpas, pdbs, services = (_by_name(k) for k in
                                         ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"))
    for tier in TIERS:
        name = f"credits-{tier}"
        assert name in deployments and name in hpas and name in pdbs, tier
        assert hpas[name]["apiVersion"] == "autoscaling/v2"
        assert hpas[name]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpas[name]["spec"]["minReplicas"] >= 2, "a PDB with minAvailable 1 needs at least 2 replicas"
        assert "replicas" not in deployments[name]["spec"], "the HPA owns the replica count"
        assert pdbs[name]["apiVersion"] == "policy/v1"
    assert set(services) == {f"credits-{t}" for t in (*GRPC_TIERS, *HTTP_TIERS)}


def test_selectors_match_pod_labels() -> None:
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in _by_name("Deployment").items()}
    for name, d in pods.items():
        selector = _by_name("Deployment")[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= d.items(), name
    for kind, path in (("PodDisruptionBudget", ("spec", "selector", "matchLabels")), ("Service", ("spec", "selector"))):
        for name, doc in _by_name(kind).items():
            selector = doc[path[0]][path[1]] if len(path) == 2 else doc[path[0]][path[1]][path[2]]
            matched = [n for n, labels in pods.items() if selector.items() <= labels.items()]
            assert matched == [name], (kind, name, matched)


@pytest.mark.parametrize("tier", list(GRPC_TIERS))
def test_grpc_tiers_probe_their_port_with_tls_aware_probes(tier: str) -> None:
    """Exec probes through the entrypoint's healthcheck, which dials TLS when the pod serves TLS (a kubelet
    gRPC probe cannot), checking the certificate against the name clients dial."""
    dep = _by_name("Deployment")[f"credits-{tier}"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    port = GRPC_TIERS[tier]
    assert container["ports"][0] == {"name": "grpc", "containerPort": port, "protocol": "TCP"}
    dial_name = _configmap()[f"CREDITS_{tier.upper()}_ADDR"].rpartition(":")[0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:4] == ["python", "/app/entrypoint.py", "healthcheck", f"127.0.0.1:{port}"], probe
        assert command[5] == dial_name and "grpc" not in container[probe], probe
    # Readiness follows the database (overall ""); liveness asks for a name the database does not flip.
    assert container["readinessProbe"]["exec"]["command"][4] == ""
    assert container["livenessProbe"]["exec"]["command"][4] == LIVENESS
    env = {e["name"]: e for e in container["env"]}
    listen = next(k for k in env if k.endswith("_ADDR"))
    assert env[listen]["value"] == f"0.0.0.0:{port}"
    svc = _by_name("Service")[f"credits-{tier}"]
    assert svc["spec"]["ports"][0]["port"] == port and svc["spec"]["ports"][0]["targetPort"] == "grpc"
    assert container["args"] == [tier]
    assert "Temporal TLS" not in (K8S / "10-config.yaml").read_text()  # it is supported: CREDITS_TEMPORAL_TLS_*


def test_the_portal_serves_http_with_probes_and_shares_the_session_secret() -> None:
    """The portal Deployment: HTTP probes (liveness on the process alone, readiness on both services), its
    Service, and CREDITS_PORTAL_SECRET from the one Secret on the portal and on the two services that
    verify its sessions; links are minted on CREDITS_PORTAL_URL."""
    dep = _by_name("Deployment")["credits-portal"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["portal"] and container["ports"][0] == {"name": "http", "containerPort": 8090,
                                                                       "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert env["CREDITS_PORTAL_ADDR"]["value"] == "0.0.0.0:8090"
    svc = _by_name("Service")["credits-portal"]
    assert svc["spec"]["ports"][0]["port"] == 8090 and svc["spec"]["ports"][0]["targetPort"] == "http"
    for tier in ("portal", "ledger", "invoice"):
        (c,) = _by_name("Deployment")[f"credits-{tier}"]["spec"]["template"]["spec"]["containers"]
        ref = {e["name"]: e for e in c["env"]}["CREDITS_PORTAL_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "credits-portal", "key": "secret"}, tier
    assert _configmap()["CREDITS_PORTAL_URL"].startswith("https://")
    from portal.app import create_app

    paths = {getattr(r, "path", "") for r in create_app(Settings()).routes}
    assert {"/healthz", "/readyz"} <= paths  # what the probes ask for exists
    assert "portal" in _entrypoint().SERVERS
    compose = _compose()["services"]["portal"]
    assert compose["command"] == ["portal"] and "readyz" in " ".join(compose["healthcheck"]["test"])


def _configmap() -> dict[str, str]:
    data: dict[str, str] = _by_name("ConfigMap")["credits-config"]["data"]
    return data


@pytest.mark.parametrize("tier", TIERS)
def test_every_tier_serves_metrics_prometheus_scrapes(tier: str) -> None:
    metrics_port = int(_configmap()["CREDITS_METRICS_ADDR"].rpartition(":")[2])
    template = _by_name("Deployment")[f"credits-{tier}"]["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in container["ports"]
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true",
                                                   "prometheus.io/port": str(metrics_port),
                                                   "prometheus.io/path": "/metrics"}
    assert "credits-config" in [r["configMapRef"]["name"] for r in container["envFrom"]]


def test_network_policies_deny_by_default_and_open_each_port_to_its_callers() -> None:
    policies = _by_name("NetworkPolicy")
    deny = policies["credits-default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in _by_name("Deployment").items()}

    def selected(spec: dict[str, Any]) -> set[str]:
        sel = spec["podSelector"]
        out = set()
        for name, labels in pods.items():
            if not sel.get("matchLabels", {}).items() <= labels.items():
                continue
            if all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])):
                out.add(name)
        return out

    opened: dict[str, set[str]] = {}
    for policy in policies.values():
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                for pod in selected(policy["spec"]):
                    opened.setdefault(pod, set()).add(port["port"])
    assert opened == {"credits-ledger": {"grpc", "metrics"}, "credits-invoice": {"grpc", "metrics"},
                      "credits-billing": {"grpc", "metrics"}, "credits-worker": {"metrics"},
                      "credits-portal": {"http", "metrics"}}
    services = policies["credits-services-grpc"]["spec"]["ingress"][0]["from"]
    callers = {v for f in services if "podSelector" in f
               for e in f["podSelector"]["matchExpressions"] for v in e["values"]}
    # the worker, the front door and the portal reach both services; the invoice service asks the ledger
    # whether a portal link was revoked
    assert callers == {"credits-worker", "credits-billing", "credits-portal", "credits-invoice"}


def test_the_front_door_gets_both_service_addresses_and_the_ui_url() -> None:
    """As `creditctl up` wires it (up-front checks of invoices, units and accounts; a UI link per operation)."""
    config = _configmap()
    assert {"CREDITS_LEDGER_ADDR", "CREDITS_INVOICE_ADDR", "CREDITS_TEMPORAL_UI_URL"} <= config.keys()
    assert config["CREDITS_TEMPORAL_UI_URL"].startswith("https://")
    (container,) = _by_name("Deployment")["credits-billing"]["spec"]["template"]["spec"]["containers"]
    overridden = {e["name"] for e in container["env"]}
    assert not {"CREDITS_LEDGER_ADDR", "CREDITS_INVOICE_ADDR", "CREDITS_TEMPORAL_UI_URL"} & overridden
    shim = ENTRYPOINT.read_text()
    call = shim[shim.index("await create_front_door("):]
    call = call[:call.index(")\n") + 1]
    assert "settings.temporal_ui_url" in call and "settings.invoice_addr" in call and "settings.ledger_addr" in call


def test_the_worker_learns_new_tenants_without_a_restart() -> None:
    """No fixed key map: the worker mints its keys per tenant from the tenants table (both owner DSNs)."""
    from coordinator.keys import MintingKeyStore

    (container,) = _by_name("Deployment")["credits-worker"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert "CREDITS_COORDINATOR_KEYS" not in env and {"CREDITS_LEDGER_DSN", "CREDITS_INVOICE_DSN"} <= env
    store = _entrypoint().worker_key_store(Settings(ledger_dsn="postgresql://a@db/l", invoice_dsn="postgresql://a@db/i"),
                                           "")
    assert isinstance(store, MintingKeyStore)


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_pods_run_non_root_read_only_with_resources(name: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
        assert "memory" in c["resources"]["limits"]
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), "a writable /tmp on a read-only root"


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_env_is_known_and_secrets_come_from_secret_refs(name: str, pod: dict[str, Any]) -> None:
    secrets = {s["metadata"]["name"]: s for s in _kinds("Secret")}
    for c in pod["containers"]:
        for ref in c.get("envFrom", []):
            assert ref["configMapRef"]["name"] in _by_name("ConfigMap")
        for e in c.get("env", []):
            assert e["name"] in KNOWN_ENV, f"{e['name']} is not read by the code (service_runtime/settings.py)"
            if e["name"] in SECRET_ENV:
                ref = e["valueFrom"]["secretKeyRef"]
                assert "value" not in e
                assert ref["key"] in secrets[ref["name"]]["stringData"], "the example Secret documents every key"


def test_configmap_holds_only_known_non_secret_settings() -> None:
    for cm in _kinds("ConfigMap"):
        for key in cm["data"]:
            assert key in KNOWN_ENV and key not in SECRET_ENV, key


def test_secrets_are_examples_with_placeholders_only() -> None:
    for file, _, doc in DOCS:
        if doc["kind"] == "Secret":
            assert file.startswith("examples/"), f"{file}: real Secrets are created out of band"
            for value in doc["stringData"].values():
                assert "PLACEHOLDER" in value, f"{file}: {doc['metadata']['name']} must hold placeholders only"


def test_migration_job_is_kept_apart_and_runs_migrate() -> None:
    jobs = [(f, d) for f, _, d in DOCS if d["kind"] == "Job"]
    assert [f for f, _ in jobs] == ["jobs/migrate.yaml"]
    (container,) = jobs[0][1]["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "migrate"
    assert jobs[0][1]["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert {e["name"] for e in container["env"]} == {"CREDITS_LEDGER_DSN", "CREDITS_INVOICE_DSN"}


def test_every_object_is_namespaced_consistently() -> None:
    for file, _, doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "credits", file


# ---- compose ----

def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_and_references_exist() -> None:
    services = _compose()["services"]
    assert {"postgres", "temporal", "temporal-ui", "migrate", *TIERS} <= services.keys()
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    for name, svc in services.items():
        deps = svc.get("depends_on", [])
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
        for var in svc.get("environment", {}):
            if var.startswith("CREDITS_"):
                assert var in KNOWN_ENV, f"{name}: {var} is not read by the code"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} missing"
            else:
                assert source in _compose()["volumes"], f"{name}: undeclared volume {source}"


def test_compose_app_services_use_the_image_and_a_real_process() -> None:
    services = _compose()["services"]
    entry = _entrypoint()
    for name in (*TIERS, "migrate"):
        svc = services[name]
        build = svc["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert svc["command"][0] in entry.COMMANDS
        assert svc["read_only"] is True
    assert services["migrate"]["restart"] == "no"
    for tier in ("ledger", "invoice"):
        assert services[tier]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# ---- Dockerfile ----

def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    stages = [args for op, *args in instructions if op.upper() == "FROM"]
    assert len(stages) >= 2, "multi-stage"
    users = [args[0].strip() for op, *args in instructions if op.upper() == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"final USER is {user}"
    assert 'ENTRYPOINT ["python", "/app/entrypoint.py"]' in text
    for op, *args in instructions:
        if op.upper() == "COPY" and not args[0].startswith("--from"):
            *sources, _dest = args[0].split()
            for src in sources:
                assert (DEPLOY.parent / src).exists(), f"COPY source {src} missing"


# ---- the entrypoint shim ----

def _entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("credits_container_entrypoint", ENTRYPOINT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entrypoint_selects_each_process() -> None:
    entry = _entrypoint()
    assert set(entry.COMMANDS) == {*TIERS, "migrate", "creditctl", "healthcheck"}
    assert entry.main([]) == 2 and entry.main(["nope"]) == 2


def test_entrypoint_refuses_the_embedded_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entrypoint()
    monkeypatch.delenv("CREDITS_LEDGER_DSN", raising=False)
    with pytest.raises(SystemExit, match="CREDITS_LEDGER_DSN must be set"):
        entry.run_migrate([])
    with pytest.raises(SystemExit, match="CREDITS_COORDINATOR_KEYS"):
        entry.worker_key_store(Settings(ledger_dsn="", invoice_dsn=""), "")
    with pytest.raises(SystemExit, match="JSON object"):
        entry.worker_key_store(Settings(), '["not", "an", "object"]')


async def test_entrypoint_static_worker_keys() -> None:
    store = _entrypoint().worker_key_store(Settings(), '{"acme": "ck_abc.def"}')
    assert await store.key_for("acme") == "ck_abc.def" and await store.tenants() == ["acme"]


def test_entrypoint_wires_functions_that_exist() -> None:
    """The shim calls these by keyword/position; fail here, not in a pod, if their shape changes."""
    from coordinator import search_attributes
    from coordinator.front_door import create_front_door
    from coordinator.schedules import ensure_schedules
    from coordinator.worker import WorkerConfig, running_worker
    from invoice_service.server import create_invoice_server
    from ledger_service.server import create_ledger_server

    def params(fn: Any) -> list[str]:
        return list(inspect.signature(fn).parameters)

    assert params(create_ledger_server)[:3] == ["dsn", "address", "settings"]
    assert params(create_invoice_server)[:3] == ["dsn", "address", "settings"]
    assert params(create_front_door)[:4] == ["client", "key_dsn", "task_queue", "address"]
    assert params(running_worker)[:3] == ["client", "config", "keys"]
    assert params(WorkerConfig)[:3] == ["ledger_addr", "invoice_addr", "task_queue"]
    assert params(ensure_schedules)[:2] == ["client", "task_queue"]
    assert callable(search_attributes.register)
    shim = ENTRYPOINT.read_text()
    assert not re.search(r"environ(?:\.get)?\(\s*[\"'](?!CREDITS_COORDINATOR_KEYS)", shim), "no invented env vars"


def test_entrypoint_database_commands_need_both_dsns(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entrypoint()
    monkeypatch.setenv("CREDITS_LEDGER_DSN", "postgresql://u@db.invalid/credits_ledger")
    monkeypatch.delenv("CREDITS_INVOICE_DSN", raising=False)
    for command in (["ledger", "verify"], ["tenants", "create", "acme"], ["migrate"]):
        with pytest.raises(SystemExit, match="CREDITS_INVOICE_DSN must be set"):
            entry.run_creditctl(command)
