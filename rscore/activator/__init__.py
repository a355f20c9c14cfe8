"""`rscore activator`: holds requests while no scoring pod is ready, then forwards them.

`hold` decides (pure), `proxy` moves bytes (aiohttp), `metrics` counts, `serve` binds
sockets and handles signals.
"""
