"""Names and digests: what the registry accepts, and that nothing trails a valid one."""

from __future__ import annotations

import pytest

from registry.errors import BadRequest
from registry.manifest import DIGEST_RE
from registry.refs import check_channel, check_namespace, parse_adapter_name

GOOD_DIGEST = "a" * 64


@pytest.mark.parametrize("check", [check_channel, check_namespace])
@pytest.mark.parametrize("bad", ["", "Prod", "-x", "x-", "a b", "prod\n", "prod\r\n", "\nprod",
                                 "prod\x00", "p" * 65])
def test_bad_channel_and_namespace_names(check: object, bad: str) -> None:
    with pytest.raises(BadRequest):
        check(bad)  # type: ignore[operator]


@pytest.mark.parametrize("bad", ["acme", "acme/", "/bot", "acme/bot\n", "acme/bot/x",
                                 "acme/-bot", "ACME/bot"])
def test_bad_adapter_names(bad: str) -> None:
    with pytest.raises(BadRequest):
        parse_adapter_name(bad)


def test_good_names() -> None:
    assert check_channel("prod") == "prod" and check_namespace("acme-1") == "acme-1"
    assert parse_adapter_name("acme/Support.bot_2") == ("acme", "Support.bot_2")


def test_digest_pattern_takes_nothing_after_the_digest() -> None:
    assert DIGEST_RE.match(GOOD_DIGEST)
    assert not DIGEST_RE.match(GOOD_DIGEST + "\n")
    assert not DIGEST_RE.match(GOOD_DIGEST.upper())
