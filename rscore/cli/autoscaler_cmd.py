"""`rscore autoscaler`: flags for the in-cluster controller (rscore.autoscaler.serve)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from rscore.autoscaler.options import Options
from rscore.r_scorer.logs import configure_json_logging

DEFAULTS = Options()  # the flags' defaults are the settings' own


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
    default=DEFAULTS.interval_s,
    show_default=True,
    help="Seconds between control loop ticks.",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=DEFAULTS.leader_elect,
    show_default=True,
    help="Take a coordination.k8s.io Lease so that only one replica acts.",
)
@click.option("--lease-name", default=DEFAULTS.lease_name, show_default=True)
@click.option(
    "--lease-namespace",
    default=lambda: os.environ.get("POD_NAMESPACE", "default"),
    show_default="$POD_NAMESPACE, else default",
)
@click.option(
    "--lease-duration-s",
    type=click.IntRange(min=2),
    default=DEFAULTS.lease_duration_s,
    show_default=True,
    help="Whole seconds (the Lease stores an integer).",
)
@click.option(
    "--renew-deadline-s",
    type=click.FloatRange(min=1),
    default=DEFAULTS.renew_deadline_s,
    show_default=True,
)
@click.option(
    "--retry-period-s",
    type=click.FloatRange(min=1),
    default=DEFAULTS.retry_period_s,
    show_default=True,
)
@click.option(
    "--dry-run", is_flag=True, help="Observe and decide, log the decisions, write nothing."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=DEFAULTS.metrics_port,
    show_default=True,
    help="Port of the controller's own /metrics and /healthz.",
)
@click.option("--metrics-host", default=DEFAULTS.metrics_host, show_default=True)
@click.option(
    "--scrape-timeout-s",
    type=click.FloatRange(min=0.05),
    default=DEFAULTS.scrape_timeout_s,
    show_default=True,
    help="Timeout of each pod /metrics scrape.",
)
@click.option(
    "--reconcile-timeout-s",
    type=click.FloatRange(min=0.1),
    default=None,
    show_default="5 intervals",
    help="A ScoringAutoscaler's reconcile still running after this is cancelled.",
)
@click.option(
    "--sample/--no-sample",
    default=DEFAULTS.sample,
    show_default=True,
    help="Scrape a sample of a ScoringAutoscaler's ready pods above --sample-above.",
)
@click.option(
    "--sample-above",
    type=click.IntRange(min=0),
    default=DEFAULTS.sample_above,
    show_default=True,
    help="Ready pods up to this many are all scraped every tick.",
)
@click.option(
    "--sample-confidence",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=DEFAULTS.sample_confidence,
    show_default=True,
    help="Confidence that the sample's mean concurrency is within --sample-error.",
)
@click.option(
    "--sample-error",
    type=click.FloatRange(0, 1, min_open=True),
    default=DEFAULTS.sample_error,
    show_default=True,
    help="Relative error of the sample's mean concurrency.",
)
@click.option(
    "--max-concurrent-scrapes",
    type=click.IntRange(min=0),
    default=DEFAULTS.max_concurrent_scrapes,
    show_default=True,
    help="Pod /metrics scrapes in flight at once, over all ScoringAutoscalers (0: no bound).",
)
@click.option(
    "--metric-streams/--no-metric-streams",
    default=DEFAULTS.metric_streams,
    show_default=True,
    help="Follow each pod's /metrics/stream (a reading twice an interval on one "
    "connection) instead of a GET per tick; pods without one are read by GET.",
)
@click.option(
    "--watch-pods/--list-pods",
    default=DEFAULTS.watch_pods,
    show_default=True,
    help="Keep pods in an informer's cache (one watch), or list them per tick.",
)
@click.option(
    "--pod-selector",
    default=None,
    help="Label selector narrowing the pod watch (a label every scoring pod carries).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=DEFAULTS.shards,
    show_default=True,
    help="Split the ScoringAutoscalers over this many shards, each with its own Lease.",
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    default=None,
    show_default="the StatefulSet ordinal modulo --shards",
    help="This replica's shard.",
)
@click.option(
    "--status-heartbeat-s",
    type=click.FloatRange(min=0),
    default=DEFAULTS.status_heartbeat_s,
    show_default=True,
    help="A status whose only change is readings (observed concurrency, figures in its "
    "reason) is written at most this often per ScoringAutoscaler; decisions and "
    "conditions at once (0: every change at once).",
)
def autoscaler(**options: object) -> None:
    """Scale scoring Deployments (and their node pools) from ScoringAutoscaler objects."""
    import uvloop
    import yaml

    from rscore.autoscaler.kube_io import KubeConfigError  # heavy: only for this command
    from rscore.autoscaler.serve import run

    configure_json_logging()
    try:
        settings = Options(**options, freeze_heap=True)  # type: ignore[arg-type]
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
