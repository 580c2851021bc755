"""Lossless pixel codec: LOCO-I prediction with bias cancellation + context-split rANS.

Model (per sample plane, per tile of rows):

* prediction: the MED predictor of JPEG-LS (LOCO-I) from W, N, NW, NE,
  corrected by a per-context bias (JPEG-LS's B/C/N update, 729 gradient
  contexts, no division), clamped to the plane's value range;
* entropy context: the local activity ``|NE-N| + |N-NW| + |NW-W| + |e_W| + |e_N|``
  (gradients plus the magnitudes of the neighbours' own residuals, as in CALIC's
  error energy), quantised in half octaves; the zigzagged residual is split into
  a token (rANS with one static table per context, see ``entropy``) and raw
  extra bits;
* "max" effort replaces MED by a blend of ten sub-predictors (MED, N, W,
  gradients, and the linear extrapolations 2N-NN, 2W-WW, 2NW-NWNW, 2NE-NENE)
  weighted by the inverse square of each one's recent local error (after the
  self-correcting predictor of JPEG XL), adds the blend's error to the entropy
  context, tries a few thresholds/weightings and keeps the smallest stream.

Tiles are independent, so encoding and decoding run in parallel over
frames x planes x row bands (``numba.prange``) with one shared table set.
RGB is decorrelated with the reversible colour transform of JPEG 2000 (RCT).
Sample channels that use at most half of the codes between their extremes
(palette indices shifted into the high byte, 5-bit colour) are first replaced
by the ranks of their values, the value table travelling in the header.

>>> import numpy as np
>>> a = (np.arange(64, dtype="<u2").reshape(8, 8) * 37) % 4096
>>> np.array_equal(pixel_decode(pixel_encode(a)), a)
True
"""

from __future__ import annotations

import functools
import struct
import zlib
from typing import Any, no_type_check

import numba
import numpy as np
from numba import njit as _njit
from numba import prange as _prange

from fenji.codecs.compress import entropy as ent
from fenji.codecs.compress.entropy import (
    PROB_BITS,
    PROB_SCALE,
    RANS16_L,
    _pack_bits_nb,
    _pack_bits_py,
    _rans16_encode_nb,
    _rans16_encode_py,
)
from fenji.codecs.errors import DecodeError

# Any-typed: numba's stubs do not describe dispatchers called with arrays
njit: Any = _njit
prange: Any = _prange

MAGIC = b"FJPX"
VERSION = 1
NCTX = 32
NSUB = 10  # sub-predictors blended by the "max" predictor

# dtype code <-> dtype, one table (STYLE: dtypes explicit, from one table)
DTYPES: dict[int, str] = {1: "|u1", 2: "|i1", 3: "<u2", 4: "<i2"}
_CODE_OF = {np.dtype(v): k for k, v in DTYPES.items()}
EFFORTS = ("fast", "max")

# header: magic, version, dtype code, flags, frames, rows, cols, samples,
#         lo, hi, t1, t2, t3, wact (activity weight), tile_rows, table bytes
_HDR = struct.Struct("<4sBBBxIIIIiiiiiiII")
_RESET = 64


def _cls_of(act: int) -> int:
    """Entropy context of an activity value: half-octave classes, capped."""
    if act == 0:
        return 0
    n = act.bit_length()
    cls = 1 if n == 1 else 2 * n - 1 + ((act >> (n - 2)) & 1)
    return min(cls, NCTX - 1)


# lookup tables baked into the kernels as constants (the loops they replace are
# the slow path for values >= 4096)
_CLUT = np.array([_cls_of(v) for v in range(4096)], dtype=np.uint8)
_TOKLUT = np.array([ent.token_of(v)[0] for v in range(4096)], dtype=np.uint8)
_NBLUT = np.array([ent.token_of(v)[1] for v in range(4096)], dtype=np.uint8)


@functools.lru_cache(maxsize=64)
def _qlut(t1: int, t2: int, t3: int) -> np.ndarray:
    """Gradient quantiser of JPEG-LS (A.3.3) as a table indexed by g + t3, |g| <= t3."""
    out = np.empty(2 * t3 + 1, np.int64)
    for i in range(2 * t3 + 1):
        g = i - t3
        if g <= -t3:
            qi = 0
        elif g <= -t2:
            qi = 1
        elif g <= -t1:
            qi = 2
        elif g < 0:
            qi = 3
        elif g == 0:
            qi = 4
        elif g < t1:
            qi = 5
        elif g < t2:
            qi = 6
        elif g < t3:
            qi = 7
        else:
            qi = 8
        out[i] = qi
    return out


