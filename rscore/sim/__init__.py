"""The discrete-event simulator: runs `rscore.autoscaler.policy` on workloads and real traces.

A simulation imports only `rscore.autoscaler.policy` (and the CRD's field names from
`rscore.autoscaler.spec`) from the rest of rscore and never reads the wall clock; it never
imports the scorer (rscore.r_scorer.timing times calls; rscore.cli drives real pods). This
file stays light: `rscore` imports it for every command.
"""

POLICY_KINDS = ("static", "rscore", "kpa", "hpa", "oracle", "reactive-oracle")
# Planned from the arrivals and replayed (rscore.sim.oracle); the reactive one orders no node
# ahead of need and pays in spare nodes instead: what ordering ahead is worth.
ORACLES = ("oracle", "reactive-oracle")
