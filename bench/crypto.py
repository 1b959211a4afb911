"""Encryption benchmark: the object format of sharing/crypto.py against raw AES-256-GCM.

One command, nothing to start first:

    .venv/bin/python bench/crypto.py

What happens, in order (bench/README.md explains how to read the result):

1. Throughput. 256 MiB of random bytes are encrypted and decrypted in the object format
   (`ObjectEncryptor.encrypt` from an in-memory stream, `decrypt_stream` back) and, on the same
   buffers in the same run, with cryptography's AESGCM alone: one call per 1 MiB segment, a
   counter nonce, no header, no key derivation, no stream. Every variant runs once per round,
   in turn, so all see the same machine; the table gives the median of 3 rounds in MB/s (10^6
   bytes of plaintext per second) and the ratio, whose goal is at least 80%. A third column
   feeds raw GCM the way the format is fed (a stream read into a segment buffer), to separate
   the format's own cost from the copy any stream costs. One more row encrypts through
   `ObjectEncryptor.reader()` in 8 MiB reads, the way an S3 upload pulls it.
2. The same table again in a child process with OpenSSL's VAES and AVX-512 code paths switched
   off (OPENSSL_ia32cap), i.e. the AES-NI + AVX2 speed of most servers bought before about 2020.
3. Memory. A 2 GiB plaintext that is never in memory (one random MiB, repeated) is encrypted
   into a file, then that file is decrypted into /dev/null, each in a fresh Python process that
   reports its peak resident set (VmHWM). The same is done for a 256 MiB object: the peaks
   should match (flat, whatever the size) and stay under 150 MB.

The throughput part holds its buffers in memory (about 1 GB); the memory part writes the 2 GiB
ciphertext to a temporary folder (2 GiB free needed) and removes it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python bench/crypto.py`
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.backends.openssl.backend import backend  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from sharing.crypto import (  # noqa: E402
    DEFAULT_SEGMENT_SIZE,
    TAG_BYTES,
    DataKey,
    ObjectEncryptor,
    ciphertext_size,
    decrypt_stream,
)

MIB = 1024 * 1024
MB = 1_000_000
THROUGHPUT_GOAL = 0.80
RSS_GOAL_MB = 150
READER_READ_SIZE = 8 * MIB  # what boto3's upload_fileobj asks for at a time
# OPENSSL_ia32cap(3): the word after the colon masks CPUID(7).EBX (low half) and .ECX (high
# half); this clears AVX512F (EBX bit 16), VAES (ECX bit 9) and VPCLMULQDQ (ECX bit 10).
WITHOUT_VAES = ":~0x60000010000"


def timed(work: Callable[[], int], expected_bytes: int) -> float:
    started = time.perf_counter()
    produced = work()
    elapsed = time.perf_counter() - started
    if produced != expected_bytes:
        raise SystemExit(f"bench: produced {produced} bytes, expected {expected_bytes}")
    return elapsed


Rates = list[tuple[str, float, float | None, float | None]]


def throughput(size: int, runs: int) -> Rates:
    """(operation, format, raw GCM, raw GCM reading a stream) in MB/s: medians of `runs`."""
    plaintext = os.urandom(size)
    data_key = DataKey.generate()
    segment = DEFAULT_SEGMENT_SIZE
    sealed = segment + TAG_BYTES
    raw_aead = AESGCM(data_key.key_bytes)
    plaintext_view = memoryview(plaintext)

    def format_encrypt() -> int:
        encryptor = ObjectEncryptor(data_key)
        return sum(len(chunk) for chunk in encryptor.encrypt(io.BytesIO(plaintext)))

    def reader_encrypt() -> int:
        reader = ObjectEncryptor(data_key).reader(io.BytesIO(plaintext))
        total = 0
        while chunk := reader.read(READER_READ_SIZE):
            total += len(chunk)
        return total

    def raw_encrypt() -> int:
        total = 0
        for index, start in enumerate(range(0, size, segment)):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.encrypt(nonce, plaintext_view[start : start + segment], None))
        return total

    def raw_stream_encrypt() -> int:
        # Raw GCM fed the way the format is fed: a stream read into a reused segment buffer.
        stream, buffer, total, index = io.BytesIO(plaintext), bytearray(segment), 0, 0
        while count := stream.readinto(buffer):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.encrypt(nonce, memoryview(buffer)[:count], None))
            index += 1
        return total

    encryptor = ObjectEncryptor(data_key)
    format_ciphertext = b"".join(encryptor.encrypt(io.BytesIO(plaintext)))
    raw_ciphertext = b"".join(
        raw_aead.encrypt(index.to_bytes(12, "big"), plaintext_view[start : start + segment], None)
        for index, start in enumerate(range(0, size, segment))
    )
    raw_view = memoryview(raw_ciphertext)

    def format_decrypt() -> int:
        stream = io.BytesIO(format_ciphertext)
        chunks = decrypt_stream(stream, data_key, expected_object_id=encryptor.object_id)
        return sum(len(chunk) for chunk in chunks)

    def raw_decrypt() -> int:
        total = 0
        for index, start in enumerate(range(0, len(raw_ciphertext), sealed)):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.decrypt(nonce, raw_view[start : start + sealed], None))
        return total

    def raw_stream_decrypt() -> int:
        stream, buffer, total, index = io.BytesIO(raw_ciphertext), bytearray(sealed), 0, 0
        while count := stream.readinto(buffer):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.decrypt(nonce, memoryview(buffer)[:count], None))
            index += 1
        return total

    expected_format = ciphertext_size(size)
    expected_raw = len(raw_ciphertext)
    timings: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, work, expected in (
            ("format encrypt", format_encrypt, expected_format),
            ("raw encrypt", raw_encrypt, expected_raw),
            ("raw stream encrypt", raw_stream_encrypt, expected_raw),
            ("format decrypt", format_decrypt, size),
            ("raw decrypt", raw_decrypt, size),
            ("raw stream decrypt", raw_stream_decrypt, size),
            ("reader encrypt", reader_encrypt, expected_format),
        ):
            timings.setdefault(name, []).append(timed(work, expected))

    def rate(name: str) -> float:
        return size / MB / statistics.median(timings[name])

    reader_label = f"encrypt via reader(), {READER_READ_SIZE // MIB} MiB reads"
    return [
        ("encrypt", rate("format encrypt"), rate("raw encrypt"), rate("raw stream encrypt")),
        ("decrypt", rate("format decrypt"), rate("raw decrypt"), rate("raw stream decrypt")),
        (reader_label, rate("reader encrypt"), None, None),
    ]


class RepeatingSource(io.RawIOBase):
    """`size` bytes of one random MiB over and over: a large plaintext never held in memory."""

    def __init__(self, size: int) -> None:
        self._block = os.urandom(MIB)
        self._remaining = size
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        target = memoryview(buffer).cast("B")
        count = min(len(target), self._remaining)
        filled = 0
        while filled < count:
            start = self._position % MIB
            piece = min(count - filled, MIB - start)
            target[filled : filled + piece] = self._block[start : start + piece]
            filled += piece
            self._position += piece
        self._remaining -= count
        return count


def peak_rss_kib() -> int:
    """The process's peak resident set so far (VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(operation: str, size: int, path: Path) -> None:
    """Run in a fresh process: stream one object through, then print the peak RSS as JSON."""
    data_key = DataKey(bytes(range(32)))  # the parent's two children must share it
    before = peak_rss_kib()
    started = time.perf_counter()
    if operation == "encrypt":
        with path.open("wb") as sink:
            for chunk in ObjectEncryptor(data_key).encrypt(RepeatingSource(size)):
                sink.write(chunk)
        produced = path.stat().st_size
        expected = ciphertext_size(size)
    else:
        produced = 0
        with path.open("rb") as source, open(os.devnull, "wb") as sink:
            for chunk in decrypt_stream(source, data_key, expected_object_id=None):
                sink.write(chunk)
                produced += len(chunk)
        expected = size
    if produced != expected:
        raise SystemExit(f"bench: {operation} produced {produced} bytes, expected {expected}")
    print(
        json.dumps(
            {
                "peak_kib": peak_rss_kib(),
                "before_kib": before,
                "seconds": time.perf_counter() - started,
            }
        )
    )