# --------------------------------------------------------------------------- kernels
# The encoder's model pass and the decoder run the same neighbourhood code; it is
# written out in both (Numba cannot call a plain-Python helper from a twin).


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _model_py(planes, p, r0, r1, lo, hi, t3, qlut, wact, mode, ctx, tok, nbits, vals):  # type: ignore[no-untyped-def]
    """Residual tokens of planes[p, r0:r1] into the flat outputs (encoder pass 1)."""
    rows = planes.shape[1]
    cols = planes.shape[2]
    bsum = np.zeros(729, np.int64)
    corr = np.zeros(729, np.int64)
    cnt = np.ones(729, np.int64)
    eprev = np.zeros(cols + 1, np.int64)
    ecur = np.zeros(cols + 1, np.int64)
    kerr_p = np.zeros((NSUB, cols + 2), np.int64)
    kerr_c = np.zeros((NSUB, cols + 2), np.int64)
    spv = np.zeros(NSUB, np.int64)
    k = (p * rows + r0) * cols
    for r in range(r0, r1):
        ecur[0] = eprev[1]
        if mode != 0:
            for kk in range(NSUB):
                kerr_c[kk, 0] = kerr_p[kk, 1]
        for c in range(cols):
            if r == r0:
                a = np.int64(planes[p, r, c - 1]) if c > 0 else 0
                b = a
                nw = a
                ne = a
            else:
                b = np.int64(planes[p, r - 1, c])
                if c > 0:
                    a = np.int64(planes[p, r, c - 1])
                    nw = np.int64(planes[p, r - 1, c - 1])
                else:
                    a = b
                    nw = b
                ne = np.int64(planes[p, r - 1, c + 1]) if c + 1 < cols else b
            mx = a if a > b else b
            mn = a if a < b else b
            if nw >= mx:
                pred = mn
            elif nw <= mn:
                pred = mx
            else:
                pred = a + b - nw
            if mode != 0:
                # weighted blend of sub-predictors by their recent local errors
                spv[0] = pred
                spv[1] = b
                spv[2] = a
                spv[3] = a + ne - b
                spv[4] = a + b - nw
                nn = np.int64(planes[p, r - 2, c]) if r - 2 >= r0 else b
                ww = np.int64(planes[p, r, c - 2]) if c >= 2 else a
                spv[5] = 2 * b - nn
                spv[6] = 2 * a - ww
                nwnw = np.int64(planes[p, r - 2, c - 2]) if (r - 2 >= r0 and c >= 2) else nw
                nene = np.int64(planes[p, r - 2, c + 2]) if (r - 2 >= r0 and c + 2 < cols) else ne
                spv[7] = 2 * nw - nwnw
                spv[8] = 2 * ne - nene
                spv[9] = (a + ne + 1) >> 1
                wsum = 0
                wacc = 0
                smin = np.int64(1) << 40
                for kk in range(NSUB):
                    s_ = (2 * kerr_c[kk, c] + 2 * kerr_p[kk, c + 1] + kerr_p[kk, c]
                          + kerr_p[kk, c + 2])
                    if mode == 1:
                        w = (1 << 30) // (1 + s_)
                    else:
                        w = (1 << 40) // ((1 + s_) * (1 + s_))
                    wsum += w
                    if s_ < smin:
                        smin = s_
                    wacc += w * spv[kk]
                pred = (wacc + (wsum >> 1)) // wsum
            g1 = ne - b
            g2 = b - nw
            g3 = nw - a
            q1 = g1 if g1 > -t3 else -t3
            q2 = g2 if g2 > -t3 else -t3
            q3 = g3 if g3 > -t3 else -t3
            q = (qlut[(q1 if q1 < t3 else t3) + t3] * 81 + qlut[(q2 if q2 < t3 else t3) + t3] * 9
                 + qlut[(q3 if q3 < t3 else t3) + t3])
            pc = pred + corr[q]
            if pc < lo:
                pc = lo
            elif pc > hi:
                pc = hi
            xv = np.int64(planes[p, r, c])
            e = xv - pc
            if mode != 0:
                for kk in range(NSUB):
                    v = xv - spv[kk]
                    kerr_c[kk, c + 1] = v if v >= 0 else -v
            # bias cancellation, JPEG-LS A.6.2 without the sign merge
            bsum[q] += e
            cnt[q] += 1
            if cnt[q] == _RESET:
                bsum[q] >>= 1
                cnt[q] >>= 1
            if bsum[q] <= -cnt[q]:
                bsum[q] += cnt[q]
                corr[q] -= 1
                if bsum[q] <= -cnt[q]:
                    bsum[q] = -cnt[q] + 1
            elif bsum[q] > 0:
                bsum[q] -= cnt[q]
                corr[q] += 1
                if bsum[q] > 0:
                    bsum[q] = 0
            ae = e if e >= 0 else -e
            act = (
                (g1 if g1 >= 0 else -g1) + (g2 if g2 >= 0 else -g2) + (g3 if g3 >= 0 else -g3)
                + wact * (ecur[c] + eprev[c + 1])
            )
            if mode != 0:
                act += smin >> 2
            ecur[c + 1] = ae
            if act < 4096:
                cls = np.int64(_CLUT[act])
            else:
                n = 0
                t = act
                while t > 0:
                    n += 1
                    t >>= 1
                cls = 1 if n == 1 else 2 * n - 1 + ((act >> (n - 2)) & 1)
                if cls > NCTX - 1:
                    cls = NCTX - 1
            u = 2 * e if e >= 0 else -2 * e - 1
            ctx[k] = cls
            if u < 4096:
                nb = np.int64(_NBLUT[u])
                tok[k] = _TOKLUT[u]
                nbits[k] = nb
                vals[k] = u & ((1 << nb) - 1)
            else:
                n = 0
                t = u
                while t > 0:
                    n += 1
                    t >>= 1
                n -= 1
                tok[k] = 16 + (n - 4) * 2 + ((u >> (n - 1)) & 1)
                nbits[k] = n - 1
                vals[k] = u & ((1 << (n - 1)) - 1)
            k += 1
        for i in range(cols + 1):
            eprev[i] = ecur[i]
        if mode != 0:
            for kk in range(NSUB):
                for i in range(cols + 2):
                    kerr_p[kk, i] = kerr_c[kk, i]


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _decode_tile_py(planes, p, r0, r1, lo, hi, t3, qlut, wact, mode, cmap, dtab,  # type: ignore[no-untyped-def]
                    buf, rs, re_, bs, be):
    """Decode planes[p, r0:r1] from rANS bytes buf[rs:re_] and extra bits buf[bs:be].

    Returns 0 on success, a negative code if the stream is inconsistent.
    """
    cols = planes.shape[2]
    bsum = np.zeros(729, np.int64)
    corr = np.zeros(729, np.int64)
    cnt = np.ones(729, np.int64)
    eprev = np.zeros(cols + 1, np.int64)
    ecur = np.zeros(cols + 1, np.int64)
    kerr_p = np.zeros((NSUB, cols + 2), np.int64)
    kerr_c = np.zeros((NSUB, cols + 2), np.int64)
    spv = np.zeros(NSUB, np.int64)
    if re_ - rs < 4:
        return -1
    x = ((np.int64(buf[rs]) << 24) | (np.int64(buf[rs + 1]) << 16)
         | (np.int64(buf[rs + 2]) << 8) | np.int64(buf[rs + 3]))
    rpos = rs + 4
    acc = 0
    nacc = 0
    bpos = bs
    for r in range(r0, r1):
        ecur[0] = eprev[1]
        if mode != 0:
            for kk in range(NSUB):
                kerr_c[kk, 0] = kerr_p[kk, 1]
        for c in range(cols):
            if r == r0:
                a = np.int64(planes[p, r, c - 1]) if c > 0 else 0
                b = a
                nw = a
                ne = a
            else:
                b = np.int64(planes[p, r - 1, c])
                if c > 0:
                    a = np.int64(planes[p, r, c - 1])
                    nw = np.int64(planes[p, r - 1, c - 1])
                else:
                    a = b
                    nw = b
                ne = np.int64(planes[p, r - 1, c + 1]) if c + 1 < cols else b
            mx = a if a > b else b
            mn = a if a < b else b
            if nw >= mx:
                pred = mn
            elif nw <= mn:
                pred = mx
            else:
                pred = a + b - nw
            if mode != 0:
                # weighted blend of sub-predictors by their recent local errors
                spv[0] = pred
                spv[1] = b
                spv[2] = a
                spv[3] = a + ne - b
                spv[4] = a + b - nw
                nn = np.int64(planes[p, r - 2, c]) if r - 2 >= r0 else b
                ww = np.int64(planes[p, r, c - 2]) if c >= 2 else a
                spv[5] = 2 * b - nn
                spv[6] = 2 * a - ww
                nwnw = np.int64(planes[p, r - 2, c - 2]) if (r - 2 >= r0 and c >= 2) else nw
                nene = np.int64(planes[p, r - 2, c + 2]) if (r - 2 >= r0 and c + 2 < cols) else ne
                spv[7] = 2 * nw - nwnw
                spv[8] = 2 * ne - nene
                spv[9] = (a + ne + 1) >> 1
                wsum = 0
                wacc = 0
                smin = np.int64(1) << 40
                for kk in range(NSUB):
                    s_ = (2 * kerr_c[kk, c] + 2 * kerr_p[kk, c + 1] + kerr_p[kk, c]
                          + kerr_p[kk, c + 2])
                    if mode == 1:
                        w = (1 << 30) // (1 + s_)
                    else:
                        w = (1 << 40) // ((1 + s_) * (1 + s_))
                    wsum += w
                    if s_ < smin:
                        smin = s_
                    wacc += w * spv[kk]
                pred = (wacc + (wsum >> 1)) // wsum
            g1 = ne - b
            g2 = b - nw
            g3 = nw - a
            q1 = g1 if g1 > -t3 else -t3
            q2 = g2 if g2 > -t3 else -t3
            q3 = g3 if g3 > -t3 else -t3
            q = (qlut[(q1 if q1 < t3 else t3) + t3] * 81 + qlut[(q2 if q2 < t3 else t3) + t3] * 9
                 + qlut[(q3 if q3 < t3 else t3) + t3])
            pc = pred + corr[q]
            if pc < lo:
                pc = lo
            elif pc > hi:
                pc = hi
            act = (
                (g1 if g1 >= 0 else -g1) + (g2 if g2 >= 0 else -g2) + (g3 if g3 >= 0 else -g3)
                + wact * (ecur[c] + eprev[c + 1])
            )
            if mode != 0:
                act += smin >> 2
            if act < 4096:
                cls = np.int64(_CLUT[act])
            else:
                n = 0
                t = act
                while t > 0:
                    n += 1
                    t >>= 1
                cls = 1 if n == 1 else 2 * n - 1 + ((act >> (n - 2)) & 1)
                if cls > NCTX - 1:
                    cls = NCTX - 1
            # rANS symbol
            cls = np.int64(cmap[cls])
            slot = x & (PROB_SCALE - 1)
            d = np.int64(dtab[cls, slot])  # symbol | (slot - start) << 7 | freq << 19
            s = d & 127
            f = d >> 19
            if f == 0:
                return -2
            x = f * (x >> PROB_BITS) + ((d >> 7) & 4095)
            # branch-free 16-bit renormalisation; reading up to 2 bytes past the tile
            # stays inside buf (the stream ends in its CRC), and rpos is checked
            need = np.int64(x < RANS16_L)
            wd = (np.int64(buf[rpos]) << 8) | np.int64(buf[rpos + 1])
            x = (x << (need << 4)) | (wd * need)
            rpos += need << 1
            if rpos > re_:
                return -3
            if s < 16:
                u = s
            else:
                n = (s - 16) // 2 + 4
                nb = n - 1
                while nacc < nb:
                    if bpos >= be:
                        return -4
                    acc |= np.int64(buf[bpos]) << nacc
                    bpos += 1
                    nacc += 8
                u = (1 << n) | (((s - 16) & 1) << (n - 1)) | (acc & ((1 << nb) - 1))
                acc >>= nb
                nacc -= nb
            e = (u >> 1) if (u & 1) == 0 else -((u + 1) >> 1)
            planes[p, r, c] = pc + e
            if mode != 0:
                for kk in range(NSUB):
                    v = pc + e - spv[kk]
                    kerr_c[kk, c + 1] = v if v >= 0 else -v
            bsum[q] += e
            cnt[q] += 1
            if cnt[q] == _RESET:
                bsum[q] >>= 1
                cnt[q] >>= 1
            if bsum[q] <= -cnt[q]:
                bsum[q] += cnt[q]
                corr[q] -= 1
                if bsum[q] <= -cnt[q]:
                    bsum[q] = -cnt[q] + 1
            elif bsum[q] > 0:
                bsum[q] -= cnt[q]
                corr[q] += 1
                if bsum[q] > 0:
                    bsum[q] = 0
            ecur[c + 1] = e if e >= 0 else -e
        for i in range(cols + 1):
            eprev[i] = ecur[i]
        if mode != 0:
            for kk in range(NSUB):
                for i in range(cols + 2):
                    kerr_p[kk, i] = kerr_c[kk, i]
    if x != RANS16_L or rpos != re_ or bpos != be:
        return -5
    return 0


