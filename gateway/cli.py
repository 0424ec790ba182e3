"""`flux-gateway`: run the gateway (`serve`) or the provider simulators (`simulate`); manage `teams` and `keys`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence

import uvicorn
from pydantic import SecretStr

from gateway import admin_cli
from gateway.child_server import ChildServer, python_module
from gateway.redis_server import EmbeddedRedis
from gateway.settings import Settings

LOCAL_ADMIN_KEY = "sk-flux-local-dev"
# The simulators' keys under `serve --simulate`: local values, never a real provider key.
SIM_FAL_KEY = "sim-fal-local-key"
SIM_REPLICATE_KEY = "sim-replicate-local-key"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flux-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--simulate", action="store_true", help="start local fal + Replicate simulators and use them")
    serve.add_argument("--host", help="bind address (default: GATEWAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: GATEWAY_PORT or 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default: GATEWAY_WORKERS or 1)")
    serve.add_argument("--fal-port", type=int, default=9101, help="fal simulator port with --simulate")
    serve.add_argument("--replicate-port", type=int, default=9102, help="Replicate simulator port with --simulate")

    commands.add_parser(
        "simulate",
        help="run the fal and Replicate simulators (flags: see `flux-gateway simulate --help`)",
        add_help=False,
    )
    admin_cli.add_commands(commands)
    args, rest = parser.parse_known_args(argv)
    if args.command == "simulate":
        from providers.simulators.server import main as simulate_main

        return simulate_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {
        name: value for name in ("host", "port", "workers") if (value := getattr(args, name)) is not None
    }
    settings = Settings().model_copy(update=overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per provider call is noise; we log per request
    # uvicorn re-raises SIGTERM after its own graceful shutdown; as an exception it unwinds the ExitStack
    # below (simulators, embedded Redis) instead of killing the process before the cleanup runs.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if not args.simulate and settings.admin_key is None:
        print("error: set GATEWAY_ADMIN_KEY (the key clients send), or run with --simulate for a local key.")
        return 2
    with contextlib.ExitStack() as stack:
        if args.simulate:
            fal_url, replicate_url = stack.enter_context(_simulators(args.fal_port, args.replicate_port))
            settings = settings.model_copy(
                update={
                    "fal_base_url": fal_url,
                    "replicate_base_url": replicate_url,
                    "fal_key": SecretStr(SIM_FAL_KEY),
                    "replicate_api_token": SecretStr(SIM_REPLICATE_KEY),
                    "admin_key": settings.admin_key or SecretStr(LOCAL_ADMIN_KEY),
                }
            )
        if not settings.redis_url:
            redis = stack.enter_context(EmbeddedRedis(settings.data_dir, fsync=settings.embedded_redis_fsync))
            settings = settings.model_copy(update={"redis_url": redis.url})
            print(f"embedded redis-server on {redis.url} (AOF in {redis.data_dir})", flush=True)
        _print_banner(settings, simulated=args.simulate)
        _run_uvicorn(settings)
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_uvicorn(settings: Settings) -> None:
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": False,  # the gateway logs one line per image request itself
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers == 1:
        from gateway.app import create_app

        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # Worker processes rebuild Settings from the environment, so hand them everything we resolved.
    os.environ.update(_settings_env(settings))
    uvicorn.run("gateway.app:create_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]


def _settings_env(settings: Settings) -> dict[str, str]:
    env = {
        "GATEWAY_REDIS_URL": settings.redis_url or "",
        "GATEWAY_FAL_BASE_URL": settings.fal_base_url,
        "GATEWAY_REPLICATE_BASE_URL": settings.replicate_base_url,
    }
    for name, secret in (
        ("GATEWAY_ADMIN_KEY", settings.admin_key),
        ("FAL_KEY", settings.fal_key),
        ("REPLICATE_API_TOKEN", settings.replicate_api_token),
    ):
        if secret is not None:
            env[name] = secret.get_secret_value()
    return env


@contextlib.contextmanager
def _simulators(fal_port: int, replicate_port: int) -> Iterator[tuple[str, str]]:
    """Run both simulators in a child process, so they never compete with the gateway's event loop."""
    urls = (f"http://127.0.0.1:{fal_port}", f"http://127.0.0.1:{replicate_port}")
    args = ["--host", "127.0.0.1", "--fal-port", str(fal_port), "--replicate-port", str(replicate_port)]
    env = {"FAL_KEY": SIM_FAL_KEY, "REPLICATE_API_TOKEN": SIM_REPLICATE_KEY}
    with ChildServer(
        "simulators", python_module("providers.simulators", *args), [f"{u}/_sim/stats" for u in urls], env=env
    ):
        print(f"simulators: fal {urls[0]}  replicate {urls[1]}", flush=True)
        yield urls


def _print_banner(settings: Settings, *, simulated: bool) -> None:
    key = settings.admin_key.get_secret_value() if simulated and settings.admin_key else "$GATEWAY_ADMIN_KEY"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    print(
        f"""
flux-gateway on {base}  (providers: {"local simulators" if simulated else "real fal + Replicate"})
API key: {key}

Try it:
  curl -s {base}/v1/images/generations \\
    -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "flux.2-klein-4b", "prompt": "a lighthouse at dusk", "size": "1024x1024"}}'

  python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
image = client.images.generate(model="flux.2-klein-4b", prompt="a lighthouse at dusk", size="1024x1024")
print(image.data[0].url)
EOF
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
