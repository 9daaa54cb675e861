"""Entry point of the standalone executable (PyInstaller)."""

import os
import sys

# The single-file executable unpacks the program for one run only when it has no cache directory
# (packaging/sfx-stub.sh); then it names that directory here, and it goes when the program ends.
_unpacked = os.environ.pop("IU_REMOVE_AT_EXIT", None)
if _unpacked and os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))) == os.path.realpath(_unpacked):
    import atexit
    import shutil

    atexit.register(shutil.rmtree, _unpacked, True)

from imaging_utility.cli.main import main  # noqa: E402

raise SystemExit(main())
