"""The R scorer: model bundles, R worker processes, and R <-> JSON conversion.

Pure modules (`bundle`, `payload`, `prototype`, `protocol`, `cores`, `errors`,
`liveness`, `peer`, `name_cache`) never import rpy2, so the sidecar may use them;
`rmodel`, `rconvert` and `worker` run R.
"""
