"""Where an image, a restore, an export or an extraction may write: the refusals made before anything
is written (a device node or directory in DEST's place, a missing device that would become a file in
``/dev``, DEST being the source itself by any name), and ``file_key``, a file's identity whatever its name.
"""

from __future__ import annotations

import os
import stat

from ..errors import NotFoundError, RefusedError
from .local import existing_outputs


def refuse_special(path: str) -> None:
    """Refuse (``RefusedError``) an existing ``path`` that an image may not replace: anything but a regular
    file, a symbolic link to one, or a dangling link (a link is replaced, never followed).  ``--force``
    renames the old image away, which would take a device node or a udev link out of ``/dev`` (and write
    the image into its RAM-backed filesystem); ``--resume`` would append to it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    what = path
    if stat.S_ISLNK(mode):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return  # dangling: the link is replaced
        what = f"{path} (a link to {os.path.realpath(path)})"
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise RefusedError(f"{what} is a directory; give the image file's name, "
                           f"e.g. {os.path.join(path, 'disk.img.zst')}")
    if stat.S_ISBLK(mode):
        raise RefusedError(f"{what} is a block device; image writes image files "
                           "(to write a device, restore an image onto it)")
    if stat.S_ISFIFO(mode):
        raise RefusedError(f"{what} is a named pipe; to stream an image, write it to standard output: "
                           "image SOURCE - > PIPE")
    raise RefusedError(f"{what} exists and is not a regular file; image writes regular files")


DEV = "/dev"


def refuse_new_in_dev(path: str) -> None:
    """``NotFoundError`` when ``path`` does not exist and would be created in ``/dev`` itself (not in a
    filesystem mounted below it, such as ``/dev/shm``): a device node that is not there (a disk not
    connected, a mistyped name) must not become a regular file in the memory-backed ``/dev`` that a
    restore, an image or an export then fills and reports as done."""
    if os.path.lexists(path):
        return
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    try:
        in_dev = os.path.commonpath([parent, DEV]) == DEV and os.stat(parent).st_dev == os.stat(DEV).st_dev
    except (OSError, ValueError):
        return
    if in_dev:
        raise NotFoundError(f"{path} does not exist: is the device connected? (it would be created as a "
                            f"file in {DEV}, which lives in memory)")


def file_key(what: str | int) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of a path (links followed) or an open descriptor: the file whatever its name;
    None when there is none (missing, an object-store URL, a closed descriptor)."""
    try:
        st = os.fstat(what) if isinstance(what, int) else os.stat(what)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_source_as_dest(source_fd: int, dest: str, backing_file: object = None) -> None:
    """Refuse (``RefusedError``) a DEST, or a part of it, that is the file being imaged (through any link
    or hard link) or the file behind the loop device being imaged (``backing_file``): ``--force`` would
    discard the source under the running capture."""
    sources = {file_key(source_fd)}
    if isinstance(backing_file, str) and backing_file:
        sources.add(file_key(backing_file.removesuffix(" (deleted)")))
    sources.discard(None)
    for path in existing_outputs(dest):
        if file_key(path) in sources:
            raise RefusedError(f"{path} is the source being imaged; give the image another name")
