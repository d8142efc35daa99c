"""Hypothesis strategies built from protobuf descriptors: any request message of any RPC.

Every field is generated from its descriptor (string, bytes, integer widths, enum, bool, nested
message, repeated, map, google.protobuf.Timestamp), so a new RPC or field is fuzzed without touching
this file. Each field is independently left unset, set to something plausible (drawn from the seed
data of the test's tenants, keyed by field name, so requests reach past the first validation), or
set to something hostile (extremes, 100 KB strings, control characters, unknown enum values, odd
decimals, other tenants' ids, thousands of repeated items).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import strategies as st

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1

HUGE = 100 * 1024  # "huge string": 100 KB
MANY = 3000        # "thousands of repeated items"

# Decimal strings the brief names, plus the usual suspects of decimal parsing.
HOSTILE_DECIMALS = [
    "1e309", "-1e309", "1e5", "1E-5", "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "-0", "-0.00", "+1",
    "0", "0.0", "0.0000000001", "99999999999999999999999", "999999999999999999.99", "1000000000000000000",
    "-1", "-1.00", "1.", ".5", "1,5", "1_000", "0x10", " 1 ", "1\n", "\u0661\u0662", "\uff11", "1" * 400,
    "0." + "0" * 400 + "1", "12.50", "0.01", "1",
]
HOSTILE_STRINGS = [
    "", " ", "\x00", "a\x00b", "\t\r\n", "\x7f\x1b[31m", "\u202e\u200b\ufeff", "\U0001f4a5", "é" * 70,
    "../../etc/passwd", "'; DROP TABLE lots; --", "%s%n", "{}", "null", "a/b", "*", "%", "_", "\\",
    "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 501, "x" * HUGE, "\x00" * 1000,
]
HOSTILE_INT32 = [0, 1, -1, INT32_MAX, INT32_MIN, INT32_MAX - 1, 100, 101, 9, 10, 64, 65, 1000, 1001, 86400 * 366]
HOSTILE_INT64 = [0, 1, -1, INT64_MAX, INT64_MIN, INT32_MAX + 1, 10**18, -(10**18), 2**53 + 1]
# Timestamps: out of range both ways, nanos out of range, the edges of the valid range, epoch.
HOSTILE_TIMESTAMPS = [
    (0, 0), (-1, 0), (-62135596800, 0), (-62135596801, 0), (253402300799, 999_999_999), (253402300800, 0),
    (INT64_MAX, 0), (INT64_MIN, 0), (0, -1), (0, 1_000_000_000), (0, INT32_MAX), (0, INT32_MIN),
    (1_785_542_400, 0), (4_102_444_800, 0), (1_700_000_000, 999_999_999),
]


@dataclass
class Pools:
    """Plausible values for fields, by field name; `everything` feeds fields with no pool of their own."""

    by_name: dict[str, list[Any]] = field(default_factory=dict)
    timestamps: list[tuple[int, int]] = field(default_factory=list)

    def strings(self) -> list[str]:
        return sorted({v for vs in self.by_name.values() for v in vs if isinstance(v, str)})


def _ascii_text(min_size: int = 1, max_size: int = 16) -> st.SearchStrategy[str]:
    return st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=min_size, max_size=max_size)


def _string(fd: FieldDescriptor, pools: Pools, hostile: bool) -> st.SearchStrategy[str]:
    plausible = [v for v in pools.by_name.get(fd.name, []) if isinstance(v, str)]
    if not hostile:
        return st.sampled_from(plausible) if plausible else st.from_regex(r"[a-z0-9][a-z0-9-]{0,7}", fullmatch=True)
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.sampled_from(HOSTILE_DECIMALS),
        st.sampled_from(pools.strings() or [""]),  # a value meant for another field (ids of both tenants)
        _ascii_text(),
        st.text(max_size=20),  # any unicode (no surrogates: protobuf refuses them client-side)
    )


def _int(fd: FieldDescriptor, pools: Pools, hostile: bool) -> st.SearchStrategy[int]:
    t = fd.type
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        lo, hi, special = INT32_MIN, INT32_MAX, HOSTILE_INT32
    elif t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        lo, hi, special = 0, UINT32_MAX, [0, 1, UINT32_MAX, INT32_MAX + 1]
    elif t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        lo, hi, special = 0, UINT64_MAX, [0, 1, UINT64_MAX, INT64_MAX + 1]
    else:
        lo, hi, special = INT64_MIN, INT64_MAX, HOSTILE_INT64
    plausible = [v for v in pools.by_name.get(fd.name, []) if isinstance(v, int)]
    if not hostile:
        return st.sampled_from(plausible) if plausible else st.integers(0, 10)
    return st.one_of(st.sampled_from(special), st.integers(lo, hi), st.integers(-3, 200))


def _enum(fd: FieldDescriptor, hostile: bool) -> st.SearchStrategy[int]:
    known = [v.number for v in fd.enum_type.values]
    if not hostile:
        return st.sampled_from([k for k in known if k] or known)
    unknown = [max(known) + 1, 99, -1, INT32_MAX, INT32_MIN]
    return st.one_of(st.sampled_from(known), st.sampled_from(unknown))


def _timestamp(pools: Pools, hostile: bool) -> st.SearchStrategy[Timestamp]:
    plausible = st.sampled_from(pools.timestamps or [(1_785_542_400, 0)])
    pairs = plausible if not hostile else st.one_of(
        st.sampled_from(HOSTILE_TIMESTAMPS),
        st.tuples(st.integers(INT64_MIN, INT64_MAX), st.integers(INT32_MIN, INT32_MAX)),
        st.tuples(st.integers(1_600_000_000, 1_900_000_000), st.integers(0, 999_999_999)),
    )
    return pairs.map(lambda p: Timestamp(seconds=p[0], nanos=p[1]))


def _scalar(fd: FieldDescriptor, pools: Pools, depth: int, hostile: bool) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return _string(fd, pools, hostile)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\xff" * HUGE)) if hostile else st.binary(max_size=8)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum(fd, hostile)
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True) if hostile else st.floats(0, 100)
    if t == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(fd.message_type, pools, depth + 1, "chaos" if hostile else "plausible")
    return _int(fd, pools, hostile)


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def _repeated(fd: FieldDescriptor, pools: Pools, depth: int, hostile: bool) -> st.SearchStrategy[list[Any]]:
    if _is_map(fd):
        key_fd, value_fd = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
        small = st.lists(st.tuples(_scalar(key_fd, pools, depth, hostile), _scalar(value_fd, pools, depth, hostile)),
                         max_size=3)
        if not hostile:
            return small
        return st.one_of(small, st.just([(f"k{i}", "v") for i in range(MANY)]))
    item = _scalar(fd, pools, depth, hostile)
    small = st.lists(item, max_size=3)
    if not hostile or depth > 0:
        return small
    # Thousands of items: one drawn item repeated (cheap to generate, still thousands on the wire),
    # and a plausible item repeated (reaches the per-item checks and the batch limits).
    # Hostile items are repeated only when small, so the request stays under the 64 MB message limit.
    plausible = _scalar(fd, pools, depth, False)
    return st.one_of(small, item.filter(_small).map(lambda x: [x] * MANY), plausible.map(lambda x: [x] * MANY),
                     plausible.map(lambda x: [x] * 10_001))


def _small(value: Any) -> bool:
    size = value.ByteSize() if isinstance(value, Message) else len(value) if isinstance(value, (str, bytes)) else 0
    return size <= 2048


def _field(fd: FieldDescriptor, pools: Pools, depth: int, hostile: bool) -> st.SearchStrategy[Any]:
    value = _repeated(fd, pools, depth, hostile) if _is_repeated(fd) else _scalar(fd, pools, depth, hostile)
    if hostile:
        return st.one_of(value, st.none())  # None = leave unset: a missing field
    if fd.name in pools.by_name or fd.type == FieldDescriptor.TYPE_MESSAGE:
        return value  # a field the seed data knows about (ids, amounts, ...) is always set when plausible
    return st.one_of(value, st.none())


def message_strategy(desc: Descriptor, pools: Pools, depth: int = 0, mode: str = "any") -> st.SearchStrategy[Message]:
    """A strategy for instances of message `desc`.

    mode "plausible": every field unset or drawn from the seed pools; "chaos": every field hostile;
    "one": plausible except one hostile field; "any": one of those (mostly plausible-with-one-hostile,
    so most requests get past the first validation and reach storage).
    """
    if mode == "any":
        return st.one_of(*(message_strategy(desc, pools, depth, m) for m in ("plausible", "one", "one", "chaos")))
    cls = _message_class(desc)
    if desc.full_name == "google.protobuf.Timestamp":
        return _timestamp(pools, mode != "plausible")
    if depth > 3:
        return st.just(cls())
    names = [fd.name for fd in desc.fields]
    if mode == "one" and names:
        return st.sampled_from(names).flatmap(lambda victim: st.fixed_dictionaries(
            {fd.name: _field(fd, pools, depth, fd.name == victim) for fd in desc.fields},
        ).map(lambda values: _build(cls, desc, values)))
    parts = {fd.name: _field(fd, pools, depth, mode == "chaos") for fd in desc.fields}
    return st.fixed_dictionaries(parts).map(lambda values: _build(cls, desc, values))


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 5: `is_repeated`; older: `label`
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _message_class(desc: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def _build(cls: type[Message], desc: Descriptor, values: Mapping[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        if value is None:
            continue
        fd = desc.fields_by_name[name]
        if fd.containing_oneof is not None and msg.WhichOneof(fd.containing_oneof.name) is not None:
            continue
        target = getattr(msg, name)
        if _is_map(fd):
            for k, v in value:
                if fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif _is_repeated(fd):
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                target.extend(value)
            else:
                target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def mutate_bytes(data: bytes, edits: Sequence[tuple[int, int]]) -> bytes:
    """Overwrites bytes of `data` at (position, value) pairs (positions wrap)."""
    if not data:
        return bytes(v for _, v in edits)
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out)
