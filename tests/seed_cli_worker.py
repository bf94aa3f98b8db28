"""One replica of the 4-process deploy-time seed test (tests/test_seed.py).

python -m tests.seed_cli_worker START_AT URL: runs ``onconflict seed
examples/seed.yaml --schema examples/app.py:metadata`` at START_AT, as a
replica's init step would; the exit status is the command's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from onconflict.cli import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    start_at, url = float(sys.argv[1]), sys.argv[2]
    time.sleep(max(0.0, start_at - time.time()))
    args = [str(ROOT / "examples" / "seed.yaml"), "--url", url]
    main(["seed", *args, "--schema", f"{ROOT / 'examples' / 'app.py'}:metadata"])
