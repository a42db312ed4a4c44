"""The controller: the other end of the EVE API v2 that edgevol devices talk to.

It keeps what the operator wants on each device (datastores, content trees,
volumes, apps) and what each device reports back, in SQLite or PostgreSQL.
"""

from __future__ import annotations