_model_nb: Any = njit(_model_py, nogil=True, cache=True)
_decode_tile_nb: Any = njit(_decode_tile_py, nogil=True, cache=True)


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _model_tiles_py(planes, tiles, lo, hi, t3, qlut, wact, mode, ctx, tok, nbits, vals):  # type: ignore[no-untyped-def]
    for i in range(tiles.shape[0]):
        _model_py(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut, wact,
                  mode, ctx, tok, nbits, vals)


@njit(parallel=True, cache=True, nogil=True)
def _model_tiles_nb(planes, tiles, lo, hi, t3, qlut, wact, mode, ctx, tok, nbits, vals):  # type: ignore[no-untyped-def]
    for i in prange(tiles.shape[0]):
        _model_nb(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut, wact,
                  mode, ctx, tok, nbits, vals)


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _code_tiles_py(ctx, tok, nbits, vals, starts, freq, rcp, rsh, bias, rbuf, roff, bbuf, boff,  # type: ignore[no-untyped-def]
                   res):
    for i in range(starts.shape[0] - 1):
        res[i, 0] = _rans16_encode_py(ctx, tok, starts[i], starts[i + 1], freq, rcp, rsh, bias,
                                        rbuf[roff[i]:roff[i + 1]])
        res[i, 1] = _pack_bits_py(nbits, vals, starts[i], starts[i + 1],
                                      bbuf[boff[i]:boff[i + 1]])


