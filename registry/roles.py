"""Roles and the permissions each grants: the one table the API, the services and the CLI use.

Roles are not a ladder: a promoter moves channels but cannot push. ``register_base`` is
instance-wide (bases are shared by every namespace), so it is only usable on a token not scoped
to one namespace: a curator's or an admin's.
"""

from __future__ import annotations

ROLES: dict[str, frozenset[str]] = {
    "reader": frozenset({"read"}),
    "writer": frozenset({"read", "write"}),
    "promoter": frozenset({"read", "promote"}),
    "curator": frozenset({"read", "register_base"}),
    "admin": frozenset({"read", "write", "promote", "admin", "register_base"}),
}
