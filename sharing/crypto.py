"""Encryption of study objects at rest: the keyring, per-study data keys, and the object format.

Rule 1 of DESIGN.md: plaintext never rests outside the gateway spool. Everything the object
store holds passes through this module first. It uses `cryptography` only (no Django), so it can
be reasoned about, and tested, on its own.

Keys, from the top:

- **Key-encryption keys (KEKs)** live in a keyring behind the `KeyProvider` protocol. The
  embedded default, `LocalKeyring`, reads versioned 256-bit KEKs from a secret (an environment
  variable or a mounted file) or keeps them in a local file it creates on first run; a cloud KMS
  or Vault transit can implement the same four methods without any caller changing.
- **Data keys**: one random 256-bit key per study, stored only wrapped by a KEK, beside the id of
  that KEK (`WrappedDataKey`). Rotating a KEK re-wraps data keys (`rewrap_data_key`) and never
  touches the objects, which do not depend on the KEK at all.
- **Object keys**: each object gets its own AES-256-GCM key, derived with HKDF-SHA256 from the
  data key, a random salt and a random object id that its header carries. Segment nonces are a
  plain counter under that key, so no (key, nonce) pair can ever repeat.

The object format (version 1; all integers big-endian):

    header (89 bytes)
      magic            4   b"ICPE"
      format version   1   1
      segment size     4   plaintext bytes per segment (DEFAULT_SEGMENT_SIZE = 1 MiB)
      object id       16   random, recorded by the caller to recognise the object later
      salt            32   random
      key commitment  32   HKDF output that proves the header and the data key belong together
    segments, one after another, each AES-256-GCM ciphertext + 16-byte tag:
      segment i        plaintext bytes [i * size, (i + 1) * size), every segment full but the
                       last; an empty plaintext is one empty last segment (16 bytes, a tag)

    HKDF-SHA256(ikm = data key, salt = salt, info = b"portal object v1\\0" + header[:57],
                length = 64) -> object key (first 32 bytes) + key commitment (last 32 bytes)
    nonce(i) = i as a 12-byte integer
    aad(i)   = header (all 89 bytes) + i as 8 bytes + 1 byte: 1 if segment i is the last, else 0

Threat model. The attacker can read and write the bucket (a leaked storage credential, a
malicious or careless storage operator, a restored old backup), but has neither the KEKs nor the
portal's memory. Such an attacker:

- **can** see how many objects there are, when they were written and how large each one is
  (the plaintext size follows exactly from the ciphertext size); object names carry no PHI
  (store.py), so that is all they see;
- **can** delete, withhold or corrupt objects: the portal then refuses to serve them (denial of
  service, which no encryption prevents; backups and object versioning are the remedy);
- **can** put a whole, valid object of a study in the place of another object of the *same*
  study. The format cannot tell the two apart by itself, so callers record each object's id
  (`ObjectEncryptor.object_id`) and pass it back as `expected_object_id`, which catches it;
- **cannot** learn any byte of plaintext, nor whether two objects hold the same plaintext
  (every object has its own key);
- **cannot** make the portal release a single byte that the portal did not encrypt at that very
  position of that very object: altering, truncating, extending, reordering, duplicating or
  dropping segments, splicing in segments of another object or of another study, editing the
  header, or decrypting under the wrong data key all raise `IntegrityError` before any plaintext
  of the affected segment leaves this module.

Outside this model: whoever holds the database *and* the KEKs can read everything; the plaintext
in the spool and in the portal's memory is protected by the host, not by this module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import io
import os
import re
import stat
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

KEY_BYTES: Final = 32  # AES-256, for KEKs, data keys and object keys alike
TAG_BYTES: Final = 16  # AES-GCM tag appended to every segment
NONCE_BYTES: Final = 12

MAGIC: Final = b"ICPE"
FORMAT_VERSION: Final = 1
OBJECT_ID_BYTES: Final = 16
SALT_BYTES: Final = 32
COMMITMENT_BYTES: Final = 32
_HEADER_FIELDS = struct.Struct(f">{len(MAGIC)}sBI{OBJECT_ID_BYTES}s{SALT_BYTES}s")
HEADER_SIZE: Final = _HEADER_FIELDS.size + COMMITMENT_BYTES  # 89

DEFAULT_SEGMENT_SIZE: Final = 1024 * 1024
MIN_SEGMENT_SIZE: Final = 16
# The decrypting reader holds about one segment; the cap bounds what a header can make it
# allocate, and the header is checked against the data key before its size is trusted anyway.
MAX_SEGMENT_SIZE: Final = 64 * 1024 * 1024
# Far beyond any DICOM object (4 PiB at 1 MiB segments), and well inside AES-GCM's limits on the
# number of blocks encrypted under one key.
MAX_SEGMENTS: Final = 2**32

_OBJECT_KEY_INFO: Final = b"portal object v1\x00"
_WRAP_AAD_PREFIX: Final = b"portal data key v1\x00"
_SEGMENT_POSITION = struct.Struct(">QB")  # segment index, last-segment flag

_KEK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LOCAL_KEK_VERSION = re.compile(r"v([0-9]+)")
_KEY_FILE_PREAMBLE = """\
# The portal's key-encryption keys (KEKs), created by sharing/crypto.py for the embedded default.
# One KEK per line, `<kek id>:<base64 of 32 random bytes>`, oldest first; the last line is the
# current KEK, which wraps new data keys. Keep every line whose KEK still wraps a data key: without
# it those studies cannot be opened. Never share this file; it must stay readable by its owner only.
"""


class CryptoError(Exception):
    """Base of every error this module raises on purpose, so a caller can catch them together."""


class IntegrityError(CryptoError):
    """Ciphertext, a header or a wrapped key failed authentication: altered, truncated, extended,
    reordered, from another object or study, or opened under the wrong key.

    One type for all of these on purpose: telling an attacker which check failed helps them, and
    a caller has one thing to do either way (serve nothing, alert, keep the evidence).
    """


class KeyringError(CryptoError):
    """The keyring cannot be used as configured: a missing or malformed secret, a key file that
    others can read, or a wrapped data key that names a KEK the keyring does not have."""


# --- Keys -----------------------------------------------------------------------------------------


class DataKey:
    """A study's 256-bit data key, in the clear; only ever held in memory.

    A class rather than bare bytes so that it cannot end up in a log, a traceback with local
    variables, or a task's arguments by accident: its repr says nothing about the key.
    """

    __slots__ = ("_key_bytes",)

    def __init__(self, key_bytes: bytes) -> None:
        if len(key_bytes) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes")
        self._key_bytes = bytes(key_bytes)

    @classmethod
    def generate(cls) -> DataKey:
        """A fresh random data key, for a new study."""
        return cls(os.urandom(KEY_BYTES))

    @property
    def key_bytes(self) -> bytes:
        """The raw key, for wrapping it and deriving object keys; never store or log it."""
        return self._key_bytes

    def __repr__(self) -> str:
        return "DataKey(<secret>)"


@dataclass(frozen=True)
class WrappedDataKey:
    """A data key encrypted under a KEK, as it rests in the database.

    `kek_id` is kept apart from the ciphertext (in its own column) so that rotation can find the
    data keys still wrapped under an old KEK with a plain query.
    """

    kek_id: str
    wrapped_key: bytes


class KeyProvider(Protocol):
    """What the rest of the portal needs from a keyring; the seam where a KMS plugs in.

    Implementations keep the KEKs; callers only ever see wrapped data keys and KEK ids. A KEK id
    must name one key forever (a version), never "the latest", so that a wrapped key always says
    exactly which KEK opens it; ids of different providers should not collide (prefix them, e.g.
    `kms:…`), so that a provider wrapping several can route an unwrap by id during a migration.
    """

    def current_kek_id(self) -> str:
        """The KEK that wraps new data keys (and that rotation re-wraps old ones under)."""
        ...

    def known_kek_ids(self) -> frozenset[str]:
        """Every KEK this provider can unwrap with; rotation must not drop one still in use."""
        ...

    def wrap_data_key(self, data_key: DataKey) -> WrappedDataKey:
        """Encrypt `data_key` under the current KEK."""
        ...

    def unwrap_data_key(self, wrapped: WrappedDataKey) -> DataKey:
        """Decrypt a wrapped data key; IntegrityError if it does not authenticate, KeyringError
        if its KEK is unknown here."""
        ...


class LocalKeyring:
    """KEKs held by the portal itself: the embedded default, and a production option when the
    KEKs come from a secret manager as a mounted file.

    Data keys are wrapped with AES-256-GCM under the KEK, a random 96-bit nonce each (a KEK wraps
    one key per study plus re-wraps: far below where random nonces become a concern) and the KEK
    id as associated data, so a wrapped key cannot be relabelled as another KEK's.
    """

    def __init__(self, keks: Sequence[tuple[str, bytes]]) -> None:
        """`keks` are (KEK id, 32 key bytes) pairs, oldest first; the last one is current."""
        if not keks:
            raise KeyringError("the keyring holds no KEK")
        self._keks: dict[str, AESGCM] = {}
        seen_keys: set[bytes] = set()
        for kek_id, kek_bytes in keks:
            if not _KEK_ID.fullmatch(kek_id):
                raise KeyringError(
                    f"KEK id {kek_id!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
                )
            if kek_id in self._keks:
                raise KeyringError(f"KEK id {kek_id!r} appears twice in the keyring")
            if len(kek_bytes) != KEY_BYTES:
                raise KeyringError(f"KEK {kek_id!r} must be {KEY_BYTES} bytes")
            if kek_bytes in seen_keys:
                raise KeyringError(f"KEK {kek_id!r} repeats the key of another version")
            seen_keys.add(kek_bytes)
            self._keks[kek_id] = AESGCM(kek_bytes)
        self._current_kek_id = keks[-1][0]

    @classmethod
    def from_text(cls, text: str, *, source: str = "the keyring") -> LocalKeyring:
        """Parse `<kek id>:<base64 key>` entries, separated by newlines, spaces or commas (so a
        keyring fits in one environment variable); `#` starts a comment. The last is current.

        `source` names where the text came from in error messages, which never quote a key.
        """
        keks: list[tuple[str, bytes]] = []
        for line in text.splitlines():
            for entry in re.split(r"[\s,]+", line.split("#", 1)[0].strip()):
                if not entry:
                    continue
                kek_id, separator, encoded_key = entry.partition(":")
                if not separator:
                    raise KeyringError(f"{source}: an entry is not `<kek id>:<base64 key>`")
                keks.append((kek_id, _decode_kek(encoded_key, kek_id=kek_id, source=source)))
        if not keks:
            raise KeyringError(f"{source} holds no KEK")
        try:
            return cls(keks)
        except KeyringError as exc:
            raise KeyringError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: Path) -> LocalKeyring:
        """Read a keyring file, e.g. a Docker or Kubernetes secret mounted read-only."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyringError(f"the keyring file {path} cannot be read: {exc.strerror}") from None
        return cls.from_text(text, source=str(path))

    @classmethod
    def load_or_create(cls, path: Path) -> LocalKeyring:
        """The embedded default: the keyring in `path`, created with one KEK on first use.

        The file is created with mode 0600 before any key is written into it, and published
        under its name only once complete, so concurrent first runs agree on one keyring. An
        existing file that others may read is refused rather than used.
        """
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            text = _KEY_FILE_PREAMBLE + _kek_entry("v1", os.urandom(KEY_BYTES))
            _write_private_file(path, text, replace=False)
        _refuse_shared_file(path)
        return cls.from_file(path)

    def __repr__(self) -> str:
        return f"LocalKeyring(kek_ids={list(self._keks)!r}, current={self._current_kek_id!r})"

    def current_kek_id(self) -> str:
        """The newest KEK: the last entry of the keyring."""
        return self._current_kek_id

    def known_kek_ids(self) -> frozenset[str]:
        """Every KEK in the keyring, old versions included."""
        return frozenset(self._keks)

    def wrap_data_key(self, data_key: DataKey) -> WrappedDataKey:
        """Encrypt the data key under the current KEK: nonce + ciphertext + tag, 60 bytes."""
        kek_id = self._current_kek_id
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._keks[kek_id].encrypt(nonce, data_key.key_bytes, _wrap_aad(kek_id))
        return WrappedDataKey(kek_id=kek_id, wrapped_key=nonce + ciphertext)

    def unwrap_data_key(self, wrapped: WrappedDataKey) -> DataKey:
        """Decrypt a data key wrapped under any KEK of the keyring."""
        kek = self._keks.get(wrapped.kek_id)
        if kek is None:
            raise KeyringError(f"KEK {wrapped.kek_id!r} is not in the keyring")
        if len(wrapped.wrapped_key) != NONCE_BYTES + KEY_BYTES + TAG_BYTES:
            raise IntegrityError("the wrapped data key has the wrong length")
        nonce, ciphertext = wrapped.wrapped_key[:NONCE_BYTES], wrapped.wrapped_key[NONCE_BYTES:]
        try:
            return DataKey(kek.decrypt(nonce, ciphertext, _wrap_aad(wrapped.kek_id)))
        except InvalidTag:
            raise IntegrityError("the wrapped data key does not open under its KEK") from None


