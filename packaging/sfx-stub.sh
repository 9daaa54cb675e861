#!/bin/sh
# imaging-utility @VERSION@, standalone executable for Linux @ARCH@.
#
# One file: this script, then the one-folder build as a .tar.gz.  The first run unpacks the folder
# (about @UNPACKED_MIB@ MiB) into a private cache directory and checks that it runs from there; every later
# run starts the unpacked program at once, as fast as the folder build.  The cache directory is the first
# of $IU_CACHE_DIR, ${XDG_CACHE_HOME:-$HOME/.cache}/imaging-utility and ${TMPDIR:-/tmp}/imaging-utility-UID
# that the user owns (it is made private, mode 0700) and that allows running programs.  When none does,
# the program is unpacked into a fresh temporary directory that it removes when it ends.  Each version's
# copy stays until removed by hand: rm -rf ~/.cache/imaging-utility
set -u
id=@ID@
top=@TOP@
skip=@SKIP@
self=$0
case $self in
    */*) ;;
    *) [ -f "$self" ] || self=$(command -v -- "$self") || { echo "imaging-utility: cannot find $0" >&2; exit 127; } ;;
esac

unpack() {  # unpack into the new directory $1, and check that the program runs from there
    tail -c +"$skip" "$self" | tar -xzf - -C "$1" 2>/dev/null || return 1
    "$1/$top/imaging-utility" --version >/dev/null 2>&1
}

private() {  # is $1 (made if missing) a directory of this user that no one else can write to?
    mkdir -p -m 0700 "$1" 2>/dev/null && [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] && chmod 0700 "$1" 2>/dev/null
}

home_cache=
[ -n "${HOME:-}" ] && home_cache=$HOME/.cache/imaging-utility
for base in "${IU_CACHE_DIR:-}" "${XDG_CACHE_HOME:+$XDG_CACHE_HOME/imaging-utility}" "$home_cache" \
            "${TMPDIR:-/tmp}/imaging-utility-$(id -u)"; do
    [ -n "$base" ] || continue
    dir=$base/$id
    if [ -f "$dir/.complete" ] && [ -O "$dir" ]; then
        exec "$dir/$top/imaging-utility" "$@"
    fi
    private "$base" || continue
    new=$(mktemp -d "$base/.unpack.XXXXXX" 2>/dev/null) || continue
    if unpack "$new"; then
        : > "$new/.complete"
        mv "$new" "$dir" 2>/dev/null
        rm -rf "$new" "${dir:?}/${new##*/}"  # another run unpacked the same version first: use that one
        [ -f "$dir/.complete" ] && exec "$dir/$top/imaging-utility" "$@"
    fi
    rm -rf "$new"
done

# no place to keep it: unpack for this run only; the program removes the directory when it ends
new=$(mktemp -d "${TMPDIR:-/tmp}/imaging-utility.XXXXXX") || { echo "imaging-utility: cannot make a temporary directory" >&2; exit 1; }
if ! unpack "$new"; then
    rm -rf "$new"
    if ! tail -c +"$skip" "$self" | gzip -t 2>/dev/null; then
        echo "imaging-utility: $self is damaged or truncated: download it again (and check it with SHA256SUMS)" >&2
    else
        echo "imaging-utility: cannot unpack and run the program in ${TMPDIR:-/tmp} (full, or mounted noexec?): set IU_CACHE_DIR or TMPDIR to a directory that allows running programs" >&2
    fi
    exit 1
fi
IU_REMOVE_AT_EXIT=$new exec "$new/$top/imaging-utility" "$@"
