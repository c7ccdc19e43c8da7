"""Fleet simulator: many device update loops against gunicorn + PostgreSQL + Redis.

    python bench/fleet.py [--devices 1000] [--http-enroll 40] [--poll-interval 5]
                          [--seconds 15] [--no-four-workers] [--fold-workers 2]

The code lives in the package bench/fleetbench/ (devices, load generators, server,
set-up, phases, report, main); its docstring describes the phases. This file only runs
it, so the command line is unchanged. (The package is not called `fleet`: that is the
Django app's name, and bench/ is on sys.path when this runs.)
"""

from __future__ import annotations

import sys

from fleetbench.main import main

if __name__ == "__main__":
    sys.exit(main())
