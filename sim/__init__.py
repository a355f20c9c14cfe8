"""The discrete-event simulator: runs `autoscaler.policy` on workloads and real traces.

Imports only `autoscaler.policy` from the rest of rscore; never reads the wall clock.
"""
