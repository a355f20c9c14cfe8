"""rscore: R models served over HTTPS on Kubernetes, autoscaled, and simulated.

One namespace for the project's parts, so installing rscore claims only the name
`rscore` in site-packages: `rscore.r_scorer` (the R workers), `rscore.sidecar` (the
HTTPS front of a scoring pod), `rscore.autoscaler` (the controller),
`rscore.activator` (scale from zero), `rscore.sim` (the simulator) and `rscore.cli`
(the `rscore` command). Nothing is imported here: each part loads only what it needs.
"""
