"""The aiohttp sidecar: HTTP API, auth, TLS, admission, batching, metrics, drain.

Talks to R only through the client side of the worker protocol (`rscore.r_scorer.pool`) and the
pure conversions in `rscore.r_scorer.payload` / `rscore.r_scorer.prototype`; it never imports rpy2.
"""
