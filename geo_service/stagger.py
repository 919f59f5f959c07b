"""Staggered openings: a task may open for players group by group, `step_s` apart from `starts_at`, so a crowd
does not claim in the same second. A player's group is FNV-1a (32 bits) of the UTF-8 bytes of their user id, mod
the number of groups: the same function as geodrop-client.js's groupOf, so a client knows its opening without
asking (tests/play/test_client_rules.py checks that the two agree)."""

from __future__ import annotations

FNV_OFFSET_BASIS = 2166136261
FNV_PRIME = 16777619
_MASK = 0xFFFFFFFF


def fnv1a_32(data: bytes) -> int:
    """Return the 32-bit FNV-1a hash of `data`, unsigned."""
    value = FNV_OFFSET_BASIS
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & _MASK
    return value


def group_of(user_id: str, groups: int) -> int:
    """Return the player's group (0 to groups - 1) of a task staggered over `groups` groups."""
    if groups < 1:
        raise ValueError(f"groups must be 1 or more; got {groups}")
    return fnv1a_32(user_id.encode("utf-8")) % groups


def opens_at(user_id: str, groups: int, step_s: float, starts_at: float) -> float:
    """Return when (epoch seconds) a staggered task opens for the player: starts_at + group * step_s."""
    if groups == 1:  # most tasks: no hash on the claim path
        return starts_at
    return starts_at + group_of(user_id, groups) * step_s
