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
Numba (``_x_nb = njit(_x_py)``); tests assert the two agree.
"""

from __future__ import annotations

from typing import Any, no_type_check

import numpy as np
from fenji.codecs.errors import DecodeError
from numba import njit as _njit

# Any-typed: numba's stubs do not describe dispatchers called with arrays
njit: Any = _njit

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 23
NSYM = 72  # tokens for u < 2**32: 16 direct + 2 per exponent 4..31
SPLIT = 16



def token_of(u: int) -> tuple[int, int, int]:
    """Token, extra-bit count and extra value of an unsigned residual (reference).

    >>> token_of(5), token_of(16), token_of(27)
    ((5, 0, 0), (16, 3, 0), (17, 3, 3))
    """
    if u < SPLIT:
        return u, 0, 0
    n = u.bit_length() - 1
    m = (u >> (n - 1)) & 1
    return SPLIT + (n - 4) * 2 + m, n - 1, u & ((1 << (n - 1)) - 1)


def normalize_freqs(counts: np.ndarray) -> np.ndarray:
    """Scale per-context symbol counts to frequencies summing to ``PROB_SCALE``.

    Every symbol seen gets at least 1; rows with no symbol stay all zero.
    Deterministic (integer arithmetic and a stable tie order).
    """
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.shape, dtype=np.int64)
    for ci in range(counts.shape[0]):
        row = counts[ci]
        total = int(row.sum())
        if total == 0:
            continue
        f = (row * PROB_SCALE) // total
        f[(row > 0) & (f == 0)] = 1
        diff = PROB_SCALE - int(f.sum())
        order = np.argsort(-f, kind="stable")
        if diff > 0:
            f[order[0]] += diff
        else:
            # take back from the largest frequencies, never below 1
            i = 0
            while diff < 0:
                s = order[i % len(order)]
                take = min(-diff, max(int(f[s]) - 1, 0), max(int(f[s]) // 2, 1))
                if f[s] > 1 and take > 0:
                    f[s] -= take
                    diff += take
                i += 1
        out[ci] = f
    return out


def pack_tables(freqs: np.ndarray) -> bytes:
    """Serialise frequency tables: per context a length byte then LEB128 freqs."""
    out = bytearray()
    for row in freqs:
        nz = np.nonzero(row)[0]
        n = int(nz[-1]) + 1 if len(nz) else 0
        out.append(n)
        for v in row[:n]:
            v = int(v)
            while v >= 0x80:
                out.append((v & 0x7F) | 0x80)
                v >>= 7
            out.append(v)
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


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _rans_encode_py(ctx, tok, start, end, freq, cum, out):  # type: ignore[no-untyped-def]
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
        x = ((x // f) << PROB_BITS) + (x % f) + np.int64(cum[c, s])
    for _ in range(4):
        pos -= 1
        out[pos] = x & 255
        x >>= 8
    return pos


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
_pack_bits_nb: Any = njit(_pack_bits_py, nogil=True, cache=True)