@njit(parallel=True, cache=True, nogil=True)
def _code_tiles_nb(ctx, tok, nbits, vals, starts, freq, rcp, rsh, bias, rbuf, roff, bbuf, boff,  # type: ignore[no-untyped-def]
                   res):
    for i in prange(starts.shape[0] - 1):
        res[i, 0] = _rans16_encode_nb(ctx, tok, starts[i], starts[i + 1], freq, rcp, rsh, bias,
                                        rbuf[roff[i]:roff[i + 1]])
        res[i, 1] = _pack_bits_nb(nbits, vals, starts[i], starts[i + 1],
                                      bbuf[boff[i]:boff[i + 1]])


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _decode_tiles_py(planes, tiles, lo, hi, t3, qlut, wact, mode, cmap, dtab, buf, spans,
                     status):  # type: ignore[no-untyped-def]
    for i in range(tiles.shape[0]):
        status[i] = _decode_tile_py(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut,
                                    wact, mode, cmap, dtab, buf, spans[i, 0], spans[i, 1],
                                    spans[i, 2], spans[i, 3])


@njit(parallel=True, cache=True, nogil=True)
def _decode_tiles_nb(planes, tiles, lo, hi, t3, qlut, wact, mode, cmap, dtab, buf, spans,
                     status):  # type: ignore[no-untyped-def]
    for i in prange(tiles.shape[0]):
        status[i] = _decode_tile_nb(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut,
                                    wact, mode, cmap, dtab, buf, spans[i, 0], spans[i, 1],
                                    spans[i, 2], spans[i, 3])


