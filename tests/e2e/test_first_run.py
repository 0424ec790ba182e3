"""The README's first run: `flux-gateway serve --simulate` with an embedded Redis, then the printed examples."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import httpx
from openai import OpenAI

from gateway.child_server import ChildServer, python_module
from gateway.cli import LOCAL_ADMIN_KEY
from gateway.redis_server import free_port


def test_serve_simulate_runs_everything_and_the_printed_curl_works(tmp_path: Path) -> None:
    port, fal_port, replicate_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "data"
    args = ["--port", str(port), "--fal-port", str(fal_port), "--replicate-port", str(replicate_port)]
    server = ChildServer(
        "serve-simulate",
        python_module("gateway", "serve", "--simulate", *args),
        [f"http://127.0.0.1:{port}/readyz"],
        env={"GATEWAY_DATA_DIR": str(data_dir)},
        log_dir=tmp_path,
    )
    for inherited in ("GATEWAY_ADMIN_KEY", "GATEWAY_REDIS_URL"):  # the first run has neither
        server.env.pop(inherited, None)
    server.start()
    try:
        banner = server.log_text()
        assert LOCAL_ADMIN_KEY in banner
        curl = re.search(r"(curl -s .*?)\n\n", banner, re.S)
        assert curl, banner
        command = curl.group(1).replace("\\\n", " ")
        result = subprocess.run(shlex.split(command), capture_output=True, timeout=30, check=True)
        assert b'"url"' in result.stdout, result.stdout

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=LOCAL_ADMIN_KEY, max_retries=0)
        image = client.images.generate(model="flux.2-klein-4b", prompt="a lighthouse", size="1024x1024")
        assert httpx.get(image.data[0].url).status_code == 200
    finally:
        server.stop()
    # Redis 6 writes appendonly.aof, Redis 7 an appendonlydir/.
    aof = [data_dir / "appendonly.aof", data_dir / "appendonlydir"]
    assert any(p.exists() for p in aof), "the embedded Redis persisted with AOF under the data dir"
    # Everything the gateway started is gone: the simulators' ports are free again.
    for p in (port, fal_port, replicate_port):
        try:
            httpx.get(f"http://127.0.0.1:{p}/", timeout=0.5)
            raise AssertionError(f"port {p} still answers after the gateway stopped")
        except httpx.ConnectError:
            pass
