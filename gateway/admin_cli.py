"""`flux-gateway teams|keys|usage ...`: manage teams and keys, and read usage, through a gateway's HTTP API."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.text import Text

from gateway.admin_tables import key_fields, list_table, record, team_fields

COMMANDS = frozenset({"teams", "keys", "usage"})
DEFAULT_URL = "http://127.0.0.1:8080"
UNSET = ("none", "null", "unlimited")  # `teams update --rpm none` clears a limit
LIMIT_FLAGS = ("rpm", "concurrency", "budget_usd", "budget_period")


class AdminError(Exception):
    """A failure to show the user as one line: the API's message, or why the gateway could not be reached."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `teams` and `keys` command groups to the `flux-gateway` parser."""
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default=os.environ.get("GATEWAY_URL", DEFAULT_URL), help="gateway base URL")
    conn.add_argument("--admin-key", default=os.environ.get("GATEWAY_ADMIN_KEY"), help="default: $GATEWAY_ADMIN_KEY")
    # Limit flags default to absent (not None), so `update` sends only what was given and `none` clears.
    limits = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    limits.add_argument("--rpm", type=_optional(int), help="requests per minute (`none`: unlimited)")
    limits.add_argument("--concurrency", type=_optional(int), help="requests in flight (`none`: unlimited)")
    limits.add_argument("--budget-usd", type=_optional(str), help="spend per period, e.g. 250 or 12.50")
    limits.add_argument("--budget-period", choices=("day", "month", "total"), help="default: month")

    teams = subparsers.add_parser("teams", help="create, list and update teams").add_subparsers(required=True)
    create = teams.add_parser("create", parents=[conn, limits], help="create a team")
    create.add_argument("id", help="team id: lowercase letters, digits and '-'")
    create.add_argument("--name")
    create.set_defaults(admin_action=_create_team)
    teams.add_parser("list", parents=[conn], help="list teams").set_defaults(admin_action=_list_teams)
    update = teams.add_parser("update", parents=[conn, limits], help="change a team's name or limits")
    update.add_argument("id")
    update.add_argument("--name")
    update.set_defaults(admin_action=_update_team)

    keys = subparsers.add_parser("keys", help="create, list and revoke API keys").add_subparsers(required=True)
    create = keys.add_parser("create", parents=[conn, limits], help="create a key (shown once)")
    create.add_argument("--team", required=True)
    create.add_argument("--name", default="")
    create.add_argument("--models", help="comma-separated model ids the key may use (default: all)")
    create.set_defaults(admin_action=_create_key)
    listing = keys.add_parser("list", parents=[conn], help="list keys")
    listing.add_argument("--team")
    listing.set_defaults(admin_action=_list_keys)
    revoke = keys.add_parser("revoke", parents=[conn], help="revoke a key")
    revoke.add_argument("team")
    revoke.add_argument("key_id")
    revoke.set_defaults(admin_action=_revoke_key)

    usage = subparsers.add_parser("usage", parents=[conn], help="spend and volume, as a table or CSV")
    usage.add_argument("--team", help="one team (an admin sees all teams by default; a team key only its own)")
    usage.add_argument("--start", help="first UTC day, YYYY-MM-DD (default: 29 days ago)")
    usage.add_argument("--end", help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--group-by", default="team", help="team,day and at most one of key, model, deployment")
    usage.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    usage.set_defaults(admin_action=_usage)


def run(args: argparse.Namespace, console: Console | None = None) -> int:
    """Run a parsed `teams`/`keys` command; errors go to stderr as one line. Exit 0 ok, 1 API error, 2 no key."""
    # Piped output has no terminal to fit: keep rows on one line there, for grep and for readers.
    console = console or Console(width=None if sys.stdout.isatty() else 240)
    if not args.admin_key:
        print("error: set GATEWAY_ADMIN_KEY or pass --admin-key", file=sys.stderr)
        return 2
    action: Callable[[_Api, argparse.Namespace, Console], None] = args.admin_action
    with httpx.Client(base_url=args.url, headers={"authorization": f"Bearer {args.admin_key}"}, timeout=10) as http:
        try:
            action(_Api(http), args, console)
        except AdminError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


class _Api:
    """The admin API over HTTP; raises AdminError with the gateway's own message on failure."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def __call__(self, method: str, path: str, *, prefix: str = "/v1/admin", raw: bool = False, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, f"{prefix}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the gateway at {self._http.base_url}: {exc}") from None
        if response.is_success:
            return response.text if raw else response.json()
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200] or response.reason_phrase
        raise AdminError(f"{message} (HTTP {response.status_code})")


def _optional(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in UNSET else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The limit flags given on the command line (a `none` value is sent as null: unlimited)."""
    return {name: getattr(args, name) for name in LIMIT_FLAGS if hasattr(args, name)}


def _create_team(api: _Api, args: argparse.Namespace, console: Console) -> None:
    body = {"id": args.id, **_limits(args)}
    if args.name:
        body["name"] = args.name
    console.print(record("Team created", team_fields(api("POST", "/teams", json=body))))


def _list_teams(api: _Api, args: argparse.Namespace, console: Console) -> None:
    console.print(list_table("Teams", [team_fields(t) for t in api("GET", "/teams")["data"]]))


def _update_team(api: _Api, args: argparse.Namespace, console: Console) -> None:
    body = _limits(args)
    if args.name:
        body["name"] = args.name
    console.print(record("Team updated", team_fields(api("PATCH", f"/teams/{_segment(args.id)}", json=body))))


def _create_key(api: _Api, args: argparse.Namespace, console: Console) -> None:
    body: dict[str, Any] = {"team": args.team, "name": args.name, **_limits(args)}
    if args.models:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    key = api("POST", "/keys", json=body)
    console.print(record("Key created", key_fields(key)))
    console.print("Save this key now: it is shown only once and cannot be recovered.", style="bold yellow")
    console.print(key["key"], markup=False, highlight=False, soft_wrap=True)


def _list_keys(api: _Api, args: argparse.Namespace, console: Console) -> None:
    params = {"team": args.team} if args.team else {}
    console.print(list_table("API keys", [key_fields(k) for k in api("GET", "/keys", params=params)["data"]]))


def _revoke_key(api: _Api, args: argparse.Namespace, console: Console) -> None:
    key = api("POST", f"/keys/{_segment(args.team)}/{_segment(args.key_id)}/revoke")
    console.print(record("Key revoked", key_fields(key)))


def _usage(api: _Api, args: argparse.Namespace, console: Console) -> None:
    params = {"group_by": args.group_by}
    params.update({name: value for name in ("team", "start", "end") if (value := getattr(args, name))})
    if args.csv:
        print(api("GET", "/usage", prefix="/v1", raw=True, params={**params, "format": "csv"}), end="")
        return
    report = api("GET", "/usage", prefix="/v1", params=params)
    groups = report["group_by"]
    rows = [
        {
            **{g: Text(str(row[g])) for g in groups},
            "requests": Text(str(row["requests"])),
            "billed": Text(f"${row['billed_usd']}"),
            "provider cost": Text(f"${row['provider_cost_usd']}"),
            "MP out": Text(f"{row['output_megapixels']:g}"),
        }
        for row in report["data"]
    ]
    totals = report["totals"]
    console.print(list_table(f"Usage {report['start']} .. {report['end']}", rows, caption=None))
    console.print(
        f"total: {totals['requests']} requests, billed ${totals['billed_usd']}, "
        f"provider cost ${totals['provider_cost_usd']}",
        markup=False,
    )


def _segment(text: str) -> str:
    """`text` as one URL path segment: a `/` or `..` in an argument cannot reach another route."""
    return quote(text, safe="")
