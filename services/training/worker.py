"""Training worker: `python -m services.training.worker <job_dir>` runs the one training job described by
<job_dir>/job.json (see services/training/domain/yolo_training.py for the files it reads and writes).

Exit code 0: completed or stopped (SIGTERM); 1: failed (result.json says why); 2: usage error.
The environment must come from ultralytics_environment() (offline, fonts in place).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from services.training.domain.yolo_training import run_job


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m services.training.worker <job_dir>  (an existing directory)", file=sys.stderr)
        return 2
    return run_job(Path(argv[0]))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is on disk: exit now rather than wait for threads a library may have left running.
    os._exit(code)
