"""A restore target named through a symlink: said plainly, never followed into creating a file."""

from __future__ import annotations

import os
import stat

from ..errors import RefusedError


def symlink_note(target: str, force: bool) -> str | None:
    """A warning when ``target`` is a symlink whose file ``--force`` overwrites (``None`` otherwise: not a link,
    or a link to a device such as ``/dev/disk/by-id/...``).

    Raises:
        RefusedError: ``target`` is a symlink to nothing (restore would create a file through it).
    """
    if not os.path.islink(target):
        return None
    real = os.path.realpath(target)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise RefusedError(f"restore target {target} is a symlink to {os.readlink(target)}, which does not exist; "
                           "name the file or device itself (restore does not create a file through a link)") from None
    except OSError:
        return None  # unreadable: the open that follows says why
    if stat.S_ISREG(st.st_mode) and force:
        return f"{target} is a symlink: --force overwrites the file it points to, {real}"
    return None
