"""The encryption core: keyring, data keys and the segmented object format (sharing/crypto.py).

Most tests use 16-byte segments, so that objects of a few segments are small enough to try every
offset, every truncation and every flipped bit; a few use the real 1 MiB segments. Any change to
an object must either raise IntegrityError or give back exactly the bytes that were encrypted.
"""

from __future__ import annotations

import base64
import io
import os
import stat
import struct
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from sharing.crypto import (
    DEFAULT_SEGMENT_SIZE,
    HEADER_SIZE,
    TAG_BYTES,
    CryptoError,
    DataKey,
    IntegrityError,
    KeyringError,
    LocalKeyring,
    ObjectDecryptor,
    ObjectEncryptor,
    WrappedDataKey,
    add_kek_version,
    ciphertext_size,
    decrypt_stream,
    load_keyring,
    plaintext_size,
    rewrap_data_key,
)

SEGMENT = 16
MIB = 1024 * 1024
# Fixed keys, so a failing example can be replayed.
STUDY_KEY = DataKey(bytes(range(32)))
OTHER_STUDY_KEY = DataKey(bytes(range(32, 64)))
# 40 bytes in 16-byte segments: two full segments and a short last one.
SMALL_PLAINTEXT = bytes(range(40))


def encrypt(plaintext: bytes, data_key: DataKey = STUDY_KEY, *, segment_size: int = SEGMENT):
    """The whole object and its id."""
    encryptor = ObjectEncryptor(data_key, segment_size=segment_size)
    return b"".join(encryptor.encrypt(io.BytesIO(plaintext))), encryptor.object_id


def decrypt(
    ciphertext: bytes,
    data_key: DataKey = STUDY_KEY,
    *,
    object_id: bytes | None = None,
    offset: int = 0,
    length: int | None = None,
) -> bytes:
    """Decrypt the way a caller with a ranged read does: the header, then the segments."""
    decryptor = ObjectDecryptor(ciphertext[:HEADER_SIZE], data_key, expected_object_id=object_id)
    body = io.BytesIO(ciphertext[decryptor.ciphertext_offset(offset) :])
    return b"".join(decryptor.decrypt(body, offset=offset, length=length))


def sealed_segments(ciphertext: bytes, segment_size: int = SEGMENT) -> list[bytes]:
    body, sealed_size = ciphertext[HEADER_SIZE:], segment_size + TAG_BYTES
    return [body[start : start + sealed_size] for start in range(0, len(body), sealed_size)]


def assert_refused(ciphertext: bytes, data_key: DataKey = STUDY_KEY, **options) -> None:
    with pytest.raises(IntegrityError):
        decrypt(ciphertext, data_key, **options)


