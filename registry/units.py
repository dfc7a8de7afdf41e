"""Human-readable quantities, shared by the CLI and the web UI."""

from __future__ import annotations


def human_size(size: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; ``None`` -> ``-``."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if round(value, 1) < 1024:  # 1048575 B is "1.0 MiB", not "1024.0 KiB"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
