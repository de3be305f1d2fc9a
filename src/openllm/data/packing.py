"""BOS-aligned best-fit packing: every training row starts at the start of a document (or of a block-sized piece of a
long one) and is filled with the largest pending document that still fits, as nanochat packs its rows.

A document longer than a block fills whole rows with its leading pieces; its tail, like every shorter document, waits
in a buffer of `buffer_size` pending pieces. When no pending piece fits the room left in a row, the shortest one is
cropped to fill it exactly and the rest of it is dropped: rows are never padded, and the dropped share is reported.
"""

from __future__ import annotations

from bisect import bisect_right, insort

import numpy as np


def best_fit_rows(lengths: np.ndarray, block_size: int, buffer_size: int = 1000):
    """Rows of `block_size` tokens over documents of `lengths` laid end to end.

    Returns `(row_starts, segments, stats)`: row r is the concatenation of `segments[row_starts[r]:row_starts[r+1]]`,
    each an `(offset, length)` into the token stream; `stats` counts rows and the tokens cropped and padded.
    """
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    row_starts, segments = [0], []
    pending: list[tuple[int, int, int]] = []  # (length, order, offset): ties go to the earlier piece
    order = 0

    def pieces():
        for start, n in zip(offsets[:-1].tolist(), np.asarray(lengths).tolist()):
            full = n // block_size
            for j in range(full):  # leading block-sized pieces are rows of their own
                yield True, start + j * block_size, block_size
            if n % block_size:
                yield False, start + full * block_size, n % block_size

    stream = pieces()
    cropped = 0
    exhausted = False

    def refill():
        nonlocal exhausted, order
        while not exhausted and len(pending) < buffer_size:
            item = next(stream, None)
            if item is None:
                exhausted = True
            elif item[0]:
                segments.append((item[1], item[2]))
                row_starts.append(len(segments))
            else:
                insort(pending, (item[2], order, item[1]))
                order += 1

    while True:
        room, row = block_size, []
        while room:
            refill()
            if not pending:
                break
            i = bisect_right(pending, (room, float("inf"), 0)) - 1
            if i >= 0:  # the largest pending piece that fits
                n, _, start = pending.pop(i)
                row.append((start, n))
                room -= n
            else:  # none fits: crop the shortest to fill the row exactly
                n, _, start = pending.pop(0)
                row.append((start, room))
                cropped += n - room
                room = 0
        if room:  # the stream ended: its last, partial row is dropped rather than padded
            cropped += block_size - room
            break
        segments.extend(row)
        row_starts.append(len(segments))
    stats = {"rows": len(row_starts) - 1, "tokens_cropped": int(cropped), "tokens_padded": 0}
    return (np.array(row_starts, np.int64), np.array(segments, np.int64).reshape(-1, 2), stats)


__all__ = ["best_fit_rows"]
