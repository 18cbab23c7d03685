"""Heartbeats, the reading side: which worker and scheduler processes are alive, and the sweeps'
running totals (``engine.core.heartbeat`` writes them)."""

from __future__ import annotations

import json
from typing import Any

import redis

from engine.core.heartbeat import SCHEDULER_PREFIX, SWEEP_TOTALS_KEY, WORKER_PREFIX


def _read(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    keys = sorted(client.scan_iter(match=prefix + "*", count=500))
    if not keys:
        return []
    found = []
    for key, raw in zip(keys, client.mget(keys), strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        facts = json.loads(raw)
        facts["ttl_s"] = client.ttl(key)
        found.append(facts)
    return found


def workers(client: redis.Redis) -> list[dict[str, Any]]:
    """The heartbeats of the worker processes alive now."""
    return _read(client, WORKER_PREFIX)


def schedulers(client: redis.Redis) -> list[dict[str, Any]]:
    """The heartbeats of the scheduler processes alive now, each with its last sweep."""
    return _read(client, SCHEDULER_PREFIX)


def sweep_totals(client: redis.Redis) -> dict[str, float]:
    """Running totals of every sweep since Redis last lost its data."""
    raw = client.hgetall(SWEEP_TOTALS_KEY)
    return {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in raw.items()}
