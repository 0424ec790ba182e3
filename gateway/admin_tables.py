"""How the admin CLI shows teams and keys: one record as `field value` lines, or a list as a rich table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from gateway.pricing import format_usd

SHORT_HEADERS = {"concurrency": "conc"}
UNBROKEN = frozenset({"team", "key id", "status", "rpm", "concurrency", "budget", "created", "revoked"})


def team_fields(team: dict[str, Any]) -> dict[str, Text]:
    return {"team": Text(team["id"]), "name": Text(team["name"]), **_limit_fields(team), **_created(team)}


def key_fields(key: dict[str, Any]) -> dict[str, Text]:
    return {
        "team": Text(key["team"]),
        "key id": Text(key["id"]),
        "name": Text(key["name"]),
        "status": Text(key["status"], style="green" if key["status"] == "active" else "red"),
        "models": Text(", ".join(key["models"]) if key["models"] else "all"),
        **_limit_fields(key),
        **_created(key),
    }


def _limit_fields(row: dict[str, Any]) -> dict[str, Text]:
    micros = row["budget_micros"]
    return {
        "rpm": Text(str(row["rpm"] or "unlimited")),
        "concurrency": Text(str(row["concurrency"] or "unlimited")),
        "budget": Text("unlimited" if micros is None else f"${format_usd(micros)}/{row['budget_period']}"),
    }


def _created(row: dict[str, Any]) -> dict[str, Text]:
    times = {"created": Text(_when(row["created_at"]))}
    if row.get("revoked_at"):
        times["revoked"] = Text(_when(row["revoked_at"]))
    return times


def list_table(title: str, rows: list[dict[str, Text]], caption: str | None = "-: unlimited") -> Table | Text:
    """Rows as a table with one column per field, narrowed to fit more terminals unwrapped."""
    if not rows:
        return Text(f"{title}: none")
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left", collapse_padding=True)
    columns = list(dict.fromkeys(name for row in rows for name in row))
    for name in columns:
        # A narrow terminal wraps names and models but never splits or hides (ellipsizes) ids, money or times.
        table.add_column(SHORT_HEADERS.get(name, name), overflow="fold", no_wrap=name in UNBROKEN)
    for row in rows:
        table.add_row(*(_short(name, row.get(name, Text(""))) for name in columns))
    return table


def _short(name: str, cell: Text) -> Text:
    if cell.plain == "unlimited":
        return Text("-")
    if name in ("created", "revoked"):
        return Text(cell.plain[:10])  # the date; the minute is in the record view and the API
    return cell


def record(title: str, fields: dict[str, Text]) -> Table:
    """One record as `field  value` lines, readable at any terminal width."""
    table = Table(title=title, box=None, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in fields.items():
        table.add_row(name, value)
    return table


def _when(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%MZ")
