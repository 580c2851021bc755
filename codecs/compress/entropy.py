"""Static, context-split rANS entropy stage shared by the pixel and waveform codecs.

Residuals are mapped to unsigned values ``u`` (zigzag) and split into a *token*
and raw *extra bits* (the "hybrid uint" of JPEG XL: values below 16 are their
own token; above, the token carries the exponent and the first mantissa bit and
the remaining mantissa bits go raw).  Tokens are coded with byte-wise rANS
(ryg_rans) using one static frequency table per *context*; the model decides
the context from causal neighbours, so each table sees homogeneous statistics.
This is what lets a static coder approach adaptive Golomb/arithmetic coders:
the adaptivity lives in the context choice, the coder itself is branch-light.

Every kernel here is written once as plain Python (``_x_py``) and compiled with
Numba (``_x_nb = njit(_x_py)``); tests assert the two agree.  The two a pixel
tile driver calls per tile are also ``register_jitable``, so one driver source
runs them as Python and compiles them in.
"""

from __future__ import annotations

from typing import Any, no_type_check

import numpy as np
from numba import njit as _njit
from numba.extending import register_jitable as _register_jitable

from fenji.codecs.errors import DecodeError

# Any-typed: numba's stubs do not describe dispatchers called with arrays
njit: Any = _njit
register_jitable: Any = _register_jitable

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 23
RANS16_L = 1 << 15
NSYM = 72  # tokens for u < 2**32: 16 direct + 2 per exponent 4..31
SPLIT = 16



@register_jitable(inline="always")
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def token_of(u):  # type: ignore[no-untyped-def]
    """Token, extra-bit count and extra value of an unsigned residual.

    Plain Python here; compiled into the pixel and waveform kernels.

    >>> token_of(5), token_of(16), token_of(27)
    ((5, 0, 0), (16, 3, 0), (17, 3, 3))
    """
    if u < SPLIT:
        return u, 0, 0
    n = -1  # floor(log2 u), counted: Numba has no int.bit_length
    t = u
    while t > 0:
        n += 1
        t >>= 1
    return SPLIT + (n - 4) * 2 + ((u >> (n - 1)) & 1), n - 1, u & ((1 << (n - 1)) - 1)


@register_jitable(inline="always")
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def value_of(s, acc, nacc, bpos, buf, be):  # type: ignore[no-untyped-def]
    """The unsigned residual of token ``s``, reading its extra bits LSB first from
    the bit reservoir ``acc`` (``nacc`` bits) refilled from ``buf[bpos:be]``; the
    inverse of :func:`token_of`.  Returns (u, acc, nacc, bpos); bpos is -1 when
    the extra bits run past ``be`` (a corrupt stream).

    >>> import numpy as np
    >>> int(value_of(17, np.int64(0), 0, 0, np.array([3], np.uint8), 1)[0])
    27
    """
    if s < SPLIT:
        return np.int64(s), acc, nacc, bpos
    n = (s - SPLIT) // 2 + 4
    nb = n - 1
    while nacc < nb:
        if bpos >= be:
            return np.int64(0), acc, nacc, -1
        acc |= np.int64(buf[bpos]) << nacc
        bpos += 1
        nacc += 8
    u = (np.int64(1) << n) | (((s - SPLIT) & 1) << (n - 1)) | (acc & ((np.int64(1) << nb) - 1))
    return u, acc >> nb, nacc - nb, bpos


@register_jitable(inline="always")
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def activity_class(act, nctx):  # type: ignore[no-untyped-def]
    """Entropy context of a local activity value: half-octave classes, capped at
    ``nctx - 1`` (the pixel and waveform models' context quantiser).

    >>> [activity_class(a, 32) for a in (0, 1, 2, 3, 4, 6, 1 << 20)]
    [0, 1, 3, 4, 5, 6, 31]
    """
    if act == 0:
        return 0
    n = 0
    t = act
    while t > 0:
        n += 1
        t >>= 1
    cls = 1 if n == 1 else 2 * n - 1 + ((act >> (n - 2)) & 1)
    return cls if cls < nctx - 1 else nctx - 1


