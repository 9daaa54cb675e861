"""``image --abort``: discard what an interrupted image left at DEST (files, or an S3 upload)."""

from __future__ import annotations

from ..errors import CorruptImageError, NotFoundError, RefusedError
from ..image.reader import open_image
from ..storage import abandoned_uploads, discard, existing_outputs


def discard_partial(dest: str) -> list[str]:
    """Remove the partial image at ``dest`` and abort its unfinished uploads; returns what went.
    A finished image is refused (``--force`` replaces one)."""
    uploads = abandoned_uploads(dest)
    outputs = existing_outputs(dest)
    if not uploads and not outputs:
        raise NotFoundError(f"nothing to discard: no partial image or unfinished upload at {dest}")
    try:
        open_image(dest).close()
    except (CorruptImageError, NotFoundError):
        pass  # unfinished, as expected
    else:
        if not uploads:
            raise RefusedError(f"{dest} is a finished image, not a partial one; --abort leaves it alone "
                               "(delete it yourself, or image over it with --force)")
        discard(dest, uploads_only=True)  # a later run's upload over a finished image: the image stays
        return uploads
    thread = discard(dest)
    if thread is not None:
        thread.join()
    return uploads + outputs
