"""`rscore autoscaler`: flags for the in-cluster controller (autoscaler.serve)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from r_scorer.logs import configure_json_logging


@click.command("autoscaler")
@click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="KUBECONFIG",
    help="Kubeconfig file ($KUBECONFIG); without one, the pod's service account is used.",
)
@click.option(
    "--namespace",
    default=None,
    help="Watch ScoringAutoscalers in this namespace only (default: all namespaces).",
)
@click.option(
    "--interval-s",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between control loop ticks.",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=True,
    show_default=True,
    help="Take a coordination.k8s.io Lease so that only one replica acts.",
)
@click.option("--lease-name", default="rscore-autoscaler", show_default=True)
@click.option(
    "--lease-namespace",
    default=lambda: os.environ.get("POD_NAMESPACE", "default"),
    show_default="$POD_NAMESPACE, else default",
)
@click.option(
    "--lease-duration-s",
    type=click.IntRange(min=2),
    default=15,
    show_default=True,
    help="Whole seconds (the Lease stores an integer).",
)
@click.option("--renew-deadline-s", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--retry-period-s", type=click.FloatRange(min=1), default=2.0, show_default=True)
@click.option(
    "--dry-run", is_flag=True, help="Observe and decide, log the decisions, write nothing."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9091,
    show_default=True,
    help="Port of the controller's own /metrics and /healthz.",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option(
    "--scrape-timeout-s",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Timeout of each pod /metrics scrape.",
)
def autoscaler(**options: object) -> None:
    """Scale scoring Deployments (and their node pools) from ScoringAutoscaler objects."""
    import uvloop
    import yaml

    from autoscaler.kube_io import KubeConfigError  # heavy: only for this command
    from autoscaler.serve import Options, run

    configure_json_logging()
    try:
        settings = Options(**options)  # type: ignore[arg-type]
        # client-go's checks of an election's timing, reported as a flag error
        if settings.leader_elect and not (
            settings.lease_duration_s > settings.renew_deadline_s > 1.2 * settings.retry_period_s
        ):
            raise click.BadParameter(
                "need --lease-duration-s > --renew-deadline-s > 1.2 x --retry-period-s"
            )
        uvloop.run(run(settings))
    except KeyboardInterrupt:
        pass
    except (KubeConfigError, yaml.YAMLError, OSError) as error:
        # No kubeconfig and not in a pod, or an unreadable file: say so, no traceback.
        where = settings.kubeconfig or "the in-cluster service account"
        raise click.ClickException(
            f"cannot configure the Kubernetes client from {where}: {error}"
        ) from error
