"""The pixel codec's kernels: one tile pass for encoder and decoder, three tile drivers.

The encoder's model pass and the decoder walk every tile in the same order and
must derive the same prediction and context from the same causal neighbours;
any difference between the two is a stream that does not decode.  So the
context model -- neighbourhood, MED or weighted-blend prediction, bias
correction, gradient and activity contexts, and the state updates after each
sample -- is written once, in :func:`_tile_pass`, and only the residual step
differs: the encoder computes and tokenises it, the decoder reads it from the
rANS stream.  ``_tile_pass`` (and the entropy helpers it calls) are
``numba.extending.register_jitable``: in the interpreter they are the
plain-Python twins, and inside a compiled driver Numba compiles them in.

Each driver (model, code, decode: one loop over independent tiles) is written
once as plain Python and compiled twice: with ``parallel=True`` (``prange``
spreads tiles over threads) and serially (``prange`` is ``range``; no thread
pool for small inputs).  ``_IMPL`` maps ``"py"`` (the twins), ``"snb"`` and
``"nb"`` to them.

Why not per-sample helpers (``_context(...)``, ``_update(...)``) shared by two
tile kernels: tried and measured (numba 0.68).  A compiled function takes a
reference on each array argument and drops it on return; with a loop inside
the helper Numba's reference-count pruning cannot remove the pair, so eight
array arguments per sample made the serial model pass 7x slower.  Inlining the
helpers at the Numba IR level (``inline="always"``) removes the pairs only in
the parallel pipeline and multiplied compile time by seven.  One pass with a
loop-invariant ``decode`` branch costs neither.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, no_type_check

import numpy as np
from numba import njit as _njit
from numba import prange as _prange
from numba.extending import register_jitable as _register_jitable

from fenji.codecs.compress import entropy as ent
from fenji.codecs.compress.entropy import PROB_BITS, PROB_SCALE, RANS16_L

# Any-typed: numba's stubs do not describe dispatchers called with arrays
njit: Any = _njit
prange: Any = _prange
register_jitable: Any = _register_jitable

NCTX = 32  # entropy contexts (activity classes)
NSUB = 10  # sub-predictors blended by the "max" predictor
NQ = 729  # bias contexts: three gradients quantised to 9 levels each (JPEG-LS A.3)
_RESET = 64  # JPEG-LS RESET: bias counts are halved at this count


# lookup tables baked into the kernels as constants: they replace the bit-length
# loops of entropy.activity_class / token_of for values below 4096
_CLUT = ent.class_table(NCTX)
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


# --------------------------------------------------------------------------- the tile pass


@register_jitable
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _tile_pass(planes, p, r0, r1, lo, hi, t3, qlut, wact, mode,  # type: ignore[no-untyped-def]
               decode, ctx, tok, nbits, vals, cmap, dtab, buf, rs, re_, bs, be):
    """Walk planes[p, r0:r1] through the context model, encoding or decoding.

    Encoding (``decode`` false) writes each residual's context, token and extra
    bits to ``ctx``, ``tok``, ``nbits``, ``vals`` at the tile's own offset (the
    decoder's arguments are unused).  Decoding reads the rANS bytes
    ``buf[rs:re_]`` and extra bits ``buf[bs:be]`` and writes the samples (the
    encoder's outputs are unused).  Returns 0, or a negative code if the stream
    is inconsistent.

    Everything else -- neighbourhood, MED or weighted-blend prediction, bias
    correction, gradient and activity contexts, and the state updates after each
    sample -- is one piece of code that both directions run.
    """
    cols = planes.shape[2]
    bsum = np.zeros(NQ, np.int64)  # JPEG-LS B, C, N per bias context
    corr = np.zeros(NQ, np.int64)
    cnt = np.ones(NQ, np.int64)
    eprev = np.zeros(cols + 1, np.int64)  # |residual| of the previous / current row
    ecur = np.zeros(cols + 1, np.int64)
    kerr_p = np.zeros((NSUB, cols + 2), np.int64)  # |error| of each sub-predictor
    kerr_c = np.zeros((NSUB, cols + 2), np.int64)
    spv = np.zeros(NSUB, np.int64)  # the sub-predictions of this sample
    x = np.int64(0)  # rANS state
    if decode:
        if re_ - rs < 4:
            return -1
        x = ((np.int64(buf[rs]) << 24) | (np.int64(buf[rs + 1]) << 16)
             | (np.int64(buf[rs + 2]) << 8) | np.int64(buf[rs + 3]))
    rpos = rs + 4
    acc = 0
    nacc = 0
    bpos = bs
    k = (p * planes.shape[1] + r0) * cols
    for r in range(r0, r1):
        ecur[0] = eprev[1]
        if mode != 0:
            for kk in range(NSUB):
                kerr_c[kk, 0] = kerr_p[kk, 1]
        for c in range(cols):
            # ---- causal neighbours inside the tile
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
            # ---- prediction: MED, or the weighted blend of sub-predictors
            mx = a if a > b else b
            mn = a if a < b else b
            if nw >= mx:
                pred = mn
            elif nw <= mn:
                pred = mx
            else:
                pred = a + b - nw
            smin = np.int64(0)
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
            # ---- bias context (JPEG-LS A.3) and the corrected, clamped prediction
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
            # ---- entropy context: gradients plus the neighbours' residual energy
            act = (
                (g1 if g1 >= 0 else -g1) + (g2 if g2 >= 0 else -g2) + (g3 if g3 >= 0 else -g3)
                + wact * (ecur[c] + eprev[c + 1])
            )
            if mode != 0:
                act += smin >> 2
            cls = np.int64(_CLUT[act]) if act < 4096 else np.int64(ent.activity_class(act, NCTX))
            # ---- the one step that differs: the residual
            if decode:
                cls = np.int64(cmap[cls])
                slot = x & (PROB_SCALE - 1)
                d = np.int64(dtab[cls, slot])  # symbol | (slot - start) << 7 | freq << 19
                s = d & 127
                f = d >> 19
                if f == 0:
                    return -2
                x = f * (x >> PROB_BITS) + ((d >> 7) & 4095)
                # branch-free 16-bit renormalisation; reading up to 2 bytes past the
                # tile stays inside buf (the stream ends in its CRC), and rpos is checked
                need = np.int64(x < RANS16_L)
                wd = (np.int64(buf[rpos]) << 8) | np.int64(buf[rpos + 1])
                x = (x << (need << 4)) | (wd * need)
                rpos += need << 1
                if rpos > re_:
                    return -3
                u, acc, nacc, bpos = ent.value_of(s, acc, nacc, bpos, buf, be)
                if bpos < 0:
                    return -4
                e = (u >> 1) if (u & 1) == 0 else -((u + 1) >> 1)
                xv = pc + e
                planes[p, r, c] = xv
            else:
                xv = np.int64(planes[p, r, c])
                e = xv - pc
                # zigzag, then the hybrid-uint token and its extra bits (entropy.token_of)
                u = 2 * e if e >= 0 else -2 * e - 1
                ctx[k] = cls
                if u < 4096:
                    nb = np.int64(_NBLUT[u])
                    tok[k] = _TOKLUT[u]
                    nbits[k] = nb
                    vals[k] = u & ((1 << nb) - 1)
                else:
                    tk, nb, v = ent.token_of(u)
                    tok[k] = tk
                    nbits[k] = nb
                    vals[k] = v
                k += 1
            # ---- state updates: sub-predictor errors, bias (JPEG-LS A.6.2 without
            # the sign merge), residual energy
            if mode != 0:
                for kk in range(NSUB):
                    v = xv - spv[kk]
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
    if decode and (x != RANS16_L or rpos != re_ or bpos != be):
        return -5
    return 0


# --------------------------------------------------------------------------- drivers
# One loop over the tiles each; tiles are independent (own model state, own byte
# ranges), so the loop is a prange.


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _model_tiles(planes, tiles, lo, hi, t3, qlut, wact, mode,  # type: ignore[no-untyped-def]
                 ctx, tok, nbits, vals):
    cmap = np.zeros(1, np.uint8)  # the decoder's inputs, unused here
    dtab = np.zeros((1, 1), np.uint32)
    buf = np.zeros(1, np.uint8)
    for i in prange(tiles.shape[0]):
        _tile_pass(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut, wact, mode,
                   False, ctx, tok, nbits, vals, cmap, dtab, buf, 0, 0, 0, 0)


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _code_tiles(ctx, tok, nbits, vals, starts, freq, rcp, rsh, bias,  # type: ignore[no-untyped-def]
                rbuf, roff, bbuf, boff, res):
    for i in prange(starts.shape[0] - 1):
        res[i, 0] = ent._rans16_encode_py(ctx, tok, starts[i], starts[i + 1], freq, rcp, rsh,
                                          bias, rbuf[roff[i]:roff[i + 1]])
        res[i, 1] = ent._pack_bits_py(nbits, vals, starts[i], starts[i + 1],
                                      bbuf[boff[i]:boff[i + 1]])


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _decode_tiles(planes, tiles, lo, hi, t3, qlut, wact, mode,  # type: ignore[no-untyped-def]
                  cmap, dtab, buf, spans, status):
    ctx = np.zeros(1, np.uint8)  # the encoder's outputs, unused here
    vals = np.zeros(1, np.uint32)
    for i in prange(tiles.shape[0]):
        status[i] = _tile_pass(planes, tiles[i, 0], tiles[i, 1], tiles[i, 2], lo, hi, t3, qlut,
                               wact, mode, True, ctx, ctx, ctx, vals, cmap, dtab, buf,
                               spans[i, 0], spans[i, 1], spans[i, 2], spans[i, 3])


def _jit(fn: Callable[..., Any], *, parallel: bool) -> Any:
    """``fn`` compiled, parallel or serial, as a copy under its own name.

    Numba's on-disk cache files a kernel under its qualified name and keys it by
    bytecode and argument types, not by compile options: a serial and a parallel
    compile of one function would share one entry, and whichever ran first would
    serve both (checked with numba 0.68).  The copy's name keeps them apart.
    """
    name = f"{fn.__name__}_{'nb' if parallel else 'snb'}"
    copy = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = name
    copy.__doc__ = fn.__doc__
    return njit(parallel=parallel, cache=True, nogil=True)(copy)


_DRIVERS = {"model": _model_tiles, "code": _code_tiles, "decode": _decode_tiles}
_IMPL: dict[str, dict[str, Any]] = {
    "py": {**_DRIVERS, "hist": ent._hist_py},
    "snb": {**{k: _jit(f, parallel=False) for k, f in _DRIVERS.items()}, "hist": ent._hist_nb},
    "nb": {**{k: _jit(f, parallel=True) for k, f in _DRIVERS.items()}, "hist": ent._hist_nb},
}
