"""Serialising ``tf.train.Example`` without importing TensorFlow.

Ingest writes examples of bytes and integer features only. Encoding the protobuf wire
format directly keeps TensorFlow (seconds of import per Beam worker process) out of the
ingest workers; tests check the result against ``tf.train.Example`` itself.

Wire format: Example{features=1: Features{feature=1: map<string, Feature>}},
Feature{bytes_list=1: BytesList{value=1: repeated bytes}, int64_list=3: Int64List{value=1:
packed repeated int64}}.
"""

from __future__ import annotations

from collections.abc import Mapping

_LEN = 2  # wire type of length-delimited fields


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _feature(value: bytes | str | int) -> bytes:
    if isinstance(value, bool) or not isinstance(value, bytes | str | int):
        raise TypeError(f"feature values must be bytes, str or int. Received: {type(value)}")
    if isinstance(value, int):
        return _field(3, _field(1, _varint(value)))  # Int64List, packed
    data = value.encode() if isinstance(value, str) else value
    return _field(1, _field(1, data))  # BytesList


def encode_example(features: Mapping[str, bytes | str | int]) -> bytes:
    """A serialised ``tf.train.Example`` with one value per feature (sorted by key)."""
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, _feature(value)))
        for key, value in sorted(features.items())
    )
    return _field(1, entries)