def class_table(nctx: int, size: int = 4096) -> np.ndarray:
    """``activity_class`` for activities below ``size``, as a uint8 table: kernels
    look small activities up and compute only the rare large ones."""
    return np.array([activity_class(v, nctx) for v in range(size)], dtype=np.uint8)


def normalize_freqs(counts: np.ndarray) -> np.ndarray:
    """Scale per-context symbol counts to frequencies summing to ``PROB_SCALE``.

    Every symbol seen gets at least 1; rows with no symbol stay all zero.
    Deterministic (integer arithmetic and a stable tie order).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = counts.sum(axis=1)
    f = (counts * PROB_SCALE) // total.clip(1, None)[:, None]
    f[(counts > 0) & (f == 0)] = 1
    f[total == 0] = 0
    diff = PROB_SCALE - f.sum(axis=1)
    for ci in np.nonzero((total > 0) & (diff != 0))[0]:
        row = f[ci]
        d = int(diff[ci])
        order = np.argsort(-row, kind="stable")
        if d > 0:
            row[order[0]] += d
            continue
        i = 0
        while d < 0:  # take back from the largest frequencies, never below 1
            sym = order[i % len(order)]
            take = min(-d, max(int(row[sym]) - 1, 0), max(int(row[sym]) // 2, 1))
            if row[sym] > 1 and take > 0:
                row[sym] -= take
                d += take
            i += 1
    return f


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _cluster_py(hist):
    """Greedy merge of adjacent contexts while data + table bits go down; returns cmap."""
    n = hist.shape[0]
    nsym = hist.shape[1]
    h = hist.astype(np.float64).copy()
    alive = np.ones(n, np.bool_)
    cost = np.zeros(n, np.float64)
    for i in range(n):
        tot = 0.0
        for k in range(nsym):
            tot += h[i, k]
        c = 0.0
        if tot > 0:
            c = 8.0
            for k in range(nsym):
                if h[i, k] > 0:
                    c += 12.0 - h[i, k] * np.log2(h[i, k] / tot)
        cost[i] = c
    while True:
        best_gain = 0.0
        best_a = -1
        best_b = -1
        best_c = 0.0
        a = -1
        for i in range(n):
            if not alive[i]:
                continue
            if a >= 0:
                tot = 0.0
                for k in range(nsym):
                    tot += h[a, k] + h[i, k]
                c = 0.0
                if tot > 0:
                    c = 8.0
                    for k in range(nsym):
                        v = h[a, k] + h[i, k]
                        if v > 0:
                            c += 12.0 - v * np.log2(v / tot)
                gain = cost[a] + cost[i] - c
                if gain > best_gain:
                    best_gain = gain
                    best_a = a
                    best_b = i
                    best_c = c
            a = i
        if best_a < 0:
            break
        for k in range(nsym):
            h[best_a, k] += h[best_b, k]
        cost[best_a] = best_c
        alive[best_b] = False
    cmap = np.zeros(n, np.uint8)
    g = -1
    for i in range(n):
        if alive[i]:
            g += 1
        cmap[i] = g
    return cmap


_cluster_nb: Any = njit(_cluster_py, nogil=True, cache=True)


def cluster_contexts(hist: np.ndarray, *, _impl: str = "nb") -> np.ndarray:
    """Merge adjacent contexts while that lowers data + table cost (small images).

    Returns ``cmap``: context -> merged table index (non-decreasing, from 0).
    """
    fn = _cluster_nb if _impl == "nb" else _cluster_py
    return np.asarray(fn(np.ascontiguousarray(hist, dtype=np.int64)))


def pack_cmap(cmap: np.ndarray) -> bytes:
    """A non-decreasing context map as its group sizes (one byte each)."""
    return bytes([len(cmap)]) + bytes(np.bincount(cmap).astype(np.uint8).tolist())


def unpack_cmap(buf: bytes, pos: int, nctx: int) -> tuple[np.ndarray, int]:
    try:
        if buf[pos] != nctx:
            raise DecodeError(f"context map for {buf[pos]} contexts, expected {nctx}")
        pos += 1
        sizes = []
        total = 0
        while total < nctx:
            n = buf[pos]
            pos += 1
            if n == 0:
                raise DecodeError("context map has an empty group")
            sizes.append(n)
            total += n
    except IndexError:
        raise DecodeError("context map truncated") from None
    if total != nctx:
        raise DecodeError(f"context map covers {total} contexts, expected {nctx}")
    return np.repeat(np.arange(len(sizes), dtype=np.uint8), sizes), pos


def pack_tables(freqs: np.ndarray) -> bytes:
    """Serialise frequency tables: per context a length byte then LEB128 freqs."""
    out = bytearray()
    for row in freqs:
        nz = np.nonzero(row)[0]
        n = int(nz[-1]) + 1 if len(nz) else 0
        out.append(n)
        v = row[:n].astype(np.int64)
        big = v >= 0x80
        enc = np.empty(n + int(big.sum()), np.uint8)
        idx = np.arange(n) + np.concatenate(([0], np.cumsum(big)[:-1])) if n else np.arange(0)
        enc[idx] = np.where(big, (v & 0x7F) | 0x80, v)
        enc[idx[big] + 1] = v[big] >> 7
        out += enc.tobytes()
    return bytes(out)


def unpack_tables(buf: bytes, nctx: int) -> np.ndarray:
    """Inverse of :func:`pack_tables`; raises DecodeError on any inconsistency."""
    freqs = np.zeros((nctx, NSYM), dtype=np.int64)
    pos = 0
    try:
        for ci in range(nctx):
            n = buf[pos]
            pos += 1
            if n > NSYM:
                raise DecodeError(f"rANS table {ci}: {n} symbols exceeds {NSYM}")
            for s in range(n):
                v = 0
                shift = 0
                while True:
                    b = buf[pos]
                    pos += 1
                    v |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                    if shift > 21:
                        raise DecodeError(f"rANS table {ci}: frequency varint too long")
                freqs[ci, s] = v
            tot = int(freqs[ci].sum())
            if tot not in (0, PROB_SCALE):
                raise DecodeError(f"rANS table {ci}: frequencies sum to {tot}, not {PROB_SCALE}")
    except IndexError:
        raise DecodeError("rANS tables truncated") from None
    if pos != len(buf):
        raise DecodeError(f"rANS tables: {len(buf) - pos} trailing bytes")
    return freqs


def encode_tables(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """freq, reciprocal, reciprocal shift and bias arrays for the rANS encoder (ryg_rans)."""
    f = freqs.astype(np.int64)
    cum = np.zeros_like(f)
    cum[:, 1:] = np.cumsum(f, axis=1)[:, :-1]
    # shift = ceil(log2 f) = bit length of f - 1, counted without floating point
    shift = np.zeros_like(f)
    for k in range(PROB_BITS + 1):
        shift += (f - 1) >= (1 << k)
    safe = np.where(f > 0, f, 1)  # type: ignore[call-overload]
    rcp = ((np.int64(1) << (shift + 31)) + safe - 1) // safe
    rsh = shift - 1
    bias = cum.copy()
    one = f == 1
    rcp[one] = (1 << 32) - 1
    rsh[one] = 0
    bias[one] = cum[one] + PROB_SCALE - 1
    rcp[f == 0] = 0
    rsh[f == 0] = 0
    return f, rcp, rsh, bias


def decode_table_packed(freqs: np.ndarray) -> np.ndarray:
    """One uint32 per (context, slot): symbol | (slot - start) << 7 | freq << 19.

    A single load per decoded symbol instead of three dependent ones.
    """
    f = freqs.astype(np.int64)
    out = np.zeros((f.shape[0], PROB_SCALE), dtype=np.uint32)
    syms = np.arange(NSYM, dtype=np.int64)
    for ci in range(f.shape[0]):
        if not f[ci].sum():
            continue
        sym = np.repeat(syms, f[ci])
        start = np.concatenate(([0], np.cumsum(f[ci])[:-1]))
        slot = np.arange(PROB_SCALE, dtype=np.int64)
        out[ci] = (sym | (slot - start[sym]) << 7 | f[ci][sym] << 19).astype(np.uint32)
    return out


def decode_tables(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """freq, cumulative-start and slot->symbol lookup arrays for the kernels."""
    f = freqs.astype(np.int64)
    cum = np.zeros_like(f)
    cum[:, 1:] = np.cumsum(f, axis=1)[:, :-1]
    sym = np.zeros((f.shape[0], PROB_SCALE), dtype=np.uint8)
    for ci in range(f.shape[0]):
        if f[ci].sum():
            sym[ci] = np.repeat(np.arange(NSYM, dtype=np.uint8), f[ci])
    return f, cum, sym


# --------------------------------------------------------------------------- kernels


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _hist_py(ctx, tok, nctx):  # type: ignore[no-untyped-def]
    """Counts of each token per context."""
    h = np.zeros((nctx, NSYM), dtype=np.int64)
    for i in range(ctx.shape[0]):
        h[ctx[i], tok[i]] += 1
    return h


@register_jitable
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _rans_step(x, f, c, s, rcp, rsh, bias):  # type: ignore[no-untyped-def]
    """Encode symbol ``s`` of context ``c`` (frequency ``f``) into the renormalised
    state ``x``: x // f by a reciprocal multiply (ryg_rans); x < 2**31 and
    rcp < 2**32 fit in int64."""
    q = ((x * np.int64(rcp[c, s])) >> 32) >> np.int64(rsh[c, s])
    return x + np.int64(bias[c, s]) + q * (PROB_SCALE - f)


@register_jitable
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _rans_flush(x, out, pos):  # type: ignore[no-untyped-def]
    """The final state's 4 bytes before ``out[pos]``; returns the new start."""
    for _ in range(4):
        pos -= 1
        out[pos] = x & 255
        x >>= 8
    return pos


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _rans_encode_py(ctx, tok, start, end, freq, rcp, rsh, bias, out):  # type: ignore[no-untyped-def]
    """rANS-encode tok[start:end] (contexts ctx) backwards into the tail of ``out``.

    Returns the index in ``out`` where the stream begins; the stream runs to
    ``len(out)``.  Decoding reads it forwards.
    """
    x = RANS_L
    pos = out.shape[0]
    for i in range(end - 1, start - 1, -1):
        c = np.int64(ctx[i])
        s = np.int64(tok[i])
        f = np.int64(freq[c, s])
        x_max = ((RANS_L >> PROB_BITS) << 8) * f
        while x >= x_max:
            pos -= 1
            out[pos] = x & 255
            x >>= 8
        x = _rans_step(x, f, c, s, rcp, rsh, bias)
    return _rans_flush(x, out, pos)


