"""The shape of serialized concrete evaluation keys, read without trusting them.

concrete's runtime reads a key's dimensions from the key itself and trusts them: keys made for
another circuit (or bytes built to lie) crash the process that runs them (a segmentation fault in
the keyswitch, seen with concrete-python 2.10). Before a key is run, its *skeleton* — the Cap'n
Proto message's structure with every data blob replaced by its length — must equal that of keys
made here from the served circuit's client specs: same keys, same parameters, same payload sizes;
only the random contents differ.

The message is walked generically (segments, struct and list pointers, far pointers), so no schema
is needed; every offset is bounds-checked, and the walk is bounded in depth and in pointers.
Diverges from pycapnp (not a dependency) for one read-only walk of ~100 lines.
"""

import hashlib
import struct

MAX_SEGMENTS = 1024
MAX_DEPTH = 16
MAX_POINTERS = 100_000
WORD = 8


class MalformedKeys(ValueError):
    """Bytes that are not a well-formed Cap'n Proto message (or one too deep or too wide)."""


class _Message:
    """A Cap'n Proto message's segments, each a memoryview of whole words."""

    def __init__(self, data: bytes) -> None:
        view = memoryview(data)
        if len(view) < 8:
            raise MalformedKeys("too short")
        count = struct.unpack_from("<I", view, 0)[0] + 1
        if count > MAX_SEGMENTS:
            raise MalformedKeys("too many segments")
        table_words = (4 + 4 * count + 7) // 8
        sizes = struct.unpack_from(f"<{count}I", view, 4)
        offset = table_words * WORD
        if offset + sum(sizes) * WORD != len(view):
            raise MalformedKeys("segment sizes do not add up to the message")
        self.segments = []
        for size in sizes:
            self.segments.append(view[offset : offset + size * WORD])
            offset += size * WORD
        self.pointers_read = 0

    def word(self, segment: int, index: int) -> int:
        """The 64-bit word `index` of `segment`; MalformedKeys outside the segment."""
        if not (0 <= segment < len(self.segments)) or not (0 <= index < len(self.segments[segment]) // WORD):
            raise MalformedKeys("a pointer leads outside its segment")
        self.pointers_read += 1
        if self.pointers_read > MAX_POINTERS:
            raise MalformedKeys("too many pointers")
        return struct.unpack_from("<Q", self.segments[segment], index * WORD)[0]

    def resolve(self, segment: int, index: int) -> tuple[int, int, int]:
        """(segment, index of the pointer's target's landing word, pointer word), far pointers followed."""
        pointer = self.word(segment, index)
        if pointer & 3 != 2:
            return segment, index, pointer
        double, landing, target = (pointer >> 2) & 1, (pointer >> 3) & 0x1FFFFFFF, pointer >> 32
        if double:  # a landing pad of two words: a far pointer to the content, then its tag
            content = self.word(target, landing)
            tag = self.word(target, landing + 1)
            start = (content >> 3) & 0x1FFFFFFF
            return content >> 32, start - 1, tag  # the tag's offset is 0: the content follows it
        return target, landing, self.word(target, landing)


def _signed30(value: int) -> int:
    value &= 0x3FFFFFFF
    return value - (1 << 30) if value & (1 << 29) else value


def _node(message: _Message, segment: int, index: int, depth: int):
    """The skeleton of what the pointer at (segment, index) points to."""
    if depth > MAX_DEPTH:
        raise MalformedKeys("nested too deep")
    segment, index, pointer = message.resolve(segment, index)
    if pointer == 0:
        return None
    kind = pointer & 3
    start = index + 1 + _signed30(pointer >> 2)
    if kind == 0:
        data_words, pointer_words = (pointer >> 32) & 0xFFFF, pointer >> 48
        return _struct(message, segment, start, data_words, pointer_words, depth)
    if kind == 1:
        return _list(message, segment, start, (pointer >> 32) & 7, pointer >> 35, depth)
    raise MalformedKeys("a capability pointer in keys")


def _struct(message: _Message, segment: int, start: int, data_words: int, pointer_words: int, depth: int):
    data = b"".join(message.word(segment, start + i).to_bytes(8, "little") for i in range(data_words))
    children = tuple(_node(message, segment, start + data_words + i, depth + 1) for i in range(pointer_words))
    return ("struct", data.rstrip(b"\0"), children)


def _list(message: _Message, segment: int, start: int, element_size: int, count: int, depth: int):
    if element_size == 6:  # pointers (a List(Data): a payload's chunks)
        return ("pointers", tuple(_node(message, segment, start + i, depth + 1) for i in range(count)))
    if element_size != 7:  # bits, bytes, words: data whose contents are random; keep their size
        bits = (0, 1, 8, 16, 32, 64)[element_size]
        end_word = start + (count * bits + 63) // 64
        if end_word > start:
            message.word(segment, end_word - 1)  # bounds check
        return ("data", element_size, count)
    tag = message.word(segment, start)
    if tag & 3 != 0:
        raise MalformedKeys("a composite list without a struct tag")
    elements, data_words, pointer_words = _signed30(tag >> 2), (tag >> 32) & 0xFFFF, tag >> 48
    if elements < 0 or elements * (data_words + pointer_words) > count:
        raise MalformedKeys("a composite list larger than its words")
    step = data_words + pointer_words
    return (
        "list",
        tuple(
            _struct(message, segment, start + 1 + i * step, data_words, pointer_words, depth + 1)
            for i in range(elements)
        ),
    )


def skeleton(serialized: bytes) -> str:
    """A digest of the keys' structure (every blob replaced by its length); MalformedKeys if the
    bytes are not a well-formed message within the walk's bounds."""
    message = _Message(serialized)
    tree = _node(message, 0, 0, 0)
    return hashlib.sha256(repr(tree).encode()).hexdigest()


FRAMING_BYTES = 64 * 1024  # the message's pointers and key descriptions, far below this


def uncompressed_bytes(keyset_info) -> int:
    """The largest serialized evaluation keys of a keyset (concrete's `KeysetInfo`): every
    bootstrap and keyswitch key uncompressed, in the standard domain, 8 bytes a coefficient."""
    dimensions = [key.dimension() for key in keyset_info.secret_keys()]
    words = sum(
        key.input_lwe_dimension() * key.level() * (key.glwe_dimension() + 1) ** 2 * key.polynomial_size()
        for key in keyset_info.bootstrap_keys()
    )
    words += sum(
        dimensions[key.input_secret_key_id()] * key.level() * (dimensions[key.output_secret_key_id()] + 1)
        for key in keyset_info.keyswitch_keys()
    )
    return words * 8 + FRAMING_BYTES
