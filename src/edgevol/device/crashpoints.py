"""Named points at which a test can have the agent kill itself with SIGKILL.

Test hook, named as such: inert unless ``EDGEVOL_TEST_CRASH_AT`` names the
point. It lets a test stop the process exactly between two steps that must
each survive a ``kill -9`` (a purge that removes the old generation before
it creates the new one), where an outside kill could only land by luck.
"""

from __future__ import annotations

import os
import signal

CRASH_AT_ENV = "EDGEVOL_TEST_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, as ``kill -9`` would, when the test hook names this point."""
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
