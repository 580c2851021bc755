"""Lossless waveform codec (ECG): inter-lead prediction + block LPC + context-split rANS.

1. Inter-lead redundancy: each channel may be predicted from an integer
   combination ``(a*x_i + b*x_j) >> 1`` of two earlier channels (covers
   III = II - I and the augmented leads aVR/aVL/aVF, which carts store derived);
   the combination is kept only where it lowers the first-difference energy.
2. Per channel, per block of samples: linear prediction with quantised
   coefficients (Levinson-Durbin on the block, integer arithmetic at decode),
   order chosen per channel.
3. Residuals are zigzagged, tokenised and rANS-coded with the context taken from
   the magnitudes of the channel's previous residuals (see ``entropy``).

Bit-exact: the decoder repeats the integer arithmetic exactly.

>>> import numpy as np
>>> x = (np.sin(np.arange(2000) / 20.0)[:, None] * [300, 200] ).astype("<i2")
>>> np.array_equal(waveform_decode(waveform_encode(x)), x)
True
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, no_type_check

import numpy as np
from numba import njit as _njit
from numba.extending import register_jitable as _register_jitable

from fenji.codecs.compress import entropy as ent
from fenji.codecs.compress import envelope
from fenji.codecs.compress.entropy import PROB_BITS, PROB_SCALE, RANS_L
from fenji.codecs.errors import DecodeError

# Any-typed: numba's stubs do not describe dispatchers called with arrays
njit: Any = _njit
register_jitable: Any = _register_jitable

MAGIC = b"FJWV"
VERSION = 1
NCTX = 24
SHIFT = 12  # LPC coefficient precision (bits); coefficients are stored as int16
PMAX = 32
MAX_SAMPLES = 1 << 27  # 24 h x 12 leads x 500 Hz is 5.2e8 bytes of int16: split longer
DTYPES: dict[int, str] = {1: "<i2", 2: "<u2", 3: "|i1", 4: "|u1"}
_CODE_OF = {np.dtype(v): k for k, v in DTYPES.items()}
_HDR = struct.Struct("<4sBBHIIHB")  # magic, version, dtype, channels, samples, block, ntab?, order
_CLUT = ent.class_table(NCTX)  # the kernels look small activities up


# --------------------------------------------------------------------------- kernels


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _lpc_py(x, coefs, order, block, out, restore):  # type: ignore[no-untyped-def]
    """Block LPC in either direction, one predictor for both.

    Forward (``restore`` false): ``out[t] = x[t] - pred(x)``, the residual of
    samples ``x``.  Inverse: ``out[t] = x[t] + pred(out)``, samples from residuals
    ``x``.  pred(y) at t = round(sum_k coefs[t // block, k] * y[t-1-k] / 2**SHIFT),
    with an order-1 start-up (the previous sample) for t < order.
    """
    n = x.shape[0]
    y = out if restore else x  # the samples the predictor reads
    rnd = 1 << (SHIFT - 1)
    for t in range(n):
        if t < order:
            pred = np.int64(y[t - 1]) if t > 0 else np.int64(0)
        else:
            bi = t // block
            acc = np.int64(0)
            for k in range(order):
                acc += np.int64(coefs[bi, k]) * np.int64(y[t - 1 - k])
            pred = (acc + rnd) >> SHIFT
        out[t] = np.int64(x[t]) + pred if restore else np.int64(x[t]) - pred


@register_jitable(inline="always")
@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _context_of(p1, p2):  # type: ignore[no-untyped-def]
    """Entropy context of a residual from the magnitudes of the channel's previous two
    (the encoder's and the decoder's, written once)."""
    act = 2 * p1 + p2
    return np.int64(_CLUT[act]) if act < 4096 else np.int64(NCTX - 1)


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _tokens_py(res, ctx, tok, nbits, vals):  # type: ignore[no-untyped-def]
    """Context (previous residual magnitudes) and token of every residual of one channel."""
    p1 = 0
    p2 = 0
    for t in range(res.shape[0]):
        cls = _context_of(p1, p2)
        e = np.int64(res[t])
        u = 2 * e if e >= 0 else -2 * e - 1
        ctx[t] = cls
        tk, nb, v = ent.token_of(u)
        tok[t] = tk
        nbits[t] = nb
        vals[t] = v
        p2 = p1
        p1 = e if e >= 0 else -e


@no_type_check  # Numba kernel twin: numpy scalars and ints mix freely
def _decode_res_py(buf, rs, re_, bs, be, freq, cum, sym, res):  # type: ignore[no-untyped-def]
    """Decode one channel's residuals; 0 on success, negative if inconsistent."""
    if re_ - rs < 4:
        return -1
    x = (np.int64(buf[rs]) << 24) | (np.int64(buf[rs + 1]) << 16) | (np.int64(buf[rs + 2]) << 8) \
        | np.int64(buf[rs + 3])
    rpos = rs + 4
    acc = np.int64(0)
    nacc = 0
    bpos = bs
    p1 = 0
    p2 = 0
    for t in range(res.shape[0]):
        cls = _context_of(p1, p2)
        slot = x & (PROB_SCALE - 1)
        s = np.int64(sym[cls, slot])
        f = np.int64(freq[cls, s])
        if f == 0:
            return -2
        x = f * (x >> PROB_BITS) + slot - np.int64(cum[cls, s])
        while x < RANS_L:
            if rpos >= re_:
                return -3
            x = (x << 8) | np.int64(buf[rpos])
            rpos += 1
        u, acc, nacc, bpos = ent.value_of(s, acc, nacc, bpos, buf, be)
        if bpos < 0:
            return -4
        e = (u >> 1) if (u & 1) == 0 else -((u + 1) >> 1)
        res[t] = e
        p2 = p1
        p1 = e if e >= 0 else -e
    if x != RANS_L or rpos != re_ or bpos != be:
        return -5
    return 0


@no_type_check
def _inter_py(sub, out):  # type: ignore[no-untyped-def]
    """Per channel c the inter-lead predictor (i, j, a, b) into ``out[c]``: the same
    search, order and strict ``<`` tie-break as :func:`_inter_lead` (its twin), one
    pass per candidate that stops once it is no better than the best so far."""
    n, nch = sub.shape
    for c in range(nch):
        base = 0
        for t in range(1, n):
            base += abs(sub[t, c] - sub[t - 1, c])
        best = float(base) * 0.9
        bi, bj, ba, bb = 255, 255, 0, 0
        m = min(c, 8)
        for i in range(m):
            for j in range(i, m):
                for a in (-2, -1, 1, 2):
                    for kb in range(5 if j != i else 1):
                        b = kb - 2 if j != i else 0
                        cost = 0
                        prev = sub[0, c] - ((a * sub[0, i] + b * sub[0, j]) >> 1)
                        for t in range(1, n):
                            cur = sub[t, c] - ((a * sub[t, i] + b * sub[t, j]) >> 1)
                            cost += abs(cur - prev)
                            prev = cur
                            if float(cost) >= best:
                                break
                        if float(cost) < best:
                            best = float(cost)
                            bi, bj, ba, bb = i, j, a, b
        out[c, 0] = bi
        out[c, 1] = bj
        out[c, 2] = ba
        out[c, 3] = bb


_inter_nb: Any = njit(_inter_py, nogil=True, cache=True)
_lpc_nb: Any = njit(_lpc_py, nogil=True, cache=True)
_tokens_nb: Any = njit(_tokens_py, nogil=True, cache=True)
_decode_res_nb: Any = njit(_decode_res_py, nogil=True, cache=True)

_IMPL: dict[str, dict[str, Any]] = {
    "nb": {"lpc": _lpc_nb, "tokens": _tokens_nb, "inter": _inter_nb,
           "decode": _decode_res_nb, "rans": ent._rans_encode_nb, "bits": ent._pack_bits_nb,
           "hist": ent._hist_nb},
    "py": {"lpc": _lpc_py, "tokens": _tokens_py, "inter": None,
           "decode": _decode_res_py, "rans": ent._rans_encode_py, "bits": ent._pack_bits_py,
           "hist": ent._hist_py},
}


# --------------------------------------------------------------------------- model choice


def _lpc_coefs(y: np.ndarray, order: int) -> np.ndarray:
    """Quantised LPC coefficients of ``y`` (Levinson-Durbin on a windowed autocorrelation)."""
    yf = y.astype(np.float64)
    # no mean removal: the integer predictor has no DC term, so the fit must carry it
    n = len(yf)
    if n <= order or not np.any(yf):
        return np.zeros(order, np.int64)
    r = np.array([np.dot(yf[: n - k], yf[k:]) for k in range(order + 1)])
    r[0] *= 1.0 + 1e-9
    r *= np.exp(-0.5 * (np.arange(order + 1) * 0.001) ** 2)  # lag window
    a = np.zeros(order + 1)
    a[0] = 1.0
    err = r[0]
    if err <= 0:
        return np.zeros(order, np.int64)
    for i in range(1, order + 1):
        acc = r[i] + np.dot(a[1:i], r[i - 1:0:-1])
        k = -acc / err
        a_new = a.copy()
        a_new[1:i] = a[1:i] + k * a[i - 1:0:-1]
        a_new[i] = k
        a = a_new
        err *= 1.0 - k * k
        if err <= 0:
            break
    q = np.round(-a[1:] * (1 << SHIFT))
    return np.asarray(q.clip(-32768, 32767), dtype=np.int64)  # type: ignore[call-overload]


def _inter_lead(x: np.ndarray, kernel: Any = None) -> list[tuple[int, int, int, int]]:
    """Per channel (i, j, a, b): predict x_c by (a*x_i + b*x_j) >> 1, or (255,...) for none.

    ``kernel``: :func:`_inter_py` compiled (the same choice, ~10x faster on a 12-lead
    ECG: this NumPy search was most of an ECG's encode); None: this, its twin."""
    n, nch = x.shape
    sub = x[: min(n, 20000)].astype(np.int64)
    if kernel is not None:
        out = np.zeros((nch, 4), np.int64)
        kernel(np.ascontiguousarray(sub), out)
        return [(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in out]
    d = np.diff(sub, axis=0)
    choice: list[tuple[int, int, int, int]] = []
    for c in range(nch):
        best = (float(np.abs(d[:, c]).sum()) * 0.9, (255, 255, 0, 0))
        base = range(min(c, 8))
        for i in base:
            for j in base:
                if j < i:
                    continue
                for a in (-2, -1, 1, 2):
                    for b in ((-2, -1, 0, 1, 2) if j != i else (0,)):
                        ref = (a * sub[:, i] + b * sub[:, j]) >> 1
                        cost = float(np.abs(np.diff(sub[:, c] - ref)).sum())
                        if cost < best[0]:
                            best = (cost, (i, j, a, b))
        choice.append(best[1])
    return choice


def _apply_inter(x: np.ndarray, choice: list[tuple[int, int, int, int]]) -> np.ndarray:
    y = x.astype(np.int64)
    for c, (i, j, a, b) in enumerate(choice):
        if i != 255:
            y[:, c] = x[:, c].astype(np.int64) - ((a * x[:, i].astype(np.int64)
                                                   + b * x[:, j].astype(np.int64)) >> 1)
    return y


_TOK = np.array([ent.token_of(v)[0] for v in range(4096)], dtype=np.int64)
_NB = np.array([ent.token_of(v)[1] for v in range(4096)], dtype=np.int64)


def _est_bits(r: np.ndarray) -> float:
    """Bits the entropy stage would spend on residuals ``r`` (static, context-split)."""
    if not len(r):
        return 0.0
    a = np.abs(r)
    u = np.where(r >= 0, 2 * r, -2 * r - 1).clip(0, 4095)  # type: ignore[call-overload]
    act = np.zeros_like(a)
    act[1:] = 2 * a[:-1]
    act[2:] += a[:-2]
    ctx = _CLUT[act.clip(0, 4095)].astype(np.int64)
    joint = np.bincount(ctx * ent.NSYM + _TOK[u], minlength=NCTX * ent.NSYM).reshape(NCTX, -1)
    tot = joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    h = -(joint[nz] * np.log2((joint / tot.clip(1, None))[nz])).sum()
    return float(h + _NB[u].sum() + 12 * nz.sum())


# --------------------------------------------------------------------------- public


def waveform_encode(arr: np.ndarray, *, effort: str = "fast", _impl: str = "nb") -> bytes:
    """Losslessly encode multiplexed waveform samples, shape (n_samples, n_channels).

    Accepts 8/16-bit signed or unsigned integers; 1-D input is one channel.
    """
    if effort not in ("fast", "max"):
        raise ValueError(f"effort = {effort!r} is not one of ('fast', 'max')")
    a = np.asarray(arr)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"waveform array must be (n_samples, n_channels), got {a.shape}")
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    code = _CODE_OF.get(np.dtype(dt))
    if code is None:
        raise ValueError(f"waveform dtype {a.dtype} is not one of {sorted(DTYPES.values())}")
    k = _IMPL[_impl]
    n, nch = a.shape
    x = a.astype(np.int64)
    choice = (_inter_lead(x, k["inter"]) if nch > 1 and n > 1
              else [(255, 255, 0, 0)] * nch)
    y = _apply_inter(x, choice)
    block = 4096
    nblk = max(1, -(-n // block))
    orders = (2, 4, 8, 16, 32) if effort == "max" else (4, 12, 24)
    res = np.zeros((nch, n), np.int64)
    coefs_all = []
    chosen = []
    for c in range(nch):
        yc = np.ascontiguousarray(y[:, c])
        best: tuple[float, int, np.ndarray, np.ndarray] | None = None
        for p in orders:
            if p >= n:
                continue
            cf = np.zeros((nblk, p), np.int64)
            for bi in range(nblk):
                seg = yc[max(0, bi * block - p): (bi + 1) * block]
                cf[bi] = _lpc_coefs(seg, p)
            r = np.empty(n, np.int64)
            k["lpc"](yc, cf, p, block, r, False)
            bits = _est_bits(r) + nblk * p * 16
            if best is None or bits < best[0]:
                best = (bits, p, cf, r)
        # fixed polynomial predictors (exact zeros on piecewise-linear stretches,
        # which some carts produce by interpolation), costed like the LPC ones
        for poly in ([], [1], [2, -1], [3, -3, 1]):
            p = len(poly)
            cf = np.zeros((nblk, p), np.int64) + np.array(poly, np.int64) * (1 << SHIFT)
            r = np.empty(n, np.int64)
            k["lpc"](yc, cf, p, block, r, False)
            bits = _est_bits(r) + nblk * p * 16
            if best is None or bits < best[0]:
                best = (bits, p, cf, r)
        assert best is not None
        chosen.append(best[1])
        coefs_all.append(best[2])
        res[c] = best[3]
    if res.size and (res.max() >= 1 << 30 or res.min() < -(1 << 30)):
        raise ValueError("waveform residuals exceed 30 bits")
    flat = res.reshape(-1)
    m = flat.size
    ctx = np.empty(m, np.uint8)
    tok = np.empty(m, np.uint8)
    nbits = np.empty(m, np.uint8)
    vals = np.empty(m, np.uint32)
    for c in range(nch):
        sl = slice(c * n, (c + 1) * n)
        k["tokens"](res[c], ctx[sl], tok[sl], nbits[sl], vals[sl])
    freqs = ent.normalize_freqs(k["hist"](ctx, tok, NCTX))
    f, rcp, rsh, bias = ent.encode_tables(freqs)
    streams = []
    for c in range(nch):
        rbuf = np.empty(2 * n + 8, np.uint8)
        pos = k["rans"](ctx, tok, c * n, (c + 1) * n, f, rcp, rsh, bias, rbuf)
        bbuf = np.empty(4 * n + 8, np.uint8)
        nb = k["bits"](nbits, vals, c * n, (c + 1) * n, bbuf)
        streams.append((rbuf[pos:].tobytes(), bbuf[:nb].tobytes()))
    tables = ent.pack_tables(freqs)
    out = bytearray(_HDR.pack(MAGIC, VERSION, code, nch, n, block, 0, 0))
    out += struct.pack("<I", len(tables)) + tables
    for c in range(nch):
        i, j, a_, b_ = choice[c]
        out += struct.pack("<BBbbB", i, j, a_, b_, chosen[c])
        out += np.asarray(coefs_all[c], dtype="<i2").tobytes()
        out += struct.pack("<II", len(streams[c][0]), len(streams[c][1]))
    for rb, bb in streams:
        out += rb + bb
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def waveform_decode(buf: bytes, *, _impl: str = "nb") -> np.ndarray:
    """Decode :func:`waveform_encode` output; corrupt input raises DecodeError."""
    buf = bytes(buf)
    if len(buf) < _HDR.size + 8:
        raise DecodeError(f"waveform stream of {len(buf)} bytes is shorter than its header")
    magic, version, code, nch, n, block, _, _ = _HDR.unpack_from(buf)
    envelope.check_head("waveform stream", magic, MAGIC, version, VERSION)
    envelope.check_crc("waveform stream", buf)
    if code not in DTYPES or block == 0:
        raise DecodeError(f"waveform stream dtype code {code} / block {block} invalid")
    k = _IMPL[_impl]
    end = len(buf) - 4
    pos = _HDR.size
    try:
        (ntab,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        freqs = ent.unpack_tables(buf[pos:pos + ntab], NCTX)
        pos += ntab
        nblk = max(1, -(-n // block))
        meta = []
        for _c in range(nch):
            i, j, a_, b_, p = struct.unpack_from("<BBbbB", buf, pos)
            pos += 5
            if p > PMAX or (i != 255 and (i >= _c or j >= _c)):
                raise DecodeError(f"waveform channel {_c}: order {p} / reference ({i},{j}) invalid")
            cf = np.frombuffer(buf, dtype="<i2", count=nblk * p, offset=pos).astype(np.int64)
            pos += 2 * nblk * p
            lr, lb = struct.unpack_from("<II", buf, pos)
            pos += 8
            meta.append((i, j, a_, b_, p, cf.reshape(nblk, p), lr, lb))
    except struct.error:
        raise DecodeError("waveform stream truncated in its channel table") from None
    except ValueError:
        raise DecodeError("waveform stream truncated in its coefficients") from None
    if n * nch > MAX_SAMPLES:
        raise DecodeError(f"waveform stream declares {n}x{nch} samples (limit {MAX_SAMPLES})")
    f, cum, sym = ent.decode_tables(freqs)
    data = np.frombuffer(buf, dtype=np.uint8)
    x = np.zeros((n, nch), np.int64)
    for c, (i, j, a_, b_, p, cf, lr, lb) in enumerate(meta):
        res = np.zeros(n, np.int64)
        if pos + lr + lb > end:
            raise DecodeError(f"waveform channel {c} runs past the end of the stream")
        st = k["decode"](data, pos, pos + lr, pos + lr, pos + lr + lb, f, cum, sym, res)
        if st != 0:
            raise DecodeError(f"waveform channel {c} is corrupt (code {st})")
        pos += lr + lb
        yc = np.zeros(n, np.int64)
        k["lpc"](res, cf, p, block, yc, True)
        if i != 255:
            yc = yc + ((a_ * x[:, i] + b_ * x[:, j]) >> 1)
        x[:, c] = yc
    if pos != end:
        raise DecodeError(f"waveform stream has {end - pos} trailing bytes")
    dtype = np.dtype(DTYPES[code])
    lim = np.iinfo(dtype)
    if x.size and (x.min() < lim.min or x.max() > lim.max):
        raise DecodeError(f"decoded waveform values fall outside {dtype}")
    return x.astype(dtype)