@njit(cache=True, nogil=True)
def _model_tiles_snb(planes, tiles, lo, hi, t3, qlut, wact, mode, ctx, tok, nbits, vals):  # type: ignore[no-untyped-def]
    for i in range(tiles.shape[0]):
        _model_nb(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut, wact,
                  mode, ctx, tok, nbits, vals)


@njit(cache=True, nogil=True)
def _code_tiles_snb(ctx, tok, nbits, vals, starts, freq, rcp, rsh, bias, rbuf, roff, bbuf, boff,  # type: ignore[no-untyped-def]
                    res):
    for i in range(starts.shape[0] - 1):
        res[i, 0] = _rans16_encode_nb(ctx, tok, starts[i], starts[i + 1], freq, rcp, rsh, bias,
                                      rbuf[roff[i]:roff[i + 1]])
        res[i, 1] = _pack_bits_nb(nbits, vals, starts[i], starts[i + 1],
                                  bbuf[boff[i]:boff[i + 1]])


@njit(cache=True, nogil=True)
def _decode_tiles_snb(planes, tiles, lo, hi, t3, qlut, wact, mode, cmap, dtab, buf, spans,  # type: ignore[no-untyped-def]
                      status):
    for i in range(tiles.shape[0]):
        status[i] = _decode_tile_nb(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3,
                                    qlut, wact, mode, cmap, dtab, buf, spans[i, 0], spans[i, 1],
                                    spans[i, 2], spans[i, 3])


# Small inputs skip the thread pool: with one tile there is nothing to share, and an
# OpenMP fork/join costs milliseconds when another process holds the other core.
_SERIAL_BELOW = 1 << 17  # samples

_IMPL: dict[str, dict[str, Any]] = {
    "snb": {"model": _model_tiles_snb, "code": _code_tiles_snb, "decode": _decode_tiles_snb,
            "hist": ent._hist_nb},
    "nb": {"model": _model_tiles_nb, "code": _code_tiles_nb, "decode": _decode_tiles_nb,
           "hist": ent._hist_nb},
    "py": {"model": _model_tiles_py, "code": _code_tiles_py, "decode": _decode_tiles_py,
           "hist": ent._hist_py},
}


# --------------------------------------------------------------------------- helpers


def _canonical(arr: np.ndarray) -> np.ndarray:
    """(frames, rows, cols, samples) view of a 2-D, 3-D or 4-D array."""
    if arr.ndim == 2:
        return arr[None, :, :, None]
    if arr.ndim == 3:
        return arr[:, :, :, None]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"pixel array must be 2-D, 3-D or 4-D, got shape {arr.shape}")


