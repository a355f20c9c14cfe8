"""The discrete-event simulator: runs `autoscaler.policy` on workloads and real traces.

Imports only `autoscaler.policy` from the rest of rscore; never reads the wall clock
inside a simulation. This file stays light: `rscore` imports it for every command.
"""

POLICY_KINDS = ("static", "rscore", "kpa", "hpa", "oracle")
