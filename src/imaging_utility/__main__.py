from __future__ import annotations

import os
import sys

try:
    from .cli.main import main
except KeyboardInterrupt:  # Ctrl-C while the program is still loading: nothing was done
    print("imaging-utility: interrupted", file=sys.stderr, flush=True)
    os._exit(130)  # not SystemExit: see interrupts.exit_interrupted

raise SystemExit(main())
