"""The raw key format, parsing and secret hashing."""

from __future__ import annotations

import pytest

from gateway.accounts.keys import (
    format_key,
    hash_secret,
    is_key_id,
    is_team_id,
    new_key_id,
    new_secret,
    parse_key,
    secret_matches,
)


def test_format_then_parse_round_trips_even_with_underscores_in_the_secret() -> None:
    for _ in range(200):  # token_urlsafe secrets often contain '_' and '-'
        key_id, secret = new_key_id(), new_secret()
        parsed = parse_key(format_key("team-7", key_id, secret))
        assert parsed is not None
        assert (parsed.team, parsed.key_id, parsed.secret) == ("team-7", key_id, secret)


def test_fresh_ids_and_secrets_have_the_documented_shape() -> None:
    key_id, secret = new_key_id(), new_secret()
    assert is_key_id(key_id)
    assert len(secret) == 43
    assert new_key_id() != key_id
    assert new_secret() != secret


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "sk-flux-local-dev",
        "fgk_",
        "fgk_acme",
        "fgk_acme_0123456789ab",
        "fgk_acme_0123456789ab_",  # empty secret
        "FGK_acme_0123456789ab_secret",
        "fgk_Acme_0123456789ab_secret",  # team ids are lowercase
        "fgk_-acme_0123456789ab_secret",  # and start with a letter or digit
        "fgk_acme_0123456789AB_secret",  # key ids are lowercase hex
        "fgk_acme_0123456789a_secret",  # 11 characters
        "fgk_acme_0123456789abc_secret",  # 13 characters
        "fgk_acme_g123456789ab_secret",
        f"fgk_{'a' * 41}_0123456789ab_secret",  # team id over 40 characters
        f"fgk_acme_0123456789ab_{'s' * 129}",  # absurdly long secret
    ],
)
def test_parse_rejects_malformed_keys(raw: str) -> None:
    assert parse_key(raw) is None


def test_team_id_rules() -> None:
    assert is_team_id("a")
    assert is_team_id("data-science-2")
    assert is_team_id("a" * 40)
    for bad in ("", "-a", "a_b", "A", "a b", "a" * 41, "_admin", "a{b}"):
        assert not is_team_id(bad), bad


def test_repr_of_a_parsed_key_hides_the_secret() -> None:
    secret = new_secret()
    parsed = parse_key(format_key("acme", new_key_id(), secret))
    assert parsed is not None
    assert secret not in repr(parsed)


def test_only_the_right_secret_matches_its_hash() -> None:
    secret = new_secret()
    stored = hash_secret(secret)
    assert len(stored) == 64
    assert secret not in stored
    assert secret_matches(secret, stored)
    assert not secret_matches(secret + "x", stored)
    assert not secret_matches(new_secret(), stored)
    assert not secret_matches(secret, "")
