"""Mutated copies of the shared DICOM files (bit flips, cuts, inserted and zeroed
runs, hostile lengths), seeded: every one is refused with a typed error or checked,
stored and previewed; no step raises anything else.  Defects this found: a cut in
the File Meta (struct.error), a NUL in (0008,0005) (pydicom ValueError on every later
read), garbage in a DS/IS value (the gate raised).  The shared ECG waveforms are
always among the files: their mutations go through the ECG gate."""

from __future__ import annotations

import io
import random
import warnings
from collections.abc import Callable
from typing import Any

import pydicom
from _data import good_files

from fenji.codecs.compress.bundle import make_preview
from fenji.gateway.cases import gate
from fenji.gateway.dicom.validate import check_part10
from fenji.gateway.errors import FenjiError

SEED = 20261204
FILES = 20
PER_FILE = 40


def _mutate(rng: random.Random, data: bytes) -> bytes:
    d = bytearray(data)
    kind = rng.choice(["flip", "head", "cut", "insert", "zero", "number"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
    elif kind == "head":  # where the header elements are
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(min(len(d), 2000))
            d[i] ^= 1 << rng.randrange(8)
    elif kind == "cut":
        d = d[:rng.randrange(len(d))]
    elif kind == "insert":
        i = rng.randrange(len(d))
        d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif kind == "zero":
        i = rng.randrange(len(d))
        n = min(len(d) - i, rng.randint(1, 256))
        d[i:i + n] = bytes(n)
    else:
        i = rng.randrange(max(1, min(len(d), 3000) - 4))
        d[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\xfe\xff\x00\xe0"])
    return bytes(d)


def test_mutated_instances_are_refused_or_handled_never_crash() -> None:
    rng = random.Random(SEED)
    files = [p for p in good_files() if 1000 < p.stat().st_size < 3_000_000]
    ecg = [p for p in files if p.parent.name == "ecg"]
    files = ecg + rng.sample([p for p in files if p not in ecg], FILES - len(ecg))
    crashes: list[str] = []

    def step(what: str, fn: Callable[[], Any], name: str) -> Any:
        try:
            return fn()
        except FenjiError:
            return None
        except Exception as exc:  # noqa: BLE001 - what this test looks for
            crashes.append(f"{name} {what}: {type(exc).__name__}: {exc}"[:300])
            return None

    accepted = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in files:
            data = p.read_bytes()
            for k in range(PER_FILE):
                bad = _mutate(rng, data)
                name = f"{p.name}#{k}"
                checked = step("check_part10", lambda b=bad: check_part10(b), name)
                if checked is None:
                    continue
                accepted += 1
                step("dcmread", lambda c=checked: pydicom.dcmread(io.BytesIO(c.part10)), name)
                step("gate", lambda c=checked: gate.assess([c.part10]), name)
                step("preview", lambda c=checked: make_preview(c.part10), name)
    assert not crashes, crashes
    assert accepted > 0  # some mutations leave a valid file: those go the whole way
