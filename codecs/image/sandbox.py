"""Compressed pixel data is decoded in a child process, never in the node's own.

python-gdcm, one of pydicom's decoders (and the only one here for JPEG Lossless
and JPEG-LS; pydicom falls back to it when Pillow refuses a JPEG), ends the
whole process with SIGABRT on some damaged codestreams whose headers are
consistent: a C++ exception no Python code can catch ("gdcmJPEGBITSCodec.hxx:782:
An invalid logic behavior occurred").  Fuzzing the shared JPEG files found such
streams within seconds.  One damaged instance from a modality would end the
node: its DICOM listener, its web server and its case pipeline.

So every decode of encapsulated pixel data runs in a child process (spawned,
kept for the next decode).  A crash there is a :class:`DecoderCrashed` for that
instance -- a damaged image to the gate, a 406 to a viewer -- and the next decode
starts a fresh child.  Each call is bounded: one request per child at a time,
:data:`WORKERS` children per process, :data:`TIMEOUT_S` of wall time (the child is
killed after it), and :data:`MEMORY_BYTES` of address space beyond what the child
holds when it starts.  Native (uncompressed) pixel data is decoded in process:
that is NumPy's reshaping, no codec.

Only the Image Pixel module and the transfer syntax go to the child; a
decoder sees nothing else of the instance.

>>> import numpy as np
>>> from pydicom.dataset import Dataset, FileMetaDataset
>>> ds = Dataset(); ds.file_meta = FileMetaDataset()
>>> ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
>>> ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 2, 2, 1, "MONOCHROME2"
>>> ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
>>> ds.PixelData = bytes([1, 2, 3, 4])
>>> pixel_array(ds).tolist()           # native: decoded here, no child
[[1, 2], [3, 4]]
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import warnings
from typing import Any

import numpy as np

from fenji.codecs.errors import DecodeError

log = logging.getLogger(__name__)

WORKERS = 2                 # decoding children per process
TIMEOUT_S = 120.0           # one decode's wall time before its child is killed
MEMORY_BYTES = 4 << 30      # address space a child may add while decoding

#: What a decoder gets of an instance: the Image Pixel module (PS3.3 C.7.6.3).
PIXEL_KEYWORDS = ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                  "HighBit", "PixelRepresentation", "PhotometricInterpretation",
                  "PlanarConfiguration", "NumberOfFrames", "ExtendedOffsetTable",
                  "ExtendedOffsetTableLengths", "PixelData")


class DecoderCrashed(DecodeError):
    """The decoding child died on this data (a signal, not an exception)."""


def _is_compressed(ds: Any) -> bool:
    from pydicom.uid import UID

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return ts is not None and UID(str(ts)).is_compressed


def pixel_part(ds: Any) -> Any:
    """A new data set with only ``ds``'s Image Pixel module and transfer syntax."""
    from pydicom.dataset import Dataset, FileMetaDataset

    part = Dataset()
    part.file_meta = FileMetaDataset()
    part.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    for kw in PIXEL_KEYWORDS:
        if kw in ds:
            part[kw] = ds[kw]
    return part


def pixel_array(ds: Any, *, index: int | None = None, raw: bool = False) -> np.ndarray:
    """``ds.pixel_array`` (``index``/``raw``: :func:`pydicom.pixels.pixel_array`'s),
    decoded in a child process when the pixel data is compressed.

    Warnings the decoder gave are given again here.  :class:`DecoderCrashed` when
    the child dies, :class:`DecodeError` when it overruns :data:`TIMEOUT_S`,
    ``MemoryError`` when it overruns :data:`MEMORY_BYTES`; any other decoder error
    is a ``ValueError`` with the decoder's message.
    """
    if not _is_compressed(ds):
        if index is None and not raw:
            return np.asarray(ds.pixel_array)
        from pydicom.pixels import pixel_array as pa

        return np.asarray(pa(ds, index=index, raw=raw))
    out: np.ndarray = _pool().call(("array", pixel_part(ds), index, raw))
    return out


def frame_array(header: Any, codestream: bytes) -> np.ndarray:
    """One compressed frame's stored values (``raw``: no colour conversion), decoded
    in a child; ``header``: the instance's data set (its pixel data is not used)."""
    from pydicom.encaps import encapsulate

    part = pixel_part(header)
    part.NumberOfFrames = 1
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if kw in part:
            del part[kw]
    part.PixelData = encapsulate([codestream])
    part["PixelData"].VR = "OB"
    part["PixelData"].is_undefined_length = True
    return pixel_array(part, index=0, raw=True)


def decompress(ds: Any) -> None:
    """``ds.decompress(generate_instance_uid=False)``, the decoding in a child: the
    pixel data native, the transfer syntax Explicit VR Little Endian, the colour
    space and planar configuration those of the decoded pixels."""
    from pydicom.uid import ExplicitVRLittleEndian

    got: dict[str, Any] = _pool().call(("decompress", pixel_part(ds), None, False))
    elem = ds["PixelData"]
    elem.value = got["PixelData"]
    elem.is_undefined_length = False
    elem.VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for kw in ("PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames"):
        if got.get(kw) is not None:
            setattr(ds, kw, got[kw])
    for kw in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if kw in ds:
            del ds[kw]
    ds._pixel_array = None
    ds._pixel_id = {}


# --- the child ---------------------------------------------------------------------