@register_jitable
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _rans16_encode_py(ctx, tok, start, end, freq, rcp, rsh, bias, out):
    """Like ``_rans_encode_py`` with 16-bit renormalisation (state in [2**15, 2**31)).

    At most one 16-bit word moves per symbol, so the decoder's renormalisation is a
    single conditional instead of a loop (the pixel codec's decode hot path).
    """
    x = RANS16_L
    pos = out.shape[0]
    for i in range(end - 1, start - 1, -1):
        c = np.int64(ctx[i])
        s = np.int64(tok[i])
        f = np.int64(freq[c, s])
        if x >= ((RANS16_L >> PROB_BITS) << 16) * f:
            pos -= 2
            out[pos] = (x >> 8) & 255
            out[pos + 1] = x & 255
            x >>= 16
        x = _rans_step(x, f, c, s, rcp, rsh, bias)
    return _rans_flush(x, out, pos)


@register_jitable
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _pack_bits_py(nbits, vals, start, end, out):  # type: ignore[no-untyped-def]
    """Pack vals[i] (nbits[i] bits each, LSB first) for i in [start, end); returns bytes used."""
    acc = 0
    nacc = 0
    pos = 0
    for i in range(start, end):
        nb = np.int64(nbits[i])
        if nb == 0:
            continue
        acc |= np.int64(vals[i]) << nacc  # nacc < 8 and nb <= 31: fits in 63 bits
        nacc += nb
        while nacc >= 8:
            out[pos] = acc & 255
            pos += 1
            acc >>= 8
            nacc -= 8
    if nacc > 0:
        out[pos] = acc & 255
        pos += 1
    return pos


_hist_nb: Any = njit(_hist_py, nogil=True, cache=True)
_rans_encode_nb: Any = njit(_rans_encode_py, nogil=True, cache=True)
_rans16_encode_nb: Any = njit(_rans16_encode_py, nogil=True, cache=True)
_pack_bits_nb: Any = njit(_pack_bits_py, nogil=True, cache=True)
