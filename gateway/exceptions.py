"""Every error the gateway raises or translates, and the HTTP answer each one becomes.

Provider adapters translate their protocol's failures into the `ProviderError` branch at their boundary;
nothing provider-specific (status codes, bodies, keys) travels past it. The API layer turns any
`GatewayError` into OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`.

    GatewayError
    ├── InvalidRequest             400 invalid_request_error   client input is wrong (carries `param`)
    │   └── PayloadTooLarge        413 invalid_request_error   an upload over the configured cap
    ├── AuthenticationFailed       401 authentication_error    missing or unknown gateway key
    ├── PermissionDenied           403 permission_error        a valid key without the right (admin routes)
    ├── ModelNotFound              404 invalid_request_error   code model_not_found
    ├── NotFound                   404 invalid_request_error   an unknown team or key (admin API)
    ├── Conflict                   409 invalid_request_error   the thing being created already exists
    ├── AuthUnavailable            503 server_error            Redis is down and the key is not in the local cache
    ├── QuotaExceeded              429 rate_limit_error        rpm / concurrency limit, or insufficient_quota (budget)
    ├── MeteringUnavailable        503 server_error            Redis is down and budgets are set to fail closed
    ├── DeadlineExceeded           504 timeout_error           the request's deadline ran out
    ├── NoHealthyDeployment        503 server_error            every deployment is ejected (carries retry_after)
    └── ProviderError              a provider failed (raised by adapters only)
        ├── RetryableProviderError      502   another attempt, elsewhere or later, may succeed
        │   ├── ProviderUnavailable     502   connect error, 5xx, malformed or unexpected response
        │   ├── ProviderRateLimited     503   429 from the provider; carries retry_after seconds
        │   └── ProviderTimeout         504   the provider did not answer in time
        └── PermanentProviderError      502   retrying the same input will fail the same way
            ├── ProviderRejectedInput   400   the provider refused the input (422 and the like)
            ├── ContentPolicyViolation  400   code content_policy_violation
            └── ProviderAuthError       502   our provider credentials are wrong: an operator problem,
                                              never the client's, so never a 401 to the client
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after: float | None = None  # seconds; sent as `retry-after` when set
    headers: dict[str, str] | None = None  # extra response headers (e.g. x-ratelimit-*)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    @property
    def retryable(self) -> bool:
        """Whether the client may get a different answer by retrying (drives `x-should-retry`)."""
        if self.code == "insufficient_quota":
            return False  # the budget will not refill in the seconds an SDK waits between retries
        return self.status_code >= 500 or self.status_code == 429


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status_code = 413


class AuthenticationFailed(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class AuthUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "auth_unavailable"


class QuotaExceeded(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        error_type: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        if error_type is not None:
            self.error_type = error_type
        self.retry_after = retry_after
        self.headers = headers


class MeteringUnavailable(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "metering_unavailable"


class DeadlineExceeded(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"


class NoHealthyDeployment(GatewayError):
    status_code = 503
    error_type = "server_error"
    code = "no_healthy_deployment"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderError(GatewayError):
    """A provider failed. `provider` names the deployment's provider for logs, never for clients."""

    status_code = 502
    error_type = "server_error"
    code = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.provider = provider


class RetryableProviderError(ProviderError):
    pass


class ProviderUnavailable(RetryableProviderError):
    code = "provider_unavailable"


class ProviderRateLimited(RetryableProviderError):
    status_code = 503
    code = "provider_rate_limited"

    def __init__(self, message: str, *, provider: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class ProviderTimeout(RetryableProviderError):
    status_code = 504
    error_type = "timeout_error"
    code = "provider_timeout"


class PermanentProviderError(ProviderError):
    pass


class ProviderRejectedInput(PermanentProviderError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "provider_rejected_input"


class ContentPolicyViolation(PermanentProviderError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "content_policy_violation"


class ProviderAuthError(PermanentProviderError):
    code = "provider_auth_error"
