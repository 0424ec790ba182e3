"""Team API keys: the `fgk_{team}_{key_id}_{secret}` format, and hashing of the secret part.

Only sha256(secret) is ever stored. A raw key is shown once, at creation, and is never logged or stored.
Team ids cannot contain `_`, so `removeprefix("fgk_").split("_", 2)` splits a key unambiguously even though
the urlsafe secret may contain `_` itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

KEY_PREFIX = "fgk_"
TEAM_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"
_TEAM_ID = re.compile(TEAM_ID_PATTERN)
_KEY_ID = re.compile(KEY_ID_PATTERN)
# token_urlsafe(32) is 43 characters; the cap only keeps absurd inputs from being hashed at all.
_MAX_SECRET_CHARS = 128


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """The parts of a well-formed raw key; the secret stays out of reprs and logs."""

    team: str
    key_id: str
    secret: str = field(repr=False)


def is_team_id(text: str) -> bool:
    """Whether `text` is a valid team id (lowercase letters, digits and `-`, at most 40 characters)."""
    return _TEAM_ID.fullmatch(text) is not None


def is_key_id(text: str) -> bool:
    """Whether `text` is a valid key id (12 lowercase hex characters)."""
    return _KEY_ID.fullmatch(text) is not None


def new_key_id() -> str:
    """A random key id: 12 lowercase hex characters."""
    return secrets.token_hex(6)


def new_secret() -> str:
    """A random secret with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def format_key(team: str, key_id: str, secret: str) -> str:
    """The raw key a client sends as its bearer token."""
    return f"{KEY_PREFIX}{team}_{key_id}_{secret}"


def parse_key(raw: str) -> ParsedKey | None:
    """The parts of `raw`, or None unless it is a well-formed team key."""
    if not raw.startswith(KEY_PREFIX):
        return None
    parts = raw.removeprefix(KEY_PREFIX).split("_", 2)
    if len(parts) != 3:
        return None
    team, key_id, secret = parts
    if not (is_team_id(team) and is_key_id(key_id) and 0 < len(secret) <= _MAX_SECRET_CHARS):
        return None
    return ParsedKey(team, key_id, secret)


def hash_secret(secret: str) -> str:
    """The stored form of a secret: sha256, hex. The secret has 256 bits of entropy, so no salt or KDF."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether `secret` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def cache_fingerprint(raw: str) -> bytes:
    """A digest of a whole raw key, so caches index keys without holding them."""
    return hashlib.sha256(raw.encode()).digest()
