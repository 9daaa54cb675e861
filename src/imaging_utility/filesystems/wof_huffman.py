"""Canonical prefix codes as lookup tables, for the WOF decoders (``wof_xpress``, ``wof_lzx``).

A code is given by its codeword lengths (0: the symbol has none), as both XPRESS Huffman and LZX send it;
the codewords follow from the lengths alone (shorter first, then by symbol).  As wimlib's
``make_huffman_decode_table``: the lengths must fill the code space exactly, or be all zero (an empty
code, which LZX allows for a code a block never uses).
"""

from __future__ import annotations

from ..errors import CorruptImageError

EMPTY = -1  # the one entry of an empty code's table: reading a symbol with it is an error
ROOT_BITS = 11  # codewords up to this long are one lookup; longer ones a second, in a subtable
SUB = 1 << 24  # a root entry ``SUB + (start << 5)``: the subtable at ``start``; it takes no bits itself

Code = tuple[list[int], int, int]  # a table, its root's index bits, the longest codeword (0: empty)


def canonical(lens: list[int], start: int, count: int, max_len: int, name: str, what: str) -> Code:
    """The canonical prefix code of ``lens[start:start + count]`` as a lookup table: a root indexed by
    the next ``root`` bits (at most ``ROOT_BITS``) whose entries are ``symbol << 5 | length``, or for
    the prefix of longer codewords a ``SUB`` entry; its subtable is indexed by the ``bits - root`` bits
    after the prefix, ``bits`` the longest length.  At most 2**11 + count * 2**5 entries.  An empty code
    is ``[EMPTY], 0, 0``.  ``name`` names the code in the error (``"LZX main"``)."""
    counts = [0] * (max_len + 1)
    for i in range(start, start + count):
        counts[lens[i]] += 1
    left = 1
    for n in range(1, max_len + 1):
        left = (left << 1) - counts[n]
        if left < 0:
            raise CorruptImageError(f"{what}: the {name} code is over-subscribed")
    if left:
        if left == 1 << max_len:
            return [EMPTY], 0, 0
        raise CorruptImageError(f"{what}: the {name} code is incomplete")
    bits = max(n for n in range(max_len + 1) if counts[n])
    root = min(bits, ROOT_BITS)
    part = lens[start : start + count]
    table: list[int] = []  # the root, filled in canonical order: codewords are consecutive numbers
    subs: list[int] = []  # the subtables, each filled in canonical order too (the code is complete)
    code = length = 0
    prefix = -1
    for sym in sorted(range(count), key=part.__getitem__):  # stable: by length, then symbol
        n = part[sym]
        if not n:
            continue
        code <<= n - length
        length = n
        if n <= root:
            table += [sym << 5 | n] * (1 << (root - n))
        else:
            if code >> (n - root) != prefix:
                prefix = code >> (n - root)
                table.append(SUB + ((1 << root) + len(subs) << 5))
            subs += [sym << 5 | n] * (1 << (bits - n))
        code += 1
    return table + subs, root, bits
