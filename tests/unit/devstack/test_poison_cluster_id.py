"""The local broker's cluster id never starts with ``-`` (kafka-storage reads that as an option)."""

from __future__ import annotations

import base64

import pytest

from services.devstack.broker import _cluster_id


def test_bytes_that_used_to_give_a_leading_dash_give_a_letter() -> None:
    raw = bytes([0xF8]) + bytes(15)  # top six bits 111110: base64 index 62, "-"
    assert base64.urlsafe_b64encode(raw).decode().startswith("-")
    made = _cluster_id(raw)
    assert not made.startswith("-")
    assert len(made) == 22


@pytest.mark.parametrize("first", range(256))
def test_no_first_byte_gives_an_option_like_id(first: int) -> None:
    made = _cluster_id(bytes([first]) + bytes(range(15)))
    assert made[0] not in "-_"
    assert (
        made[1:]
        == base64.urlsafe_b64encode(bytes([first & 0x7F]) + bytes(range(15))).decode()[1:22]
    )


def test_random_ids_differ_and_keep_their_length() -> None:
    ids = {_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        _cluster_id(b"short")
