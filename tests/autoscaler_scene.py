"""A small cluster for the autoscaler's tests: the emulated API server holding a
Deployment, its pods, a ScoringAutoscaler and a MachineDeployment node pool, plus real
/metrics servers standing in for the pods on 127.0.0.x.

`Scene.sync_pods()` plays the Deployment controller: it brings the ready pods (and their
metrics servers) to the Deployment's replicas, so scaling has visible consequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fake_pods import FakePod, shared_free_port
from kube_emulator import KubeEmulator

NS = "models"
APP = "scorer"
POOL = "gpu-pool"
MAX_PODS = 12


def autoscaler_object(metrics_port: int, **spec: Any) -> dict[str, Any]:
    node_pool = spec.pop("nodePool", None)
    body: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
        "minReplicas": 1,
        "maxReplicas": 10,
        "metricsPort": metrics_port,
        "stableWindowSeconds": 4,
        **spec,
    }
    if node_pool is not None:
        body["nodePool"] = {
            "scaleTargetRef": {
                "apiVersion": "cluster.x-k8s.io/v1beta1",
                "kind": "MachineDeployment",
                "name": POOL,
            },
            **node_pool,
        }
    return {
        "apiVersion": "rscore.dev/v1alpha1",
        "kind": "ScoringAutoscaler",
        "metadata": {"name": APP, "namespace": NS},
        "spec": body,
    }


@dataclass
class Scene:
    emu: KubeEmulator
    port: int
    pods: dict[str, FakePod] = field(default_factory=dict)
    per_pod_concurrency: float = 0.0
    streaming: bool = False  # the pods serve /metrics/stream as well as /metrics

    @classmethod
    async def build(
        cls, emu: KubeEmulator, replicas: int = 2, nodes: int = 1, *, streaming: bool = False
    ) -> Scene:
        ips = [f"127.0.0.{i + 2}" for i in range(MAX_PODS)]
        scene = cls(emu, shared_free_port(ips), streaming=streaming)
        emu.put_object(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}, "status": {}}
        )
        emu.make_deployment(APP, NS, replicas=replicas)
        emu.put_object(
            {
                "apiVersion": "cluster.x-k8s.io/v1beta1",
                "kind": "MachineDeployment",
                "metadata": {"name": POOL, "namespace": NS},
                "spec": {
                    "clusterName": "prod",
                    "replicas": nodes,
                    "selector": {"matchLabels": {"pool": POOL}},
                    "template": {"spec": {"clusterName": "prod"}},
                },
                "status": {"replicas": nodes},
            }
        )
        await scene.sync_pods()
        return scene

    def add_autoscaler(self, **spec: Any) -> None:
        self.emu.put_object(autoscaler_object(self.port, **spec))

    @property
    def replicas(self) -> int:
        deployment = self.emu.get_object("apps/v1", "Deployment", NS, APP)
        assert deployment is not None
        return int(deployment["spec"]["replicas"])

    @property
    def nodes(self) -> int:
        pool = self.emu.get_object("cluster.x-k8s.io/v1beta1", "MachineDeployment", NS, POOL)
        assert pool is not None
        return int(pool["spec"]["replicas"])

    def status(self) -> dict[str, Any]:
        obj = self.emu.get_object("rscore.dev/v1alpha1", "ScoringAutoscaler", NS, APP)
        assert obj is not None
        return obj.get("status") or {}

    async def sync_pods(self) -> None:
        """Ready pods (with metrics servers) to match the Deployment's replicas."""
        want = min(self.replicas, MAX_PODS)
        for index in range(want):
            name = f"{APP}-{index}"
            if name not in self.pods:
                ip = f"127.0.0.{index + 2}"
                pod = FakePod(
                    ip,
                    self.port,
                    workers=2,
                    concurrency=self.per_pod_concurrency,
                    streams=self.streaming,
                )
                await pod.start()
                self.pods[name] = pod
                self.emu.make_pod(name, NS, labels={"app": APP}, ready=True, pod_ip=ip)
        for index in range(want, len(self.pods)):
            name = f"{APP}-{index}"
            await self.pods.pop(name).stop()
            self.emu.delete_object("v1", "Pod", NS, name)
        deployment = self.emu.get_object("apps/v1", "Deployment", NS, APP)
        assert deployment is not None
        deployment["status"].update(replicas=want, readyReplicas=want, availableReplicas=want)
        self.emu.put_object(deployment)

    def set_total_concurrency(self, total: float) -> None:
        """Spread `total` queued + in-flight requests evenly over the pods."""
        self.per_pod_concurrency = total / max(1, len(self.pods))
        for pod in self.pods.values():
            pod.set_concurrency(self.per_pod_concurrency)

    async def close(self) -> None:
        for pod in self.pods.values():
            await pod.stop()
        self.pods.clear()