class NonSeekable(io.RawIOBase):
    """A stream that can only be read forward, in short reads, like a socket or an S3 body."""

    def __init__(self, data: bytes, *, most_per_read: int = 7) -> None:
        self._data = io.BytesIO(data)
        self._most_per_read = most_per_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(len(buffer), self._most_per_read))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class CountingStream(io.RawIOBase):
    """Counts what was asked of it and what it gave, to see how far a reader runs ahead."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.consumed = 0
        self.largest_request = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.largest_request = max(self.largest_request, len(buffer))
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.consumed += len(chunk)
        return len(chunk)


@st.composite
def plaintexts_around_boundaries(draw, segment_sizes=(16, 17, 64)):
    """(segment size, plaintext) with the plaintext within a byte of a segment boundary."""
    segment_size = draw(st.sampled_from(segment_sizes))
    size = max(0, draw(st.integers(0, 5)) * segment_size + draw(st.integers(-1, 1)))
    return segment_size, draw(st.binary(min_size=size, max_size=size))


# --- Round trips ----------------------------------------------------------------------------------


@hypothesis_settings(max_examples=300, deadline=None)
@given(case=plaintexts_around_boundaries())
def test_it_round_trips_sizes_around_segment_boundaries(case):
    segment_size, plaintext = case
    ciphertext, object_id = encrypt(plaintext, segment_size=segment_size)

    assert len(ciphertext) == ciphertext_size(len(plaintext), segment_size=segment_size)
    assert plaintext_size(len(ciphertext), segment_size=segment_size) == len(plaintext)
    assert decrypt(ciphertext, object_id=object_id) == plaintext
    assert plaintext not in ciphertext or len(plaintext) < 16


@pytest.mark.parametrize("size", [0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB - 7])
def test_it_round_trips_real_segments(size):
    plaintext = os.urandom(size)
    ciphertext, object_id = encrypt(plaintext, segment_size=DEFAULT_SEGMENT_SIZE)

    assert len(ciphertext) == ciphertext_size(size)
    assert plaintext_size(len(ciphertext)) == size
    decrypted = decrypt_stream(io.BytesIO(ciphertext), STUDY_KEY, expected_object_id=object_id)
    assert b"".join(decrypted) == plaintext


def test_it_encrypts_an_empty_plaintext_as_one_empty_last_segment():
    ciphertext, _ = encrypt(b"")

    assert len(ciphertext) == HEADER_SIZE + TAG_BYTES
    assert decrypt(ciphertext) == b""


def test_it_reads_from_a_segment_boundary_of_a_real_object():
    plaintext = os.urandom(2 * MIB + 5)
    ciphertext, object_id = encrypt(plaintext, segment_size=DEFAULT_SEGMENT_SIZE)

    for offset in (MIB - 1, MIB, MIB + 1, 2 * MIB, 2 * MIB + 5):
        assert decrypt(ciphertext, object_id=object_id, offset=offset) == plaintext[offset:]
    assert decrypt(ciphertext, offset=MIB - 3, length=6) == plaintext[MIB - 3 : MIB + 3]


@hypothesis_settings(max_examples=100, deadline=None)
@given(case=plaintexts_around_boundaries(), length=st.none() | st.integers(0, 40))
def test_it_decrypts_from_every_offset_to_the_same_bytes(case, length):
    segment_size, plaintext = case
    ciphertext, object_id = encrypt(plaintext, segment_size=segment_size)

    for offset in range(len(plaintext) + 1):
        expected = plaintext[offset:] if length is None else plaintext[offset : offset + length]
        assert decrypt(ciphertext, object_id=object_id, offset=offset, length=length) == expected
        for stream in (io.BytesIO(ciphertext), NonSeekable(ciphertext)):
            chunks = decrypt_stream(
                stream, STUDY_KEY, expected_object_id=object_id, offset=offset, length=length
            )
            assert b"".join(chunks) == expected


def test_it_reads_a_ranged_stream_from_where_it_said():
    ciphertext, _ = encrypt(SMALL_PLAINTEXT)
    decryptor = ObjectDecryptor(ciphertext[:HEADER_SIZE], STUDY_KEY, expected_object_id=None)

    # The segment holding the byte before the offset, so the last one's flag is always checked.
    sealed = SEGMENT + TAG_BYTES
    assert decryptor.ciphertext_offset(0) == HEADER_SIZE
    assert decryptor.ciphertext_offset(1) == HEADER_SIZE
    assert decryptor.ciphertext_offset(16) == HEADER_SIZE
    assert decryptor.ciphertext_offset(17) == HEADER_SIZE + sealed
    assert decryptor.ciphertext_offset(40) == HEADER_SIZE + 2 * sealed


@hypothesis_settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(max_size=200),
    read_sizes=st.lists(st.integers(1, 50), min_size=1, max_size=10),
)
def test_it_gives_the_same_object_as_a_binary_stream(plaintext, read_sizes):
    encryptor = ObjectEncryptor(STUDY_KEY, segment_size=SEGMENT)
    reader = encryptor.reader(io.BytesIO(plaintext))
    pieces, turn = [], 0
    while piece := reader.read(read_sizes[turn % len(read_sizes)]):
        pieces.append(piece)
        turn += 1
    ciphertext = b"".join(pieces)

    assert len(ciphertext) == ciphertext_size(len(plaintext), segment_size=SEGMENT)
    assert decrypt(ciphertext, object_id=encryptor.object_id) == plaintext


def test_it_encrypts_from_short_reads():
    plaintext = os.urandom(100)
    encryptor = ObjectEncryptor(STUDY_KEY, segment_size=SEGMENT)
    ciphertext = b"".join(encryptor.encrypt(NonSeekable(plaintext, most_per_read=3)))

    assert decrypt(ciphertext) == plaintext


def test_it_refuses_to_encrypt_twice_with_one_encryptor():
    encryptor = ObjectEncryptor(STUDY_KEY, segment_size=SEGMENT)
    encryptor.encrypt(io.BytesIO(b"first"))

    with pytest.raises(RuntimeError):
        encryptor.encrypt(io.BytesIO(b"second"))
    with pytest.raises(RuntimeError):
        encryptor.reader(io.BytesIO(b"second"))


# --- Tampering: every change is refused, and no wrong byte is ever returned -----------------------


def test_it_detects_every_flipped_bit_in_header_and_body():
    ciphertext, object_id = encrypt(SMALL_PLAINTEXT)

    for position in range(len(ciphertext) * 8):
        altered = bytearray(ciphertext)
        altered[position // 8] ^= 1 << (position % 8)
        assert_refused(bytes(altered))
        assert_refused(bytes(altered), object_id=object_id)


def test_it_never_returns_altered_bytes_from_an_offset():
    ciphertext, _ = encrypt(SMALL_PLAINTEXT)
    first_body_byte_read = {
        offset: ObjectDecryptor(
            ciphertext[:HEADER_SIZE], STUDY_KEY, expected_object_id=None
        ).ciphertext_offset(offset)
        for offset in (0, 15, 16, 17, 33, 40)
    }

    for position in range(len(ciphertext)):
        altered = bytearray(ciphertext)
        altered[position] ^= 0x80
        for offset, read_from in first_body_byte_read.items():
            if position < HEADER_SIZE or position >= read_from:
                assert_refused(bytes(altered), offset=offset)
            else:
                # A segment before the offset is never read, so it cannot do harm.
                assert decrypt(bytes(altered), offset=offset) == SMALL_PLAINTEXT[offset:]


@hypothesis_settings(max_examples=300, deadline=None)
@given(case=plaintexts_around_boundaries(), data=st.data())
def test_it_detects_a_flipped_bit_anywhere(case, data):
    segment_size, plaintext = case
    ciphertext, _ = encrypt(plaintext, segment_size=segment_size)
    position = data.draw(st.integers(0, len(ciphertext) * 8 - 1))
    altered = bytearray(ciphertext)
    altered[position // 8] ^= 1 << (position % 8)

    assert_refused(bytes(altered))
    with pytest.raises(IntegrityError):
        b"".join(decrypt_stream(io.BytesIO(bytes(altered)), STUDY_KEY, expected_object_id=None))


def test_it_detects_truncation_at_every_point():
    ciphertext, _ = encrypt(SMALL_PLAINTEXT)

    for size in range(len(ciphertext)):
        with pytest.raises(IntegrityError):
            b"".join(
                decrypt_stream(io.BytesIO(ciphertext[:size]), STUDY_KEY, expected_object_id=None)
            )


@hypothesis_settings(max_examples=150, deadline=None)
@given(case=plaintexts_around_boundaries(), data=st.data())
def test_it_detects_truncation_from_any_offset(case, data):
    segment_size, plaintext = case
    ciphertext, _ = encrypt(plaintext, segment_size=segment_size)
    truncated = ciphertext[: data.draw(st.integers(HEADER_SIZE, len(ciphertext) - 1))]
    offset = data.draw(st.integers(0, len(plaintext)))
    length = data.draw(st.integers(0, len(plaintext) - offset))

    assert_refused(truncated, offset=offset)
    # A read that stops before the cut may succeed, and then it is exact.
    try:
        released = decrypt(truncated, offset=offset, length=length)
    except IntegrityError:
        return
    assert released == plaintext[offset : offset + length]


def test_it_detects_truncation_to_whole_segments():
    ciphertext, _ = encrypt(bytes(48))  # three full segments; the last one is full too

    for kept in (0, 1, 2):
        truncated = ciphertext[: HEADER_SIZE + kept * (SEGMENT + TAG_BYTES)]
        assert_refused(truncated)
        assert_refused(truncated, offset=kept * SEGMENT)


@hypothesis_settings(max_examples=100, deadline=None)
@given(case=plaintexts_around_boundaries(), extra=st.binary(min_size=1, max_size=100))
def test_it_detects_extension(case, extra):
    segment_size, plaintext = case
    ciphertext, _ = encrypt(plaintext, segment_size=segment_size)

    assert_refused(ciphertext + extra)
    assert_refused(ciphertext + extra, offset=len(plaintext))


def test_it_detects_a_valid_segment_appended():
    ciphertext, _ = encrypt(bytes(48))
    segments = sealed_segments(ciphertext)
    other, _ = encrypt(bytes(64))

    assert_refused(ciphertext + segments[-1])
    assert_refused(ciphertext + segments[0])
    assert_refused(ciphertext + sealed_segments(other)[3])


def test_it_detects_reordered_dropped_and_repeated_segments():
    ciphertext, _ = encrypt(bytes(64))  # four full segments of the same plaintext
    header, segments = ciphertext[:HEADER_SIZE], sealed_segments(ciphertext)

    for order in ([1, 0, 2, 3], [0, 2, 1, 3], [3, 1, 2, 0], [0, 2, 3], [0, 1, 3], [0, 0, 1, 2, 3]):
        assert_refused(header + b"".join(segments[i] for i in order))
        assert_refused(header + b"".join(segments[i] for i in order), offset=17)


def test_it_detects_a_segment_from_another_object_of_the_same_study():
    plaintext = bytes(64)
    ciphertext, _ = encrypt(plaintext)
    other, _ = encrypt(plaintext)  # same data key, same plaintext, same positions
    header, segments = ciphertext[:HEADER_SIZE], sealed_segments(ciphertext)

    for index in range(4):
        spliced = list(segments)
        spliced[index] = sealed_segments(other)[index]
        assert_refused(header + b"".join(spliced))
        assert_refused(header + b"".join(spliced), offset=index * SEGMENT)
    assert_refused(other[:HEADER_SIZE] + ciphertext[HEADER_SIZE:])
    assert_refused(ciphertext[:HEADER_SIZE] + other[HEADER_SIZE:])


def test_it_detects_a_segment_or_object_from_another_study():
    ciphertext, object_id = encrypt(SMALL_PLAINTEXT)
    foreign, _ = encrypt(SMALL_PLAINTEXT, OTHER_STUDY_KEY)

    assert_refused(ciphertext, OTHER_STUDY_KEY)
    assert_refused(ciphertext, OTHER_STUDY_KEY, object_id=object_id)
    assert_refused(foreign)
    for index in range(3):
        spliced = sealed_segments(ciphertext)
        spliced[index] = sealed_segments(foreign)[index]
        assert_refused(ciphertext[:HEADER_SIZE] + b"".join(spliced))


def test_it_detects_a_whole_object_of_the_same_study_put_in_place_by_its_id():
    ciphertext, object_id = encrypt(SMALL_PLAINTEXT)
    sibling, _ = encrypt(b"another instance of the same study")

    assert_refused(sibling, object_id=object_id)
    # Without the recorded id a valid object of the same study opens: callers record the id.
    assert decrypt(sibling) == b"another instance of the same study"
    assert decrypt(ciphertext, object_id=object_id) == SMALL_PLAINTEXT


def test_it_refuses_bad_headers():
    ciphertext, _ = encrypt(SMALL_PLAINTEXT)

    def with_field(start: int, value: bytes) -> bytes:
        return ciphertext[:start] + value + ciphertext[start + len(value) :]

    assert_refused(with_field(0, b"XXXX"))  # magic
    assert_refused(with_field(4, b"\x02"))  # an unknown version
    assert_refused(with_field(5, struct.pack(">I", 0)))  # impossible segment sizes
    assert_refused(with_field(5, struct.pack(">I", 2**32 - 1)))
    assert_refused(with_field(5, struct.pack(">I", 32)))  # a possible one, not the one used
    assert_refused(ciphertext[: HEADER_SIZE - 1])
    with pytest.raises(IntegrityError):
        ObjectDecryptor(b"", STUDY_KEY, expected_object_id=None)


def test_it_refuses_sizes_no_object_can_have():
    sealed = SEGMENT + TAG_BYTES
    for size in (0, HEADER_SIZE, HEADER_SIZE + TAG_BYTES - 1, HEADER_SIZE + sealed + 5):
        with pytest.raises(IntegrityError):
            plaintext_size(size, segment_size=SEGMENT)
    # 16 + 16 bytes: a full last segment then an empty one, which the format never writes.
    with pytest.raises(IntegrityError):
        plaintext_size(HEADER_SIZE + SEGMENT + 2 * TAG_BYTES, segment_size=SEGMENT)


def test_it_raises_one_family_of_errors():
    assert issubclass(IntegrityError, CryptoError)
    assert issubclass(KeyringError, CryptoError)


# --- Structure: the documented layout, and nonces that never repeat under one key -----------------


def independent_object_key(header: bytes, data_key: DataKey) -> tuple[bytes, bytes]:
    """The object key and key commitment, computed from the module docstring, not its code."""
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=header[25:57],
        info=b"portal object v1\x00" + header[:57],
    ).derive(data_key.key_bytes)
    return derived[:32], derived[32:]


def test_it_follows_the_documented_layout():
    plaintext = bytes(range(40))
    encryptor = ObjectEncryptor(STUDY_KEY, segment_size=SEGMENT)
    ciphertext = b"".join(encryptor.encrypt(io.BytesIO(plaintext)))
    header = ciphertext[:HEADER_SIZE]

    assert HEADER_SIZE == 89
    assert header[:4] == b"ICPE"
    assert header[4] == 1
    assert struct.unpack(">I", header[5:9]) == (SEGMENT,)
    assert header[9:25] == encryptor.object_id
    object_key, commitment = independent_object_key(header, STUDY_KEY)
    assert header[57:89] == commitment
    segments = sealed_segments(ciphertext)
    decrypted = [
        AESGCM(object_key).decrypt(
            index.to_bytes(12, "big"),
            segment,
            header + index.to_bytes(8, "big") + bytes([index == len(segments) - 1]),
        )
        for index, segment in enumerate(segments)
    ]
    assert decrypted == [plaintext[:16], plaintext[16:32], plaintext[32:]]


def test_it_never_uses_a_key_and_nonce_pair_twice():
    plaintext = bytes(5 * SEGMENT)  # identical segments, identical objects
    objects = [encrypt(plaintext)[0] for _ in range(20)]
    key_nonce_pairs = set()
    for ciphertext in objects:
        object_key, _ = independent_object_key(ciphertext[:HEADER_SIZE], STUDY_KEY)
        for index, _segment in enumerate(sealed_segments(ciphertext)):
            key_nonce_pairs.add((object_key, index.to_bytes(12, "big")))

    assert len(key_nonce_pairs) == 20 * 5
    assert len({ciphertext[9:25] for ciphertext in objects}) == 20  # object ids
    assert len({ciphertext[25:57] for ciphertext in objects}) == 20  # salts
    # Equal plaintext under a repeated key and nonce would give equal ciphertext, tag aside.
    bodies = [segment[:-TAG_BYTES] for c in objects for segment in sealed_segments(c)]
    assert len(set(bodies)) == len(bodies)


# --- Constant memory ------------------------------------------------------------------------------


def test_it_encrypts_with_about_one_segment_in_hand():
    source = CountingStream(os.urandom(64 * SEGMENT + 3))
    chunks = ObjectEncryptor(STUDY_KEY, segment_size=SEGMENT).encrypt(source)

    assert len(next(chunks)) == HEADER_SIZE
    assert source.consumed == 0  # the header needs no plaintext
    for index, _chunk in enumerate(chunks):
        # Segment `index` is out after at most its own bytes and one byte of the next.
        assert source.consumed <= (index + 1) * SEGMENT + 1
    assert source.largest_request <= SEGMENT + 1


def test_it_decrypts_with_about_one_segment_in_hand():
    ciphertext, _ = encrypt(os.urandom(64 * SEGMENT + 3))
    source = CountingStream(ciphertext)
    chunks = decrypt_stream(source, STUDY_KEY, expected_object_id=None)

    released = 0
    for chunk in chunks:
        released += len(chunk)
        segments_out = -(-released // SEGMENT)
        assert source.consumed <= HEADER_SIZE + segments_out * (SEGMENT + TAG_BYTES) + 1
    assert released == 64 * SEGMENT + 3
    assert source.largest_request <= max(HEADER_SIZE, SEGMENT + TAG_BYTES + 1)


def test_it_reads_real_segments_in_segment_sized_requests():
    ciphertext, _ = encrypt(bytes(5 * MIB), segment_size=DEFAULT_SEGMENT_SIZE)
    source = CountingStream(ciphertext)
    chunks = decrypt_stream(source, STUDY_KEY, expected_object_id=None)

    assert len(next(chunks)) == MIB
    assert source.consumed <= HEADER_SIZE + MIB + TAG_BYTES + 1
    assert sum(len(chunk) for chunk in chunks) == 4 * MIB
    assert source.largest_request <= MIB + TAG_BYTES + 1


# --- Keyring --------------------------------------------------------------------------------------


def kek_text(*entries: tuple[str, bytes]) -> str:
    return "\n".join(f"{kek_id}:{base64.b64encode(key).decode()}" for kek_id, key in entries)


KEK_1, KEK_2, KEK_3 = (bytes([n]) * 32 for n in (1, 2, 3))


def test_it_creates_the_key_file_owner_only_on_first_use(tmp_path: Path):
    path = tmp_path / "secrets" / "keyring"
    keyring = LocalKeyring.load_or_create(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyring.current_kek_id() == "v1"
    data_key = DataKey.generate()
    wrapped = keyring.wrap_data_key(data_key)
    again = LocalKeyring.load_or_create(path)  # the second run reads what the first created
    assert again.unwrap_data_key(wrapped).key_bytes == data_key.key_bytes
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_it_agrees_on_one_keyring_when_first_runs_race(tmp_path: Path):
    path = tmp_path / "keyring"
    keyrings: list[LocalKeyring] = []
    threads = [
        threading.Thread(target=lambda: keyrings.append(LocalKeyring.load_or_create(path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    wrapped = keyrings[0].wrap_data_key(STUDY_KEY)
    assert len(keyrings) == 8
    assert all(k.unwrap_data_key(wrapped).key_bytes == STUDY_KEY.key_bytes for k in keyrings)


def test_it_refuses_a_key_file_others_can_read(tmp_path: Path):
    path = tmp_path / "keyring"
    LocalKeyring.load_or_create(path)
    path.chmod(0o640)

    with pytest.raises(KeyringError, match="chmod 600"):
        LocalKeyring.load_or_create(path)


def test_it_wraps_under_the_newest_of_several_versions():
    old_keyring = LocalKeyring.from_text(kek_text(("v1", KEK_1)))
    keyring = LocalKeyring.from_text(kek_text(("v1", KEK_1), ("v2", KEK_2), ("v3", KEK_3)))
    wrapped_before = old_keyring.wrap_data_key(STUDY_KEY)
    wrapped_now = keyring.wrap_data_key(STUDY_KEY)

    assert keyring.current_kek_id() == "v3"
    assert keyring.known_kek_ids() == {"v1", "v2", "v3"}
    assert wrapped_now.kek_id == "v3"
    assert STUDY_KEY.key_bytes not in wrapped_now.wrapped_key
    assert keyring.unwrap_data_key(wrapped_before).key_bytes == STUDY_KEY.key_bytes
    assert keyring.unwrap_data_key(wrapped_now).key_bytes == STUDY_KEY.key_bytes
    assert keyring.wrap_data_key(STUDY_KEY) != wrapped_now  # a fresh nonce each time


def test_it_refuses_an_unknown_kek_id():
    old_keyring = LocalKeyring.from_text(kek_text(("v1", KEK_1), ("v2", KEK_2)))
    keyring = LocalKeyring.from_text(kek_text(("v3", KEK_3)))

    with pytest.raises(KeyringError, match="'v2'"):
        keyring.unwrap_data_key(old_keyring.wrap_data_key(STUDY_KEY))


def test_it_refuses_a_wrong_kek_and_an_altered_wrapped_key():
    wrapped = LocalKeyring.from_text(kek_text(("v1", KEK_1), ("v2", KEK_2))).wrap_data_key(
        STUDY_KEY
    )
    impostor = LocalKeyring.from_text(kek_text(("v2", KEK_3)))  # same id, another deployment's

    with pytest.raises(IntegrityError):
        impostor.unwrap_data_key(wrapped)
    keyring = LocalKeyring.from_text(kek_text(("v1", KEK_1), ("v2", KEK_2)))
    for position in range(len(wrapped.wrapped_key)):
        altered = bytearray(wrapped.wrapped_key)
        altered[position] ^= 1
        with pytest.raises(IntegrityError):
            keyring.unwrap_data_key(WrappedDataKey(kek_id="v2", wrapped_key=bytes(altered)))
    # Wrapped under v2, then relabelled as v1 of a keyring whose v1 is that very key: the KEK
    # id is bound in, so the label cannot be changed.
    relabelled = WrappedDataKey(kek_id="v1", wrapped_key=wrapped.wrapped_key)
    with pytest.raises(IntegrityError):
        LocalKeyring.from_text(kek_text(("v1", KEK_2), ("v3", KEK_3))).unwrap_data_key(relabelled)
    with pytest.raises(IntegrityError):
        keyring.unwrap_data_key(WrappedDataKey(kek_id="v2", wrapped_key=wrapped.wrapped_key[:-1]))


def test_it_rewraps_under_a_new_version_to_the_same_data_key(tmp_path: Path):
    path = tmp_path / "keyring"
    keyring = LocalKeyring.load_or_create(path)
    data_key = DataKey.generate()
    wrapped = keyring.wrap_data_key(data_key)
    ciphertext, object_id = encrypt(b"an instance", data_key)

    assert add_kek_version(path) == "v2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rotated = LocalKeyring.load_or_create(path)
    rewrapped = rewrap_data_key(rotated, wrapped)

    assert rotated.current_kek_id() == "v2"
    assert rewrapped.kek_id == "v2"
    assert rewrapped.wrapped_key != wrapped.wrapped_key
    unwrapped = rotated.unwrap_data_key(rewrapped)
    assert unwrapped.key_bytes == data_key.key_bytes
    assert decrypt(ciphertext, unwrapped, object_id=object_id) == b"an instance"  # untouched
    assert rewrap_data_key(rotated, rewrapped) is rewrapped  # already current: nothing to do
    assert rotated.unwrap_data_key(wrapped).key_bytes == data_key.key_bytes  # v1 still opens


def test_it_reads_the_keyring_the_way_settings_give_it(tmp_path: Path):
    secret_file = tmp_path / "mounted-secret"
    secret_file.write_text(kek_text(("2024-01", KEK_1), ("2025-01", KEK_2)) + "\n")
    default_path = tmp_path / "dev" / "keyring"

    from_file = load_keyring(
        variable="PORTAL_KEYRING",
        default_path=default_path,
        environ={"PORTAL_KEYRING_FILE": str(secret_file), "PORTAL_KEYRING": "ignored"},
    )
    from_variable = load_keyring(
        variable="PORTAL_KEYRING",
        default_path=None,
        environ={"PORTAL_KEYRING": kek_text(("a", KEK_1), ("b", KEK_3)).replace("\n", ",")},
    )
    embedded = load_keyring(variable="PORTAL_KEYRING", default_path=default_path, environ={})

    assert from_file.current_kek_id() == "2025-01"
    assert from_variable.known_kek_ids() == {"a", "b"}
    assert from_variable.current_kek_id() == "b"
    assert embedded.current_kek_id() == "v1"
    assert default_path.exists()
    with pytest.raises(KeyringError, match="PORTAL_KEYRING"):
        load_keyring(variable="PORTAL_KEYRING", default_path=None, environ={})
    with pytest.raises(KeyringError, match="cannot be read"):
        load_keyring(
            variable="PORTAL_KEYRING",
            default_path=None,
            environ={"PORTAL_KEYRING_FILE": str(tmp_path / "missing")},
        )


def test_it_reads_both_base64_alphabets_and_comments():
    # Bytes whose base64 has '+' and '/' in the standard alphabet, '-' and '_' in the URL one.
    old_key, new_key = bytes([0xFB, 0xFF]) * 16, bytes([0xFF, 0xFB]) * 16
    standard = base64.b64encode(old_key).decode()
    url_safe = base64.urlsafe_b64encode(new_key).decode()
    keyring = LocalKeyring.from_text(f"# rotated yearly\nold:{standard}  # first\nnew:{url_safe}")
    reference = LocalKeyring([("old", old_key), ("new", new_key)])

    assert "+" in standard
    assert "-" in url_safe
    assert keyring.known_kek_ids() == {"old", "new"}
    assert keyring.current_kek_id() == "new"
    assert keyring.unwrap_data_key(reference.wrap_data_key(STUDY_KEY)).key_bytes == bytes(range(32))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# nothing but a comment",
        "v1",
        "v1:not base64!",
        f"v1:{base64.b64encode(bytes(16)).decode()}",
        f"v1:{base64.b64encode(KEK_1).decode()}\nv1:{base64.b64encode(KEK_2).decode()}",
        f"v1:{base64.b64encode(KEK_1).decode()}\nv2:{base64.b64encode(KEK_1).decode()}",
        f"bad/id:{base64.b64encode(KEK_1).decode()}",
    ],
)
def test_it_refuses_malformed_keyrings_without_quoting_keys(text):
    with pytest.raises(KeyringError) as raised:
        LocalKeyring.from_text(text, source="PORTAL_KEYRING")

    assert str(raised.value).startswith("PORTAL_KEYRING")
    assert base64.b64encode(KEK_1).decode() not in str(raised.value)


def test_it_never_shows_key_material_in_a_repr():
    keyring = LocalKeyring.from_text(kek_text(("v1", KEK_1), ("v2", KEK_2)))

    assert repr(STUDY_KEY) == "DataKey(<secret>)"
    assert "v2" in repr(keyring)
    for key in (KEK_1, KEK_2):
        assert base64.b64encode(key).decode() not in repr(keyring)
        assert repr(key) not in repr(keyring)


def test_it_makes_data_keys_of_256_random_bits():
    keys = {DataKey.generate().key_bytes for _ in range(100)}

    assert len(keys) == 100
    assert all(len(key) == 32 for key in keys)
    with pytest.raises(ValueError, match="32 bytes"):
        DataKey(bytes(16))