def load_keyring(
    *, variable: str, default_path: Path | None, environ: Mapping[str, str] | None = None
) -> KeyProvider:
    """The keyring as settings configure it, read the way portal/env.py reads every secret.

    `<variable>_FILE` names a keyring file (it wins when both are set), else `<variable>` holds
    the keyring text itself. With neither set, `default_path` is the embedded default's local
    file, created on first use; pass None where a missing keyring must be an error (production).
    Typed as the protocol: this is the one place that changes when a KMS provider is added.
    """
    environ = os.environ if environ is None else environ
    file_name = environ.get(f"{variable}_FILE")
    if file_name:
        return LocalKeyring.from_file(Path(file_name))
    text = environ.get(variable)
    if text is not None:
        return LocalKeyring.from_text(text, source=variable)
    if default_path is not None:
        return LocalKeyring.load_or_create(default_path)
    raise KeyringError(f"{variable} (or {variable}_FILE) must hold the keyring")


def add_kek_version(path: Path) -> str:
    """Append a new KEK to a local key file (see `LocalKeyring.load_or_create`); return its id.

    New data keys are wrapped under it from the next load of the keyring on; the old versions
    stay, since they still wrap data keys until `rewrap_data_key` has moved every one. The file
    is replaced atomically and stays 0600. Run it from one place at a time (a management
    command): two concurrent rotations could each add a version and one would be lost.
    """
    _refuse_shared_file(path)
    keyring = LocalKeyring.from_file(path)
    versions = [
        int(match.group(1))
        for kek_id in keyring.known_kek_ids()
        if (match := _LOCAL_KEK_VERSION.fullmatch(kek_id))
    ]
    new_kek_id = f"v{max(versions, default=0) + 1}"
    text = path.read_text()
    if not text.endswith("\n"):
        text += "\n"
    _write_private_file(path, text + _kek_entry(new_kek_id, os.urandom(KEY_BYTES)), replace=True)
    return new_kek_id


