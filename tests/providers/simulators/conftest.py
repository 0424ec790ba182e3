"""HTTP clients and input images for the simulator tests (the simulators come from tests/providers)."""

from __future__ import annotations

import base64
import io
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from PIL import Image

from providers.simulators.server import SimulatorThread

DataUriFactory = Callable[..., str]


# Clients are per session: building an httpx client loads a CA bundle, ~50 ms each time.
@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """A plain httpx client (no auth), e.g. for file URLs, which need none."""
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def _fal_session_http(simulators: SimulatorThread) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Key {simulators.fal_key}"}
    with httpx.Client(base_url=simulators.fal_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture(scope="session")
def _replicate_session_http(simulators: SimulatorThread) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {simulators.replicate_key}"}
    with httpx.Client(base_url=simulators.replicate_url, headers=headers, timeout=10) as client:
        yield client


@pytest.fixture
def fal_http(sims: SimulatorThread, _fal_session_http: httpx.Client) -> httpx.Client:
    """An httpx client for the (freshly reset) fal simulator, authenticated with its key."""
    return _fal_session_http


@pytest.fixture
def replicate_http(sims: SimulatorThread, _replicate_session_http: httpx.Client) -> httpx.Client:
    """An httpx client for the (freshly reset) Replicate simulator, authenticated with its token."""
    return _replicate_session_http


@pytest.fixture
def data_uri() -> DataUriFactory:
    """Make a solid-colour image as a data: URI: data_uri((r, g, b), size=(w, h), fmt="PNG")."""

    def make(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> str:
        out = io.BytesIO()
        Image.new("RGB", size, color).save(out, fmt)
        return f"data:image/{fmt.lower()};base64,{base64.b64encode(out.getvalue()).decode()}"

    return make


@dataclass(frozen=True)
class TlsSimulators:
    """Simulators served over TLS with a throwaway CA, for SDKs that insist on https://."""

    sims: SimulatorThread
    ca_file: Path
    ssl_context: ssl.SSLContext


@pytest.fixture(scope="session")
def _tls_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSimulators]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    ca_file, server_pem = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    context = ssl.create_default_context(cafile=str(ca_file))
    with SimulatorThread(
        queue_ms=0, run_ms=20, ssl_certfile=str(server_pem), ssl_keyfile=str(server_pem), replicate_tls=True
    ) as running:
        yield TlsSimulators(running, ca_file, context)


@pytest.fixture
def tls(_tls_session: TlsSimulators, monkeypatch: pytest.MonkeyPatch) -> TlsSimulators:
    """The TLS simulators, reset, with SSL_CERT_FILE trusting their CA (httpx reads it per client)."""
    _tls_session.sims.reset()
    monkeypatch.setenv("SSL_CERT_FILE", str(_tls_session.ca_file))
    return _tls_session


@pytest.fixture(scope="session")
def tls_http(_tls_session: TlsSimulators) -> Iterator[httpx.Client]:
    """An httpx client trusting the TLS simulators' CA (no auth: for /_sim and file URLs)."""
    with httpx.Client(verify=_tls_session.ssl_context, timeout=10) as client:
        yield client
