"""imagelist.py with one fault injected, to see how a real process reports
errors that correct code never produces. IMAGELIST_TEST_FAULT selects it:

- handler: GET /health/live warns, then raises (with a secret in a local)
- crash:   the app factory raises during start-up, after logging is set up
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imagelist
from handlers.health import LiveHandler

SECRET = "s3cr3t-in-a-frame-local"


def failing_get(self: LiveHandler) -> None:
    token = SECRET  # frame locals must never reach the logs
    warnings.warn("injected warning", UserWarning, stacklevel=1)
    raise RuntimeError(f"injected fault ({len(token)})")


def failing_make_app(ctx: object) -> None:
    raise RuntimeError("injected start-up crash")


fault = os.environ.get("IMAGELIST_TEST_FAULT", "")
if fault == "handler":
    LiveHandler.get = failing_get  # type: ignore[method-assign]
elif fault == "crash":
    imagelist.make_app = failing_make_app  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(imagelist.main())
