"""The discrete-event simulator: runs `autoscaler.policy` on workloads and real traces.

A simulation imports only `autoscaler.policy` (and the CRD's field names from
`autoscaler.spec`) from the rest of rscore and never reads the wall clock; it never
imports the scorer (r_scorer.timing times calls; rscore_cli drives real pods). This
file stays light: `rscore` imports it for every command.
"""

POLICY_KINDS = ("static", "rscore", "kpa", "hpa", "oracle", "reactive-oracle")
# Planned from the arrivals and replayed (sim.oracle); the reactive one orders no node
# ahead of need and pays in spare nodes instead: what ordering ahead is worth.
ORACLES = ("oracle", "reactive-oracle")
