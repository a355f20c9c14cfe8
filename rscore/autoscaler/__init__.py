"""The autoscaler: a pure scaling policy (`policy`) and an in-cluster controller.

Never imports `sidecar`: it reads pods' metrics by the names in ARCHITECTURE.md.
"""
