"""Header codec: dictionaries are generated deterministically and pinned by hash."""

from __future__ import annotations

import pytest

from fenji.codecs.compress import header as hd
from fenji.codecs.errors import DecodeError

# SHA-256 of every released dictionary.  A change here means old encoded
# instances would no longer decode: add a new DICT_VERSION instead of editing.
PINNED_V1 = {
    0x0100: "e59fac8bb6ef355d5787df868943c1c6506ef28d02e1d0b0fd3c28a87d00397f",  # OT
    0x0101: "c64117ffed78f41162a96cdbe599a68e2049779f40281e101e0bb0b86576c1be",  # CT
    0x0102: "e4d0aa4fe3db0faf66e2b5ccbe949bf9ffe23c3d8fed5889f14263b6c321d431",  # MR
    0x0103: "f67481fd372702528d26a1ad815a878a85016ff8fce2dda310b782be27885948",  # XR
    0x0104: "fbe19e200b18accfcd10c6dba5937d3b14c491d846c39cf0160313492509faf7",  # US
    0x0105: "18c92388d883e98af56996ca3e3d9a91d2fba8539c2fd03944b5038f32a89026",  # ECG
    0x0106: "faa45a6706f327aad2bb0ec34f78b4cbeb97d85b4656f3dd36c87bdee64bc3a9",  # NM
    0x0107: "75a91e14cce4f03ec014512e01505c58c10d6a76ad5b5413d4dcb189699cc26d",  # SR
}


def test_dictionaries_are_pinned() -> None:
    got = {(1 << 8) | i: hd.dictionary_sha256((1 << 8) | i) for i in range(len(hd.MODALITIES))}
    assert got == PINNED_V1


def test_dictionary_is_deterministic_and_small() -> None:
    for i in range(len(hd.MODALITIES)):
        d = hd._build_v1(hd.MODALITIES[i])
        assert d == hd._build_v1(hd.MODALITIES[i])
        assert 1000 < len(d) < 16384


@pytest.mark.parametrize("modality", ["CT", "MR", "CR", "DX", "US", "ECG", None, "XYZ"])
def test_round_trip(modality: str | None) -> None:
    data = b"\x08\x00\x60\x00CS\x02\x00CT" * 50 + bytes(range(256))
    blob = hd.header_encode(data, modality=modality)
    assert hd.header_decode(blob, max_size=len(data)) == data


def test_limits_and_corruption() -> None:
    data = bytes(1000)
    blob = hd.header_encode(data, modality="CT")
    with pytest.raises(DecodeError):
        hd.header_decode(blob, max_size=999)
    with pytest.raises(DecodeError):
        hd.header_decode(blob[:1], max_size=1000)
    with pytest.raises(DecodeError, match="unknown"):
        hd.header_decode(b"\x00\x7f" + blob[2:], max_size=1000)
