"""The one `Settings` object: read from the environment (`GATEWAY_` prefix) once, then injected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.routing.health import BreakerPolicy
from providers.base import ProviderEndpoint

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


class Settings(BaseSettings):
    """Gateway configuration. Provider keys come from FAL_KEY and REPLICATE_API_TOKEN, as the providers' SDKs."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = Field(default=1, ge=1)
    admin_key: SecretStr | None = None
    catalog_path: Path = PROJECT_ROOT / "config" / "models.yaml"
    log_level: str = "info"

    # Redis: an external URL, or (unset) an embedded redis-server with AOF persistence under data_dir.
    redis_url: str | None = None
    data_dir: Path = Path(".data")
    # The embedded Redis's AOF fsync policy: "always" keeps every settled usage record through a Redis crash.
    embedded_redis_fsync: Literal["always", "everysec"] = "always"
    redis_timeout_s: float = 2.0
    redis_max_connections: int = Field(default=1000, ge=1)

    # Providers: base URLs are settings so the real services and the simulators are one code path.
    fal_base_url: str = "https://queue.fal.run"
    replicate_base_url: str = "https://api.replicate.com"
    fal_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("FAL_KEY", "GATEWAY_FAL_KEY"))
    replicate_api_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REPLICATE_API_TOKEN", "GATEWAY_REPLICATE_API_TOKEN")
    )
    provider_connect_timeout_s: float = 5.0
    provider_read_timeout_s: float = 75.0
    provider_initial_poll_interval_s: float = 0.05
    provider_max_poll_interval_s: float = 1.0
    provider_max_connections: int = 1000

    # One deadline per request, from arrival to the last byte of the answer. Clients may ask for another
    # with the `x-gateway-timeout` header (seconds), capped at max_request_timeout_s.
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_request_timeout_s: float = Field(default=300.0, gt=0)

    # Health: circuit breaker per deployment, shared by every instance through Redis.
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_window_s: float = Field(default=60.0, gt=0)
    breaker_min_requests: int = Field(default=20, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_open_s: float = Field(default=30.0, gt=0)
    breaker_half_open_probes: int = Field(default=1, ge=1)
    breaker_successes_to_close: int = Field(default=2, ge=1)
    breaker_auth_open_s: float = Field(default=300.0, gt=0)
    health_cache_ttl_s: float = Field(default=0.25, ge=0)

    # Teams and keys: how long a key check is trusted (revocation reaches every instance within this),
    # and how long a cached key keeps working while Redis is unreachable.
    auth_cache_ttl_s: float = Field(default=2.0, ge=0)
    auth_stale_ttl_s: float = Field(default=300.0, ge=0)
    # While Redis is down: "open" serves and spools usage (budgets are enforced again when it is back),
    # "closed" refuses team requests with 503 rather than risk overspending a budget.
    budget_policy_on_redis_down: Literal["open", "closed"] = "open"
    spool_replay_interval_s: float = Field(default=2.0, gt=0)
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)

    # Retry budget (per instance): failover retries in flight <= max(min, ratio * requests in flight).
    retry_budget_ratio: float = Field(default=0.2, ge=0)
    retry_budget_min: int = Field(default=3, ge=0)

    # Upload and download caps.
    max_upload_file_bytes: int = 20 * MiB
    max_upload_total_bytes: int = 50 * MiB
    max_json_body_bytes: int = 1 * MiB
    max_input_pixels: int = 40_000_000  # refuses decompression bombs before decoding
    max_output_image_bytes: int = 64 * MiB
    max_prompt_chars: int = 32_000

    def breaker_policy(self) -> BreakerPolicy:
        """The circuit-breaker thresholds, for the health store."""
        return BreakerPolicy(
            consecutive_failures=self.breaker_consecutive_failures,
            window_s=self.breaker_window_s,
            min_requests=self.breaker_min_requests,
            failure_rate=self.breaker_failure_rate,
            open_s=self.breaker_open_s,
            half_open_probes=self.breaker_half_open_probes,
            successes_to_close=self.breaker_successes_to_close,
            auth_open_s=self.breaker_auth_open_s,
        )

    def provider_endpoint(self, provider: str) -> ProviderEndpoint:
        """Where and how to reach `provider`, for its adapter."""
        base_url, key = {
            "fal": (self.fal_base_url, self.fal_key),
            "replicate": (self.replicate_base_url, self.replicate_api_token),
        }.get(provider, (None, None))
        if base_url is None:
            raise LookupError(f"no endpoint settings for provider {provider!r}")
        return ProviderEndpoint(
            base_url=base_url.rstrip("/"),
            api_key=key.get_secret_value() if key else "",
            connect_timeout=self.provider_connect_timeout_s,
            read_timeout=self.provider_read_timeout_s,
            initial_poll_interval=self.provider_initial_poll_interval_s,
            max_poll_interval=self.provider_max_poll_interval_s,
            max_connections=self.provider_max_connections,
        )