def _tiles(nplanes: int, rows: int, cols: int, tile_rows: int) -> np.ndarray:
    out = [(p, r0, min(r0 + tile_rows, rows)) for p in range(nplanes)
           for r0 in range(0, rows, tile_rows)]
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def _tile_rows(rows: int, cols: int) -> int:
    # ~64 K samples per tile: enough tiles to spread over cores, few enough that
    # the per-tile restart (first row, bias state) costs well under 0.5 %.
    return max(8, min(rows, -(-65536 // max(cols, 1))))


def _thresholds(lo: int, hi: int) -> tuple[int, int, int]:
    # JPEG-LS default thresholds (ITU-T T.87 C.2.4.1.1.1) for MAXVAL = hi - lo
    maxval = max(hi - lo, 1)
    if maxval >= 128:
        f = (min(maxval, 4095) + 128) >> 8
        t1, t2, t3 = f * 1 + 2, f * 5 + 2, f * 19 + 2
    else:
        f = 256 // (maxval + 1)
        t1, t2, t3 = max(2, 3 // f + 0), max(3, 7 // f), max(4, 21 // f)
    t1 = max(t1, 1)
    t2 = max(t2, t1)
    t3 = max(t3, t2)
    return t1, t2, t3


def _rct_forward(a: np.ndarray) -> np.ndarray:
    r, g, b = (a[..., i].astype(np.int32) for i in range(3))
    y = (r + 2 * g + b) >> 2
    return np.stack([y, b - g, r - g], axis=-1)


def _rct_inverse(a: np.ndarray) -> np.ndarray:
    y, cb, cr = (a[..., i].astype(np.int32) for i in range(3))
    g = y - ((cb + cr) >> 2)
    return np.stack([cr + g, g, cb + g], axis=-1)


def _sparse_pack(a4: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Replace each sample channel whose values are sparse (at most half the codes
    between its min and max are used, e.g. 8-bit data shifted into the high byte)
    by the ranks of its values, as JPEG XL's channel palette does."""
    out = a4.astype(np.int32)
    tables: list[np.ndarray | None] = []
    for si in range(out.shape[3]):
        ch = out[..., si]
        if ch.size == 0:
            tables.append(None)
            continue
        mn = int(ch.min())
        cnt = np.bincount((ch - mn).ravel())
        present = np.nonzero(cnt)[0]
        # sparse (at most half the codes used) and a value table small next to the
        # pixels it serves (16 samples per entry), else ranks would cost more than
        # they save (small 16-bit MR slices use few of many codes, yet are dense)
        if len(present) < 2 or len(present) * 2 > len(cnt) or len(present) * 16 > ch.size:
            tables.append(None)
            continue
        lut = np.zeros(len(cnt), np.int32)
        lut[present] = np.arange(len(present), dtype=np.int32)
        out[..., si] = lut[ch - mn]
        tables.append((present + mn).astype(np.int64))
    return out, tables


def _pack_value_tables(tables: list[np.ndarray | None]) -> bytes:
    out = bytearray()
    for t in tables:
        vals = [] if t is None else [int(t[0])] + np.diff(t).tolist()
        out += _varint(len(vals))
        for i, v in enumerate(vals):
            out += _varint((v << 1) ^ (v >> 63) if i == 0 else v)
    return bytes(out)


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    v = 0
    shift = 0
    while True:
        if pos >= end or shift > 35:
            raise DecodeError("pixel stream value table truncated or malformed")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, pos


def _unpack_value_tables(buf: bytes, pos: int, end: int, samples: int
                         ) -> tuple[list[np.ndarray | None], int]:
    tables: list[np.ndarray | None] = []
    for _ in range(samples):
        n, pos = _read_varint(buf, pos, end)
        if n > 1 << 17:
            raise DecodeError(f"pixel stream value table of {n} entries")
        if n == 0:
            tables.append(None)
            continue
        vals = []
        for i in range(n):
            v, pos = _read_varint(buf, pos, end)
            vals.append((v >> 1) ^ -(v & 1) if i == 0 else v)
        tables.append(np.cumsum(np.array(vals, dtype=np.int64)))
    return tables, pos


def _encode_planes(planes: np.ndarray, lo: int, hi: int, t: tuple[int, int, int], wact: int,
                   mode: int,
                   tile_rows: int, impl: str) -> tuple[bytes, bytes]:
    nplanes, rows, cols = planes.shape
    tiles = _tiles(nplanes, rows, cols, tile_rows)
    if impl == "nb" and (len(tiles) == 1 or planes.size < _SERIAL_BELOW
                         or numba.get_num_threads() == 1):
        impl = "snb"
    k = _IMPL[impl]
    n = planes.size
    ctx = np.empty(n, np.uint8)
    tok = np.empty(n, np.uint8)
    nbits = np.empty(n, np.uint8)
    vals = np.empty(n, np.uint32)
    k["model"](planes, tiles, lo, hi, t[2], _qlut(*t), wact, mode, ctx, tok, nbits, vals)
    hist = k["hist"](ctx, tok, NCTX)
    cmap = ent.cluster_contexts(hist)
    merged = np.zeros((int(cmap.max()) + 1, ent.NSYM), np.int64)
    np.add.at(merged, cmap, hist)
    freqs = ent.normalize_freqs(merged)
    ctx = cmap[ctx]
    f, rcp, rsh, bias = ent.encode_tables(freqs)
    npix = (tiles[:, 2] - tiles[:, 1]) * cols
    starts = np.zeros(len(tiles) + 1, np.int64)
    starts[1:] = np.cumsum(npix)
    roff = np.zeros(len(tiles) + 1, np.int64)
    roff[1:] = np.cumsum(2 * npix + 8)
    boff = np.zeros(len(tiles) + 1, np.int64)
    boff[1:] = np.cumsum(4 * npix + 8)
    rbuf = np.empty(int(roff[-1]), np.uint8)
    bbuf = np.empty(int(boff[-1]), np.uint8)
    res = np.zeros((len(tiles), 2), np.int64)
    k["code"](ctx, tok, nbits, vals, starts, f, rcp, rsh, bias, rbuf, roff, bbuf, boff, res)
    lens = []
    parts = []
    for i in range(len(tiles)):
        rpart = rbuf[roff[i] + res[i, 0]:roff[i + 1]]
        bpart = bbuf[boff[i]:boff[i] + res[i, 1]]
        lens.append((len(rpart), len(bpart)))
        parts.append(rpart.tobytes())
        parts.append(bpart.tobytes())
    index = np.array(lens, dtype="<u4").tobytes()
    return ent.pack_cmap(cmap) + ent.pack_tables(freqs), index + b"".join(parts)


# --------------------------------------------------------------------------- public


def pixel_encode(arr: np.ndarray, *, effort: str = "fast", rct: bool = False,
                 _impl: str = "nb") -> bytes:
    """Losslessly encode an integer pixel array (8/16-bit, signed or unsigned).

    ``arr`` is (rows, cols), (frames, rows, cols) or (frames, rows, cols, samples);
    ``rct=True`` applies JPEG 2000's reversible colour transform to 3-sample
    (RGB) data first.  The input is never modified.

    >>> import numpy as np
    >>> a = np.full((3, 5), 7, dtype="<i2")
    >>> pixel_decode(pixel_encode(a, effort="max")).tolist() == a.tolist()
    True
    """
    if effort not in EFFORTS:
        raise ValueError(f"effort = {effort!r} is not one of {EFFORTS}")
    a = np.asarray(arr)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _CODE_OF.get(np.dtype(dt))
    if code is None:
        raise ValueError(f"pixel dtype {a.dtype} is not one of {sorted(DTYPES.values())}")
    shape = a.shape
    a4 = a[None] if (rct and a.ndim == 3 and shape[-1] == 3) else _canonical(a)
    frames, rows, cols, samples = a4.shape
    if rct and samples != 3:
        raise ValueError(f"rct needs 3 samples per pixel, got {samples}")
    packed, vtables = _sparse_pack(a4)
    if not any(t is not None for t in vtables):
        vtables = []
    w = _rct_forward(packed) if rct else packed
    planes = np.ascontiguousarray(np.moveaxis(w, 3, 1).reshape(frames * samples, rows, cols),
                                  dtype=np.int32)
    if planes.size:
        lo, hi = int(planes.min()), int(planes.max())
    else:
        lo = hi = 0
    tile_rows = _tile_rows(rows, cols)
    t = _thresholds(lo, hi)
    # (thresholds, activity weight, predictor mode: 0 MED, 1/2 weighted blend)
    # Half the JPEG-LS default thresholds and residual energy weighted 2 measured
    # 0.3-1 % smaller than the defaults on every CT/CR/MG/MR sample, never larger.
    t1, t2, t3 = t
    half = (max(1, t1 // 2), max(1, t2 // 2), max(1, t3 // 2))
    candidates = [(half, 2, 0)]
    if effort == "max":
        candidates = [(half, 2, 2), (t, 1, 2), (t, 1, 1), (half, 2, 0)]
        # fewer, taller bands: restarts cost ~1 % here; two per plane keep 2 cores busy
        tile_rows = max(tile_rows, -(-rows // 2))
    best: tuple[bytes, bytes, tuple[int, int, int], int, int] | None = None
    if planes.size:
        for tt, wact, mode in candidates:
            tables, body = _encode_planes(planes, lo, hi, tt, wact, mode, tile_rows, _impl)
            if best is None or len(tables) + len(body) < len(best[0]) + len(best[1]):
                best = (tables, body, tt, wact, mode)
    else:
        best = (b"", b"", t, 1, 0)
    assert best is not None
    tables, body, tt, wact, mode = best
    dims = struct.pack(f"<B{len(shape)}I", len(shape), *shape)
    flags = (1 if rct else 0) | mode << 1 | (8 if vtables else 0)
    if vtables:
        dims += _pack_value_tables(vtables)
    hdr = _HDR.pack(MAGIC, VERSION, code, flags, frames, rows, cols, samples,
                    lo, hi, tt[0], tt[1], tt[2], wact, tile_rows, len(tables))
    out = hdr + dims + tables + body
    return out + struct.pack("<I", zlib.crc32(out))


def pixel_info(buf: bytes) -> dict[str, Any]:
    """Header fields of an encoded pixel stream (no decoding)."""
    if len(buf) < _HDR.size + 5:
        raise DecodeError(f"pixel stream of {len(buf)} bytes is shorter than its header")
    (magic, version, code, flags, frames, rows, cols, samples, lo, hi, t1, t2, t3, wact,
     tile_rows, ntab) = _HDR.unpack_from(buf)
    if magic != MAGIC:
        raise DecodeError(f"pixel stream magic {magic!r} != {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(f"pixel stream version {version} is not supported (max {VERSION})")
    if code not in DTYPES:
        raise DecodeError(f"pixel stream dtype code {code} unknown")
    return {"dtype": DTYPES[code], "frames": frames, "rows": rows, "cols": cols,
            "samples": samples, "rct": bool(flags & 1), "mode": (flags >> 1) & 3,
            "packed": bool(flags & 8),
            "lo": lo, "hi": hi,
            "thresholds": (t1, t2, t3), "wact": wact, "tile_rows": tile_rows,
            "table_bytes": ntab}


# Decoded samples (frames x rows x cols x samples) pixel_decode produces at most
# unless told otherwise: every sample of the largest instance fenji accepts
# (dicom.max_instance_bytes = 1 GiB at 8 bits).  A stream of zeros compresses
# a thousandfold, so a few KB must not be allowed to ask for more (issue 17:
# a 25 KB preview decoded to 1.16 GB).  Callers with a smaller need (previews)
# pass a smaller cap.
MAX_PIXELS = 1 << 30


def pixel_decode(buf: bytes, *, max_pixels: int = MAX_PIXELS, _impl: str = "nb") -> np.ndarray:
    """Decode :func:`pixel_encode` output; corrupt or truncated input raises DecodeError.

    A stream whose header declares more than ``max_pixels`` samples raises
    DecodeError before anything is allocated.
    """
    buf = bytes(buf)
    info = pixel_info(buf)
    declared = info["frames"] * info["rows"] * info["cols"] * info["samples"]
    if declared > max_pixels:
        raise DecodeError(f"pixel stream declares {info['frames']}x{info['rows']}x{info['cols']}"
                          f"x{info['samples']} = {declared} samples, more than the cap of "
                          f"{max_pixels}")
    if zlib.crc32(buf[:-4]) != struct.unpack_from("<I", buf, len(buf) - 4)[0]:
        raise DecodeError("pixel stream CRC-32 mismatch (corrupt or truncated)")
    pos = _HDR.size
    ndim = buf[pos]
    if ndim not in (2, 3, 4):
        raise DecodeError(f"pixel stream ndim {ndim} invalid")
    shape = struct.unpack_from(f"<{ndim}I", buf, pos + 1)
    pos += 1 + 4 * ndim
    frames, rows, cols, samples = info["frames"], info["rows"], info["cols"], info["samples"]
    n = frames * rows * cols * samples
    if int(np.prod(shape, dtype=np.int64)) != n:
        raise DecodeError(f"pixel stream shape {shape} != {frames}x{rows}x{cols}x{samples}")
    dtype = np.dtype(DTYPES[buf[5]])
    if n == 0:
        return np.zeros(shape, dtype)
    vtables: list[np.ndarray | None] = []
    if info["packed"]:
        vtables, pos = _unpack_value_tables(buf, pos, len(buf) - 4, samples)
    tile_rows = info["tile_rows"]
    if tile_rows < 1 or info["rct"] and samples != 3:
        raise DecodeError(f"pixel stream tile_rows {tile_rows} / samples {samples} invalid")
    end = len(buf) - 4
    ntab = info["table_bytes"]
    if pos + ntab > end:
        raise DecodeError("pixel stream truncated in its tables")
    cmap, tpos = ent.unpack_cmap(buf[:pos + ntab], pos, NCTX)
    freqs = ent.unpack_tables(buf[tpos:pos + ntab], int(cmap.max()) + 1)
    pos += ntab
    dtab = ent.decode_table_packed(freqs)
    tiles = _tiles(frames * samples, rows, cols, tile_rows)
    nt = len(tiles)
    if pos + 8 * nt > end:
        raise DecodeError("pixel stream truncated in its tile index")
    lens = np.frombuffer(buf, dtype="<u4", count=2 * nt, offset=pos).astype(np.int64)
    pos += 8 * nt
    spans = np.zeros((nt, 4), np.int64)
    for i in range(nt):
        spans[i, 0] = pos
        spans[i, 1] = pos + lens[2 * i]
        spans[i, 2] = spans[i, 1]
        spans[i, 3] = spans[i, 1] + lens[2 * i + 1]
        pos = int(spans[i, 3])
    if pos != end:
        raise DecodeError(f"pixel stream body is {end} bytes, tiles say {pos}")
    data = np.frombuffer(buf, dtype=np.uint8)
    planes = np.zeros((frames * samples, rows, cols), np.int32)
    status = np.zeros(nt, np.int64)
    t1, t2, t3 = info["thresholds"]
    if not 1 <= t1 <= t2 <= t3 <= 1 << 20:
        raise DecodeError(f"pixel stream thresholds {(t1, t2, t3)} invalid")
    if _impl == "nb" and (nt == 1 or planes.size < _SERIAL_BELOW
                          or numba.get_num_threads() == 1):
        _impl = "snb"
    _IMPL[_impl]["decode"](planes, tiles, info["lo"], info["hi"], t3, _qlut(t1, t2, t3),
                           info["wact"], info["mode"], cmap, dtab, data, spans, status)
    if status.any():
        bad = int(np.nonzero(status)[0][0])
        raise DecodeError(f"pixel stream tile {bad} is corrupt (code {int(status[bad])})")
    w = np.moveaxis(planes.reshape(frames, samples, rows, cols), 1, 3)
    if info["rct"]:
        w = _rct_inverse(w)
    if vtables:
        w = np.array(w, dtype=np.int64)
        for si, t in enumerate(vtables):
            if t is None:
                continue
            idx = w[..., si]
            if idx.min() < 0 or idx.max() >= len(t):
                raise DecodeError(f"pixel stream sample {si}: palette index out of range")
            w[..., si] = t[idx]
    info_lim = np.iinfo(dtype)
    if w.min() < info_lim.min or w.max() > info_lim.max:
        raise DecodeError(f"decoded pixel values fall outside {dtype}")
    return w.astype(dtype).reshape(shape)


def set_threads(n: int) -> None:
    """Numba threads used by the parallel kernels (1 = serial kernels, no thread pool).

    Callers that already run codecs on several threads (a worker pool over
    instances) should set 1: the kernels release the GIL, and nested OpenMP
    regions only add fork/join cost.
    """
    numba.set_num_threads(max(1, min(n, int(getattr(numba.config, "NUMBA_NUM_THREADS", 1)))))