def rewrap_data_key(provider: KeyProvider, wrapped: WrappedDataKey) -> WrappedDataKey:
    """The same data key, wrapped under the provider's current KEK (rotation).

    Objects are encrypted under keys derived from the data key, not the KEK, so they stay as
    they are. A key already under the current KEK comes back unchanged, so a rotation job can
    run again after an interruption without doing the work twice.
    """
    if wrapped.kek_id == provider.current_kek_id():
        return wrapped
    return provider.wrap_data_key(provider.unwrap_data_key(wrapped))


def _wrap_aad(kek_id: str) -> bytes:
    return _WRAP_AAD_PREFIX + kek_id.encode("ascii")


def _kek_entry(kek_id: str, kek_bytes: bytes) -> str:
    return f"{kek_id}:{base64.b64encode(kek_bytes).decode('ascii')}\n"


def _decode_kek(encoded_key: str, *, kek_id: str, source: str) -> bytes:
    # Both alphabets: `openssl rand -base64 32` gives the standard one, some tools the URL one.
    alphabet = b"-_" if ("-" in encoded_key or "_" in encoded_key) else b"+/"
    try:
        kek_bytes = base64.b64decode(encoded_key, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{source}: KEK {kek_id!r} is not valid base64") from None
    if len(kek_bytes) != KEY_BYTES:
        raise KeyringError(f"{source}: KEK {kek_id!r} must be {KEY_BYTES} bytes")
    return kek_bytes


def _refuse_shared_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyringError(f"the keyring file {path} cannot be read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(f"the keyring file {path} is open to others; `chmod 600 {path}`")


def _write_private_file(path: Path, text: str, *, replace: bool) -> None:
    """Write `text` to a 0600 temporary file beside `path`, then publish it under `path`.

    Readers never see a half-written keyring. Without `replace`, an existing file wins (another
    process created it first) and is left alone.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            # Another process that got there first wins; its keyring is as good as ours.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --- The object format ----------------------------------------------------------------------------


def ciphertext_size(plaintext_size: int, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The size of the object that `plaintext_size` bytes encrypt to, known before encrypting
    (for an S3 upload's Content-Length, or a quota check)."""
    _check_segment_size(segment_size, error=ValueError)
    if plaintext_size < 0:
        raise ValueError("a size cannot be negative")
    segments = max(1, -(-plaintext_size // segment_size))
    return HEADER_SIZE + plaintext_size + segments * TAG_BYTES


def plaintext_size(ciphertext_size: int, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The plaintext size of an object of `ciphertext_size` bytes (e.g. the store's size()).

    Sizes that no plaintext encrypts to mean the object was cut or padded: IntegrityError.
    """
    _check_segment_size(segment_size, error=ValueError)
    body_size = ciphertext_size - HEADER_SIZE
    full_segments, rest = divmod(body_size, segment_size + TAG_BYTES)
    if body_size < TAG_BYTES or (0 < rest < TAG_BYTES) or (rest == TAG_BYTES and full_segments):
        raise IntegrityError("no object of the format has this size")
    return full_segments * segment_size + max(rest - TAG_BYTES, 0)


class ObjectEncryptor:
    """Encrypts one plaintext into one object, in constant memory.

    Creating it draws the object's id and salt, and so its key; the id is known before any byte
    is encrypted, for the caller to record beside the object's name. One encryptor encrypts one
    plaintext, once: a second use would repeat nonces under the same key, so it is refused.
    """

    def __init__(self, data_key: DataKey, *, segment_size: int = DEFAULT_SEGMENT_SIZE) -> None:
        _check_segment_size(segment_size, error=ValueError)
        self.segment_size = segment_size
        self.object_id = os.urandom(OBJECT_ID_BYTES)
        header_fields = _HEADER_FIELDS.pack(
            MAGIC, FORMAT_VERSION, segment_size, self.object_id, os.urandom(SALT_BYTES)
        )
        object_key, commitment = _derive_object_key(data_key, header_fields)
        self.header = header_fields + commitment
        self._aead = AESGCM(object_key)
        self._used = False

    def encrypt(self, plaintext: IO[bytes]) -> Iterator[bytes]:
        """Read `plaintext` to its end and yield the object: the header, then one chunk per
        segment. Holds about one segment of plaintext at a time, whatever the size."""
        self._claim()
        return self._encrypted_chunks(plaintext)

    def reader(self, plaintext: IO[bytes]) -> BinaryIO:
        """The object as a readable, non-seekable binary stream, for `ObjectStore.put`."""
        self._claim()
        return io.BufferedReader(_EncryptingReader(self, self._segments(plaintext)))

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError("an ObjectEncryptor encrypts one plaintext only")
        self._used = True

    def _segments(self, plaintext: IO[bytes]) -> Iterator[_Segment]:
        """Each segment's plaintext with its nonce and associated data, in order."""
        header = self.header
        for index, (piece, is_last) in enumerate(_pieces(plaintext, self.segment_size)):
            if index >= MAX_SEGMENTS:
                piece.release()
                raise ValueError("the plaintext is too large for one object")
            yield _segment_nonce(index), piece, _segment_aad(header, index, is_last)

    def _encrypted_chunks(self, plaintext: IO[bytes]) -> Iterator[bytes]:
        yield self.header
        encrypt = self._aead.encrypt
        for nonce, piece, aad in self._segments(plaintext):
            with piece:  # let go of the plaintext before the chunk leaves
                sealed = encrypt(nonce, piece, aad)
            yield sealed


class ObjectDecryptor:
    """Decrypts one object from its header, at any plaintext offset, in constant memory.

    Built from the header bytes alone, so that a caller can fetch the header and then only the
    segments it needs with a ranged read:

        decryptor = ObjectDecryptor(header, data_key, expected_object_id=instance.object_id)
        with store.open(name, offset=decryptor.ciphertext_offset(offset)) as body:
            for chunk in decryptor.decrypt(body, offset=offset):
                ...

    The header is authenticated against the data key here, before any of its fields is trusted.
    """

    def __init__(
        self, header: bytes, data_key: DataKey, *, expected_object_id: bytes | None
    ) -> None:
        """`expected_object_id` is the id recorded when the object was written; it catches a
        whole object of the same study put in this one's place. None skips that check (for
        tools that have no record), leaving the rest of the verification as it is."""
        if len(header) != HEADER_SIZE:
            raise IntegrityError("the object header is incomplete")
        header_fields, commitment = header[: _HEADER_FIELDS.size], header[_HEADER_FIELDS.size :]
        magic, version, segment_size, object_id, _salt = _HEADER_FIELDS.unpack(header_fields)
        if magic != MAGIC:
            raise IntegrityError("this is not an encrypted object")
        if version != FORMAT_VERSION:
            raise IntegrityError(f"unknown object format version {version}")
        _check_segment_size(segment_size, error=IntegrityError)
        object_key, expected_commitment = _derive_object_key(data_key, header_fields)
        if not hmac.compare_digest(commitment, expected_commitment):
            raise IntegrityError("the object header was altered, or this is the wrong data key")
        if expected_object_id is not None and not hmac.compare_digest(
            object_id, expected_object_id
        ):
            raise IntegrityError("this is not the object that was recorded")
        self.header = bytes(header)
        self.object_id: bytes = object_id
        self.segment_size: int = segment_size
        self._aead = AESGCM(object_key)

    def ciphertext_offset(self, plaintext_offset: int) -> int:
        """Where in the object the ranged read for `plaintext_offset` must start.

        The start of the segment that holds the byte just before the offset, or at offset 0 the
        first segment: that segment always exists when the offset is within the plaintext, so
        its end-of-object flag can be checked even for a read that starts at the very end.
        """
        return HEADER_SIZE + self._first_segment(plaintext_offset) * (self.segment_size + TAG_BYTES)

    def decrypt(
        self, body: IO[bytes], *, offset: int = 0, length: int | None = None
    ) -> Iterator[bytes]:
        """Yield the plaintext from `offset` on (at most `length` bytes), one chunk per segment.

        `body` reads the object from `ciphertext_offset(offset)` on. Every segment is verified
        before any of its bytes is yielded, and the stream must end right after the last one, so
        a truncated or extended object raises IntegrityError instead of ending early or late.
        A chunk per segment is also where a caller re-checks consent while streaming. An offset
        past the end of the plaintext reads as nothing or raises IntegrityError (it cannot be
        told from a truncated object); callers answer such requests (HTTP 416) from the size they
        recorded, before calling this.
        """
        if offset < 0:
            raise ValueError("offset must not be negative")
        if length is not None and length < 0:
            raise ValueError("length must not be negative")
        return self._plaintext_chunks(body, offset, length)

    def _first_segment(self, plaintext_offset: int) -> int:
        if plaintext_offset < 0:
            raise ValueError("offset must not be negative")
        return max(plaintext_offset - 1, 0) // self.segment_size

    def _plaintext_chunks(
        self, body: IO[bytes], offset: int, length: int | None
    ) -> Iterator[bytes]:
        if length == 0:
            return
        segment_size = self.segment_size
        sealed_size = segment_size + TAG_BYTES
        index = self._first_segment(offset)
        skip = offset - index * segment_size
        remaining = length
        decrypt = self._aead.decrypt
        for piece, is_last in _pieces(body, sealed_size):
            with piece:
                if len(piece) < TAG_BYTES or index >= MAX_SEGMENTS:
                    raise IntegrityError("the object is truncated")
                try:
                    segment = decrypt(
                        _segment_nonce(index), piece, _segment_aad(self.header, index, is_last)
                    )
                except InvalidTag:
                    raise IntegrityError(
                        f"segment {index} of the object fails verification"
                    ) from None
            if skip or remaining is not None:
                end = None if remaining is None else skip + remaining
                segment = segment[skip:end]
                skip = 0
            if segment:
                yield segment
            if remaining is not None:
                remaining -= len(segment)
                if remaining == 0:
                    return
            index += 1


def decrypt_stream(
    ciphertext: IO[bytes],
    data_key: DataKey,
    *,
    expected_object_id: bytes | None,
    offset: int = 0,
    length: int | None = None,
) -> Iterator[bytes]:
    """Decrypt an object read from one stream positioned at its first byte.

    For offset 0 any stream will do. For a later offset a seekable stream (a local file) skips
    straight to the segment; any other stream is read and discarded up to it, so for S3 prefer
    `ObjectDecryptor` with a ranged read. Same guarantees as `ObjectDecryptor.decrypt`; a bad
    header raises IntegrityError here, a bad segment while iterating.
    """
    if offset < 0:
        raise ValueError("offset must not be negative")
    seekable = getattr(ciphertext, "seekable", None)
    start = ciphertext.tell() if seekable is not None and seekable() else None
    header = bytearray(HEADER_SIZE)
    decryptor = ObjectDecryptor(
        bytes(header[: _fill(ciphertext, memoryview(header))]),
        data_key,
        expected_object_id=expected_object_id,
    )
    to_skip = decryptor.ciphertext_offset(offset) - HEADER_SIZE
    if to_skip and start is not None:
        ciphertext.seek(start + HEADER_SIZE + to_skip)
    else:
        discard = memoryview(bytearray(min(to_skip, DEFAULT_SEGMENT_SIZE)))
        while to_skip:
            skipped = _fill(ciphertext, discard[: min(to_skip, len(discard))])
            if not skipped:
                raise IntegrityError("the object is truncated")
            to_skip -= skipped
    return decryptor.decrypt(ciphertext, offset=offset, length=length)


def _derive_object_key(data_key: DataKey, header_fields: bytes) -> tuple[bytes, bytes]:
    """The object key and the key commitment, both bound to every header field."""
    salt = header_fields[-SALT_BYTES:]
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_BYTES + COMMITMENT_BYTES,
        salt=salt,
        info=_OBJECT_KEY_INFO + header_fields,
    ).derive(data_key.key_bytes)
    return derived[:KEY_BYTES], derived[KEY_BYTES:]


def _segment_nonce(index: int) -> bytes:
    # Each object has its own key, so a counter is a nonce that cannot repeat under it.
    return index.to_bytes(NONCE_BYTES, "big")


def _segment_aad(header: bytes, index: int, is_last: bool) -> bytes:
    return header + _SEGMENT_POSITION.pack(index, is_last)


def _check_segment_size(segment_size: int, *, error: type[Exception]) -> None:
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise error(f"segment size must be from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE} bytes")


def _fill(stream: IO[bytes], buffer: memoryview) -> int:
    """Read into `buffer` until it is full or the stream ends; return how much was read.

    Streams may return short reads (pipes, sockets, S3 bodies) before their end; only an empty
    read means the end.
    """
    filled, size = 0, len(buffer)
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        while filled < size:
            count = readinto(buffer[filled:] if filled else buffer)
            if not count:
                break
            filled += count
        return filled
    while filled < size:
        data = stream.read(size - filled)
        count = len(data)
        if not count:
            break
        buffer[filled : filled + count] = data
        filled += count
    return filled


def _pieces(stream: IO[bytes], size: int) -> Iterator[tuple[memoryview, bool]]:
    """The stream, from where it is to its end, in pieces of `size` bytes, each with whether it
    is the last. Every piece is full but the last, which is empty only for an empty stream.

    One byte more than a piece is read ahead: whether it arrives tells if a piece is the last.
    A piece is a view that is only good until the next one is asked for (its memory is reused);
    the consumer may release it as soon as it is done with it.
    """
    if type(stream) is io.BytesIO:
        yield from _pieces_in_memory(stream, size)
        return
    buffer = memoryview(bytearray(size + 1))
    available = _fill(stream, buffer)
    rest = buffer[1:]
    while True:
        is_last = available <= size
        yield buffer[: available if is_last else size], is_last
        if is_last:
            return
        buffer[0] = buffer[size]
        available = 1 + _fill(stream, rest)


def _pieces_in_memory(stream: io.BytesIO, size: int) -> Iterator[tuple[memoryview, bool]]:
    """`_pieces` of an in-memory stream: views of the bytes it holds, not copies of them.

    `getvalue()` hands out the stream's own bytes object without copying it (a later write to
    the stream copies it first, as bytes are immutable), so nothing is exported from the stream
    and it stays writable. The stream's position moves past each piece as a read would move
    it. The bytes are taken once, and again where they may end, so that bytes appended in the
    meantime are read too (a stream whose buffer someone holds exported copies them on each
    `getvalue()`: twice, not once per piece).
    """
    held = stream.getvalue()
    while True:
        position = stream.tell()
        if position + size >= len(held):  # this may be the last piece: has the stream grown?
            held = stream.getvalue()
        available = max(len(held) - position, 0)
        is_last = available <= size
        length = available if is_last else size
        with memoryview(held) as view:
            piece = view[position : position + length]
        stream.seek(position + length)
        try:
            yield piece, is_last
        finally:
            piece.release()
        if is_last:
            return


# (nonce, plaintext, associated data) of one segment.
_Segment = tuple[bytes, memoryview, bytes]


class _EncryptingReader(io.RawIOBase):
    """The object as a raw binary stream, for `ObjectStore.put`: the header, then each segment
    encrypted straight into the reader's buffer when it fits there, else into one buffer that
    is reused for every segment, and copied out of it from there."""

    def __init__(self, encryptor: ObjectEncryptor, segments: Iterator[_Segment]) -> None:
        self._encrypt_into = encryptor._aead.encrypt_into
        self._segments = segments
        self._pending = memoryview(encryptor.header)  # produced, not yet read
        self._spare = memoryview(bytearray(encryptor.segment_size + TAG_BYTES))

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        target = memoryview(buffer).cast("B")
        if not target:
            return 0
        if not self._pending:
            segment = next(self._segments, None)
            if segment is None:
                return 0
            nonce, piece, aad = segment
            sealed_size = len(piece) + TAG_BYTES
            with piece:
                if sealed_size <= len(target):
                    return self._encrypt_into(nonce, piece, aad, target[:sealed_size])
                self._encrypt_into(nonce, piece, aad, self._spare[:sealed_size])
            self._pending = self._spare[:sealed_size]
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count
