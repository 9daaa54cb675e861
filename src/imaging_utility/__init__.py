"""imaging-utility: compressed, verifiable, random-access, resumable disk images."""

import os as _os
import sys as _sys


def _interrupted_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C or a termination signal while the program is still loading: nothing has been done yet, so
    it ends at once, with the program's one line and exit 130 (Python's own handler would print a
    traceback of the import machinery)."""
    _os.write(2, b"imaging-utility: interrupted\n")
    _os._exit(130)


# As the program (``python -m imaging_utility``, whose argv[0] is "-m" while the module is found, or the
# ``imaging-utility`` script or executable), until ``cli.main`` installs ``interrupts``; first of all, so
# that the window left to Python's own handling is as short as can be.  A library import leaves the
# process's handlers alone.
if _sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] if _sys.argv else "") == "imaging-utility":
    import _signal  # type: ignore[import-not-found]  # C; ``signal`` (enums) is slow enough to be interrupted

    for _sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
        if _signal.getsignal(_sig) != _signal.SIG_IGN:  # what nohup ignores stays ignored
            _signal.signal(_sig, _interrupted_while_loading)

try:  # written by setuptools-scm from the git tags when the package is built or installed
    from ._version import __version__ as __version__
except ImportError:  # a source tree that was never built or installed
    __version__ = "0.2.0.dev0+unknown"
