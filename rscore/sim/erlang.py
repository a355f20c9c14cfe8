"""Queueing theory the simulator is checked against: Erlang B and C, M/M/c waits,
M/M/c/K blocking.

Pure functions of rates; used by the tests and the benchmark.
Never simulates anything.
"""

from __future__ import annotations

import math

__all__ = [
    "erlang_b",
    "erlang_c",
    "mmc_mean_wait",
    "mmck_blocking",
]


def erlang_b(servers: int, offered: float) -> float:
    """Blocking probability of M/M/c/c with `offered` = lambda / mu (stable recursion)."""
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return b


def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (requires offered < servers)."""
    if offered >= servers:
        return 1.0
    b = erlang_b(servers, offered)
    return servers * b / (servers - offered * (1.0 - b))


def mmc_mean_wait(servers: int, arrival_rate: float, service_rate: float) -> float:
    """Mean time in queue (not counting service) of M/M/c."""
    offered = arrival_rate / service_rate
    if offered >= servers:
        return math.inf
    return erlang_c(servers, offered) / (servers * service_rate - arrival_rate)


def mmck_blocking(servers: int, capacity: int, arrival_rate: float, service_rate: float) -> float:
    """P(an arrival finds the system full) in M/M/c/K: c servers, K places in all."""
    offered = arrival_rate / service_rate
    weights = [1.0]
    for n in range(1, capacity + 1):
        weights.append(weights[-1] * offered / min(n, servers))
    return weights[-1] / sum(weights)