def run_child(operation: str, size: int, path: Path) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", operation, str(size), str(path)]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"bench: the {operation} child failed:\n{finished.stderr}")
    result: dict[str, float] = json.loads(finished.stdout)
    return result


def memory(sizes: list[int]) -> dict[tuple[str, int], dict[str, float]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as folder:
        for size in sizes:
            path = Path(folder) / f"object-{size}"
            for operation in ("encrypt", "decrypt"):
                results[(operation, size)] = run_child(operation, size, path)
            path.unlink()
    return results


def size_label(size: int) -> str:
    return f"{size // 1024**3} GiB" if size % 1024**3 == 0 else f"{size // MIB} MiB"


def throughput_without_vaes(size: int, runs: int) -> Rates:
    command = [sys.executable, __file__, "--throughput-child", str(size), str(runs)]
    environment = {**os.environ, "OPENSSL_ia32cap": WITHOUT_VAES}
    finished = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if finished.returncode != 0:
        raise SystemExit(f"bench: the throughput child failed:\n{finished.stderr}")
    rows = json.loads(finished.stdout)
    return [(operation, rate, raw, raw_stream) for operation, rate, raw, raw_stream in rows]


def print_throughput(title: str, rates: Rates) -> None:
    print(title)
    print()
    print(
        f"  {'':34} {'format':>7} {'raw GCM':>8} {'format/raw':>11}  {'goal >= 80%':11}"
        f" {'raw GCM + stream read':>22} {'format/that':>12}"
    )
    for operation, format_rate, raw_rate, raw_stream_rate in rates:
        if raw_rate is None or raw_stream_rate is None:
            print(f"  {operation:34} {format_rate:7.0f}")
            continue
        ratio = format_rate / raw_rate
        verdict = "met" if ratio >= THROUGHPUT_GOAL else "MISSED"
        print(
            f"  {operation:34} {format_rate:7.0f} {raw_rate:8.0f} {ratio:11.1%}  {verdict:11}"
            f" {raw_stream_rate:22.0f} {format_rate / raw_stream_rate:12.1%}"
        )
    print()


def print_memory(rss: dict[tuple[str, int], dict[str, float]], stream_sizes: list[int]) -> None:
    print("Peak RSS of a process streaming one object (VmHWM; MB = 10^6 bytes)")
    print()
    labels = "".join(f" {size_label(size):>14}" for size in stream_sizes)
    print(f"  {'':10}{labels}   goal < {RSS_GOAL_MB} MB, flat")
    for operation in ("encrypt", "decrypt"):
        peaks = [rss[(operation, size)]["peak_kib"] * 1024 / MB for size in stream_sizes]
        cells = "".join(f" {peak:11.1f} MB" for peak in peaks)
        flat = max(peaks) - min(peaks) < 5
        verdict = "met" if max(peaks) < RSS_GOAL_MB and flat else "MISSED"
        print(f"  {operation:10}{cells}   {verdict}")
    startup = min(result["before_kib"] for result in rss.values()) * 1024 / MB
    print(f"  (a process that has only imported the module: {startup:.1f} MB)")
    largest = stream_sizes[-1]
    encrypt_rate = largest / MB / rss[("encrypt", largest)]["seconds"]
    decrypt_rate = largest / MB / rss[("decrypt", largest)]["seconds"]
    print(
        f"  ({size_label(largest)}: encrypt {encrypt_rate:.0f} MB/s into a file, "
        f"decrypt {decrypt_rate:.0f} MB/s from it)"
    )
    print()


def print_machine(load_before: float) -> None:
    print("Machine:")
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    print(f"  cpu          {cpu}, {os.cpu_count()} CPUs")
    print(f"  load         {load_before:.2f} before the first run (1-minute average)")
    print(f"  python       {platform.python_version()}")
    print(f"  cryptography {importlib.metadata.version('cryptography')}")
    print(f"  openssl      {backend.openssl_version_text()}")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="throughput data (256)")
    parser.add_argument("--runs", type=int, default=3, help="throughput rounds (3)")
    parser.add_argument("--stream-gib", type=int, default=2, help="memory test object (2)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--throughput-child", nargs=2, type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    if args.child:
        operation, size, path = args.child
        child(operation, int(size), Path(path))
        return 0
    if args.throughput_child:
        print(json.dumps(throughput(*args.throughput_child)))
        return 0
    load_before = os.getloadavg()[0]
    size = args.size_mib * MIB
    stream_sizes = [256 * MIB, args.stream_gib * 1024**3]
    print(f"bench: throughput, {args.runs} rounds of {size_label(size)}...", file=sys.stderr)
    rates = throughput(size, args.runs)
    print("bench: the same without VAES and AVX-512...", file=sys.stderr)
    rates_without_vaes = throughput_without_vaes(size, args.runs)
    print("bench: peak RSS while streaming...", file=sys.stderr)
    rss = memory(stream_sizes)
    segments = f"{size_label(size)} in {DEFAULT_SEGMENT_SIZE // MIB} MiB segments"
    print()
    print_throughput(
        f"sharing/crypto.py, {segments}: MB/s of plaintext, median of {args.runs} rounds", rates
    )
    print_throughput("The same with OpenSSL's VAES and AVX-512 paths off", rates_without_vaes)
    print_memory(rss, stream_sizes)
    print_machine(load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
