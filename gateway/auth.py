"""Who is calling: the gateway API key in `Authorization: Bearer <key>`.

For now one key is accepted, `GATEWAY_ADMIN_KEY`; teams and per-key identities build on `KeyVerifier`.
"""

from __future__ import annotations

import hmac

from gateway.exceptions import AuthenticationFailed


class KeyVerifier:
    """Checks bearer keys in constant time; never echoes a presented key."""

    def __init__(self, admin_key: str) -> None:
        if not admin_key:
            raise ValueError("an admin key is required")
        self._admin_key = admin_key.encode()

    def verify(self, authorization: str | None) -> None:
        """Raise AuthenticationFailed unless `authorization` is `Bearer <a known key>`."""
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key. Send it as 'Authorization: Bearer <key>' (the openai SDKs do this from api_key)."
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer <key>'.")
        if not hmac.compare_digest(key.strip().encode(), self._admin_key):
            raise AuthenticationFailed("Incorrect API key provided.")
