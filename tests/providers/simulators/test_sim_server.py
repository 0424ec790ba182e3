"""Running the simulators: SimulatorThread, serve() in an event loop, and the command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from providers.simulators.control import Fault
from providers.simulators.server import SimulatorThread, main, serve, split_faults

REPO = Path(__file__).resolve().parents[3]
T2I = "/fal-ai/flux-2/klein/4b"
CREATE = "/v1/models/black-forest-labs/flux-2-klein-4b/predictions"


def test_thread_serves_both_and_stops_cleanly() -> None:
    with SimulatorThread(fal_key="k-fal", replicate_key="k-rep", faults=["http_500:submit:1", "stuck:any:1"]) as sims:
        assert sims.fal_url.startswith("http://127.0.0.1:") and sims.replicate_url.startswith("http://127.0.0.1:")
        assert (sims.fal_key, sims.replicate_key) == ("k-fal", "k-rep")
        with httpx.Client(timeout=5) as client:
            fal = {"Authorization": "Key k-fal"}
            assert client.post(sims.fal_url + T2I, headers=fal, json={"prompt": "x"}).status_code == 500
            assert client.post(sims.fal_url + T2I, headers=fal, json={"prompt": "x"}).status_code == 200
            rep = {"Authorization": "Bearer k-rep"}
            prediction = client.post(sims.replicate_url + CREATE, headers=rep, json={"input": {"prompt": "x"}})
            assert client.get(sims.replicate_url + "/_sim/stats").json()["jobs"][0]["fault"] == "stuck"
            assert prediction.status_code == 201
            urls = (sims.fal_url, sims.replicate_url)
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/_sim/stats", timeout=1)
    sims.stop()  # idempotent


def test_stop_releases_held_requests() -> None:
    sims = SimulatorThread().start()
    answers: list[int | str] = []

    def hold(method: str, url: str, **kwargs: object) -> None:
        try:
            answers.append(httpx.request(method, url, timeout=30, **kwargs).status_code)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    with httpx.Client(timeout=5) as client:
        client.post(sims.fal_url + "/_sim/faults", json={"kind": "hang", "on": "submit"}).raise_for_status()
        client.post(sims.replicate_url + "/_sim/config", json={"queue_ms": 60_000}).raise_for_status()
    fal = {"Authorization": f"Key {sims.fal_key}"}
    rep = {"Authorization": f"Bearer {sims.replicate_key}", "Prefer": "wait"}
    holders = [
        threading.Thread(target=hold, args=("POST", sims.fal_url + T2I), kwargs={"headers": fal, "json": {}}),
        threading.Thread(
            target=hold,
            args=("POST", sims.replicate_url + CREATE),
            kwargs={"headers": rep, "json": {"input": {"prompt": "x"}}},
        ),
    ]
    for holder in holders:
        holder.start()
    time.sleep(0.3)
    started = time.monotonic()
    sims.stop()
    assert time.monotonic() - started < 3
    for holder in holders:
        holder.join(5)
    assert sorted(map(str, answers)) == ["201", "504"]


def test_reset_restores_latency_but_clears_startup_faults() -> None:
    with (
        SimulatorThread(queue_ms=5, run_ms=6, faults=[Fault.parse("http_503:status")]) as sims,
        httpx.Client(timeout=5) as client,
    ):
        assert len(client.get(sims.fal_url + "/_sim/faults").json()["faults"]) == 1
        assert client.get(sims.replicate_url + "/_sim/faults").json()["faults"] == []  # no `status` op there
        client.post(sims.fal_url + "/_sim/config", json={"queue_ms": 100}).raise_for_status()
        sims.reset()
        assert client.get(sims.fal_url + "/_sim/config").json() == {"queue_ms": 5, "run_ms": 6}
        assert client.get(sims.fal_url + "/_sim/faults").json()["faults"] == []


def test_split_faults_routes_by_op() -> None:
    fal, rep = split_faults(["http_500:submit", "http_429:create", "malformed:file:2", "hang"])
    assert [f.on for f in fal] == ["submit", "file", "any"]
    assert [f.on for f in rep] == ["create", "file", "any"]
    with pytest.raises(ValueError, match="not an op"):
        split_faults(["http_500:upload"])
    with pytest.raises(ValueError, match="kind"):
        split_faults(["meltdown"])


async def test_serve_runs_in_this_loop_until_cancelled() -> None:
    announced: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            "127.0.0.1",
            0,
            0,
            fal_key="a",
            replicate_key="b",
            queue_ms=0,
            run_ms=1,
            on_ready=lambda fal, rep: announced.set_result((fal, rep)),
        )
    )
    fal_url, replicate_url = await asyncio.wait_for(announced, 5)
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(fal_url + "/_sim/config")).json() == {"queue_ms": 0, "run_ms": 1}
        response = await client.post(replicate_url + CREATE, headers={"Authorization": "Token b"}, json={"input": {}})
        assert response.status_code == 422
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    async with httpx.AsyncClient(timeout=1) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(fal_url + "/_sim/stats")


def test_cli_serves_until_sigint() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("FAL_KEY", "REPLICATE_API_TOKEN")}
    env["FAL_KEY"] = "cli-secret-fal-key"
    command = [sys.executable, "-m", "providers.simulators", "--fal-port", "0", "--replicate-port", "0"]
    command += ["--queue-ms", "0", "--run-ms", "10", "--fault", "http_500:submit:1"]
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cli:
        try:
            assert cli.stdout is not None
            fal_line, replicate_line = cli.stdout.readline(), cli.stdout.readline()
            assert "cli-secret-fal-key" not in fal_line  # a key from the environment is never printed
            assert "Bearer sim-replicate-local-key" in replicate_line  # the fixed local key is
            fal_url = fal_line.split()[2]
            headers = {"Authorization": "Key cli-secret-fal-key"}
            with httpx.Client(timeout=5) as client:
                assert client.post(fal_url + T2I, headers=headers, json={"prompt": "x"}).status_code == 500
                assert client.post(fal_url + T2I, headers=headers, json={"prompt": "x"}).status_code == 200
            cli.send_signal(signal.SIGINT)
            assert cli.wait(10) == 0
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()


def test_cli_rejects_a_bad_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--fault", "meltdown:submit"])
    assert exited.value.code == 2
    assert "meltdown" in capsys.readouterr().err


def test_a_server_that_cannot_start_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(RuntimeError, match="did not start") as raised:
        SimulatorThread(ssl_certfile=str(bad), ssl_keyfile=str(bad)).start()
    assert raised.value.__cause__ is not None
