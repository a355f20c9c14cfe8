"""The discrete-event simulator: runs `autoscaler.policy` on workloads and real traces.

A simulation imports only `autoscaler.policy` (and the CRD's field names from
`autoscaler.spec`) from the rest of rscore and never reads the wall clock; only
`sim.measure` runs the real scorer. This file stays light: `rscore` imports it for every command.
"""

POLICY_KINDS = ("static", "rscore", "kpa", "hpa", "oracle")
