"""Where the original Windows tool's commands went.

The original ImagingUtility (C#, Windows) had ``list``, ``verify-set``, ``export-raw``, ``export-vhd``,
``export-range``, ``restore-set``, ``restore-physical``, ``dump-pt`` and ``mount-webdav``; its
``ntfs-extract``, ``ntfs-serve``, ``ntfs-webdav``, ``fat-webdav`` and ``exfat-webdav`` are aliases here.
A user who types one of the others gets the command line that does the same job with this tool, until
such a command exists (a registered command of the same name always wins).
"""

from __future__ import annotations

_POINTERS = {
    "list": "'lsblk -o NAME,SIZE,MODEL,SERIAL' lists the drives; image one with "
            "'imaging-utility image /dev/sdX sdX.img.zst'",
    "verify-set": "'imaging-utility verify IMAGE' for each image of the set",
    "export-raw": "'imaging-utility restore IMAGE disk.raw' (a sparse raw file)",
    "export-range": "'imaging-utility serve-proxy IMAGE --offset N --length N', then "
                    "'nbdcopy nbd://127.0.0.1:10809/ range.bin'",
    "restore-set": "'imaging-utility restore IMAGE TARGET' (a file, or a device such as /dev/sdX)",
    "restore-physical": "'imaging-utility restore IMAGE /dev/sdX'",
    "dump-pt": "'imaging-utility info IMAGE', or 'zstd -dc IMAGE | head -c 1M > table.bin' for the raw "
               "MBR/GPT sectors",
    "mount-webdav": "'imaging-utility webdav IMAGE', then on Windows 'net use Z: http://HOST:18081/' "
                    "(docs/files.md)",
}


def pointer(name: str, commands: list[str]) -> str | None:
    """What to run instead of the original tool's command ``name`` (``None``: not one of its names)."""
    if name == "export-vhd":
        if "export" in commands:
            return "'imaging-utility export IMAGE disk.vhd --format vhd'"
        return ("'imaging-utility serve-proxy IMAGE', then 'qemu-img convert -O vpc nbd://127.0.0.1:10809/ "
                "disk.vhd'")
    return _POINTERS.get(name)
