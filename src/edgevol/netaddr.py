"""Network address facts both ends need (the device's datastores, the controller's listener).

Why here: the controller and the device share these rules, and neither may
import the other; this module sits below both.
"""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: the only places plain HTTP is acceptable."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
