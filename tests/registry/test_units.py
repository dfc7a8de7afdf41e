"""The one byte-size formatter the CLI and the web UI share."""

from __future__ import annotations

import pytest

from cli import output
from registry.ui.rendering import ENV
from registry.units import human_size


@pytest.mark.parametrize(("size", "text"), [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**30, "5.0 GiB"),
    (3 * 2**40, "3.0 TiB"), (2**60, "1048576.0 TiB"), (1048575, "1.0 MiB"),
    (1048524, "1023.9 KiB"), (2**30 - 1, "1.0 GiB"),
])
def test_human_size(size: int | None, text: str) -> None:
    assert human_size(size) == text
    assert output.size(size) == text
    assert ENV.from_string("{{ n | size }}").render(n=size) == text