def _serve(conn_in: Any, conn_out: Any, memory_bytes: int) -> None:
    """A decoding child: requests in, ``("ok", value, warnings)`` or
    ``("error", type name, message, warnings)`` out, until the pipe closes."""
    import resource

    import pydicom
    from pydicom.pixels import pixel_array as pa

    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            now = int(fh.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (now + memory_bytes, resource.RLIM_INFINITY))
    except (OSError, ValueError):  # no /proc, or a hard limit already lower
        log.debug("decoder child: address-space limit not set")
    del pydicom  # imported before the limit is set: the start is not the decode's
    while True:
        try:
            op, ds, index, raw = pickle.loads(conn_in.recv_bytes())
        except (EOFError, OSError):
            return
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            try:
                if op == "array":
                    value: Any = (ds.pixel_array if index is None and not raw
                                  else pa(ds, index=index, raw=raw))
                else:
                    ds.decompress(generate_instance_uid=False)
                    value = {kw: ds.get(kw) for kw in ("PixelData", "PhotometricInterpretation",
                                                       "PlanarConfiguration", "NumberOfFrames")}
                reply: tuple[Any, ...] = ("ok", value)
            except MemoryError:
                reply = ("error", "MemoryError", "decoding needs more memory than allowed")
            except Exception as exc:  # noqa: BLE001 - every decoder error goes back as words
                reply = ("error", type(exc).__name__, str(exc))
        msgs = [str(w.message) for w in said]
        try:
            out = pickle.dumps((*reply, msgs), protocol=5)
        except (pickle.PicklingError, TypeError, MemoryError) as exc:
            out = pickle.dumps(("error", type(exc).__name__, str(exc), msgs))
        conn_out.send_bytes(out)


# --- the parent's pool -------------------------------------------------------------

def _child_argv(fd_in: int, fd_out: int) -> list[str]:
    return [sys.executable, "-m", "fenji.codecs.image.sandbox", str(fd_in), str(fd_out),
            str(MEMORY_BYTES)]


class _Child:
    """One decoding child process, started on first use and again after it dies.

    A plain ``python -m`` of this module with two pipes, not multiprocessing:
    the child imports nothing of its parent's main module and needs no
    ``__main__`` guard there; it exits when its parent's end of the pipe closes.
    """

    def __init__(self, argv: Any = None) -> None:
        self.argv = argv or _child_argv   # (fd_in, fd_out) -> command; a test gives its own
        self.proc: subprocess.Popen[bytes] | None = None
        self.send: Any = None
        self.recv: Any = None

    def _start(self) -> None:
        from multiprocessing.connection import Connection

        to_child, from_parent = os.pipe()[::-1]
        from_child, to_parent = os.pipe()
        try:
            self.proc = subprocess.Popen(self.argv(from_parent, to_parent),
                                         pass_fds=(from_parent, to_parent),
                                         stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(from_parent)
            os.close(to_parent)
        self.send = Connection(to_child, readable=False)
        self.recv = Connection(from_child, writable=False)

    def stop(self) -> int | None:
        """Kill the child (if alive); its exit code (negative: the signal)."""
        proc, send, recv = self.proc, self.send, self.recv
        self.proc = self.send = self.recv = None
        for c in (send, recv):
            if c is not None:
                c.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        try:
            return proc.wait(10)
        except subprocess.TimeoutExpired:
            return None

    def call(self, request: tuple[Any, ...], timeout_s: float) -> Any:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        try:
            self.send.send_bytes(pickle.dumps(request, protocol=5))
            if not self.recv.poll(timeout_s):
                self.stop()
                raise DecodeError(f"decoding took longer than {timeout_s:g} s: stopped")
            reply = pickle.loads(self.recv.recv_bytes())
        except (EOFError, OSError) as exc:
            code = self.stop()
            how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exit code {code}")
            log.warning("pixel decoder child died (%s)", how)
            raise DecoderCrashed(f"the decoder crashed on this pixel data ({how})") from exc
        status, *body, msgs = reply
        for m in msgs:
            warnings.warn(m, UserWarning, stacklevel=4)
        if status == "ok":
            return body[0]
        kind, message = body
        if kind == "MemoryError":
            raise MemoryError(message)
        raise ValueError(message)


class _Pool:
    def __init__(self, n: int) -> None:
        self._idle: queue.LifoQueue[_Child] = queue.LifoQueue()  # a warm child first
        for _ in range(n):
            self._idle.put(_Child())

    def stop(self) -> None:
        """Stop the idle children (at exit: no child outlives its node)."""
        while True:
            try:
                self._idle.get_nowait().stop()
            except queue.Empty:
                return

    def call(self, request: tuple[Any, ...]) -> Any:
        try:
            child = self._idle.get(timeout=TIMEOUT_S)
        except queue.Empty:
            raise DecodeError(f"every pixel decoder busy for {TIMEOUT_S:g} s") from None
        try:
            return child.call(request, TIMEOUT_S)
        finally:
            self._idle.put(child)


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(WORKERS)
            atexit.register(_POOL.stop)
        return _POOL


if __name__ == "__main__":  # the child: python -m fenji.codecs.image.sandbox IN OUT BYTES
    from multiprocessing.connection import Connection as _Conn

    _serve(_Conn(int(sys.argv[1]), writable=False), _Conn(int(sys.argv[2]), readable=False),
           int(sys.argv[3]))
