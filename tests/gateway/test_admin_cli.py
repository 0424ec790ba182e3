"""`flux-gateway teams|keys ...` against the admin API served over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from gateway.cli import main
from gateway.redis_server import EmbeddedRedis, free_port
from tests.gateway.admin_app import ADMIN_KEY, serve_admin_app

Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with (
        EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False) as server,
        serve_admin_app(server.url) as url,
    ):
        yield url


@pytest.fixture
def cli(base_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs `flux-gateway <args>` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("GATEWAY_URL", base_url)
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_teams_create_list_and_update(cli: Cli) -> None:
    code, out, _ = cli("teams", "create", "cli-team", "--name", "CLI Team", "--rpm", "100", "--budget-usd", "12.5")
    assert code == 0
    assert "cli-team" in out
    assert "CLI Team" in out
    assert "$12.500000/month" in out

    code, out, _ = cli("teams", "list")
    assert code == 0
    assert "cli-team" in out

    code, out, _ = cli("teams", "update", "cli-team", "--rpm", "none", "--budget-period", "day", "--concurrency", "3")
    assert code == 0
    fields = dict(line.split(maxsplit=1) for line in out.splitlines()[1:] if line.strip())
    assert fields["team"].strip() == "cli-team"
    assert fields["rpm"].strip() == "unlimited"  # `none` cleared it
    assert fields["concurrency"].strip() == "3"
    assert fields["budget"].strip() == "$12.500000/day"

    code, out, _ = cli("teams", "list")
    row = next(line for line in out.splitlines() if "cli-team" in line).split()
    assert row[row.index("cli-team") :] == ["cli-team", "CLI", "Team", "-", "3", "$12.500000/day", row[-1]]


def test_keys_create_list_and_revoke(cli: Cli) -> None:
    assert cli("teams", "create", "key-team")[0] == 0
    assert cli("keys", "list", "--team", "key-team")[1].strip() == "API keys: none"
    code, out, _ = cli(
        "keys", "create", "--team", "key-team", "--name", "ci", "--models", "flux-2-klein-4b", "--budget-usd", "5"
    )
    assert code == 0
    assert "shown only once" in out
    raw = next(line.strip() for line in out.splitlines() if line.strip().startswith("fgk_key-team_"))
    key_id = raw.split("_")[2]
    assert "flux.2-klein-4b" in out
    assert "$5.000000/month" in out

    code, out, _ = cli("keys", "list", "--team", "key-team")
    assert code == 0
    assert key_id in out
    assert "active" in out
    assert raw not in out

    code, out, _ = cli("keys", "revoke", "key-team", key_id)
    assert code == 0
    assert "revoked" in out
    code, out, _ = cli("keys", "list")
    assert key_id in out
    assert "revoked" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("teams", "create", "Bad_Id"), "Invalid parameter id"),
        (("keys", "create", "--team", "no-such-team"), "No team 'no-such-team'. (HTTP 404)"),
        (("keys", "revoke", "no-such-team", "0123456789ab"), "(HTTP 404)"),
        (("teams", "create", "x", "--budget-usd", "0.0000001"), "at most 6 decimal places"),
        (("keys", "list", "--admin-key", "sk-wrong"), "Incorrect API key provided. (HTTP 401)"),
    ],
)
def test_api_errors_print_one_clean_line_and_exit_1(cli: Cli, args: tuple[str, ...], message: str) -> None:
    code, out, err = cli(*args)
    assert code == 1
    assert err.startswith("error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in out + err


def test_connection_failure_exits_1(cli: Cli) -> None:
    code, _, err = cli("teams", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert err.startswith("error: cannot reach the gateway at http://127.0.0.1:")


def test_missing_admin_key_exits_2(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_KEY")
    code, _, err = cli("teams", "list")
    assert code == 2
    assert "GATEWAY_ADMIN_KEY" in err


def test_python_dash_m_gateway_runs_the_cli(base_url: str) -> None:
    env = {**os.environ, "GATEWAY_URL": base_url, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    subprocess.run([sys.executable, "-m", "gateway", "teams", "create", "sub-team"], env=env, check=True)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "teams", "list"], env=env, capture_output=True, text=True, check=True
    )
    assert "sub-team" in done.stdout
