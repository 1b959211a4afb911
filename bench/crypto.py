"""Encryption benchmark: the object format of sharing/crypto.py against raw AES-256-GCM.

One command, nothing to start first:

    .venv/bin/python bench/crypto.py

What happens, in order (bench/README.md explains how to read the result):

1. Throughput. 256 MiB of random bytes are encrypted and decrypted in the object format and,
   on the same buffers in the same run, with cryptography's AESGCM alone ("raw GCM": one
   `encrypt`/`decrypt` call per 1 MiB slice of the buffer, a counter nonce, no header, no key
   derivation, no stream). The format is fed two ways: from an in-memory stream (`BytesIO`,
   which it reads without copying) and from a file (what publishing reads from the spool;
   written and fsynced first, so it is read from the page cache), plus `reader()` from that
   file in 8 MiB reads, the way an S3 upload pulls the object. A third column feeds raw GCM
   the same way the format row is fed (read into a reused segment buffer), to tell the
   format's own cost from the copy a stream costs. Every variant runs once per round, in
   turn, so all see the same machine; MB/s (10^6 bytes of plaintext per second) are medians
   of 5 rounds, and each ratio is the median of the rounds' own ratios (the two variants of a
   round ran moments apart). The goal is format/raw >= 80%.
2. On CPUs with VAES, the same table again in a child process with OpenSSL's VAES and AVX-512
   code paths switched off (OPENSSL_ia32cap), i.e. the AES-NI + AVX2 speed of most servers
   bought before about 2020. A CPU without VAES runs those paths already: no second table.
3. Memory. A 2 GiB plaintext that is never in memory (one random MiB, repeated) is encrypted
   into a file with `encrypt()`, again with `reader()` in 8 MiB reads, and the file is then
   decrypted into /dev/null, each in a fresh Python process that reports its peak resident
   set (VmHWM). The same is done for a 256 MiB object: the peaks should match (flat, whatever
   the size) and stay under 150 MB.

The throughput part holds its buffers in memory (about 1 GB) and writes them to three files in
a temporary folder (about 800 MB); the memory part writes the 2 GiB ciphertext there (2 GiB
free needed). Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
MEMORY_OPERATIONS = {
    "encrypt": "encrypt into a file",
    "reader": f"reader(), {READER_READ_SIZE // MIB} MiB reads",
    "decrypt": "decrypt from the file",
}
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


@dataclass(frozen=True)
class Row:
    """One line of a throughput table: MB/s as medians over the rounds, and the ratios as
    medians of each round's own ratio (the two variants of a round ran seconds apart, so a
    slow spell of a shared machine moves both)."""

    label: str
    format_rate: float
    raw_rate: float
    same_read_rate: float
    format_vs_raw: float
    format_vs_same_read: float


def throughput(size: int, runs: int, folder: Path) -> list[Row]:
    """Every variant once per round, in turn, `runs` rounds; see the module docstring."""
    plaintext = os.urandom(size)
    data_key = DataKey.generate()
    segment = DEFAULT_SEGMENT_SIZE
    sealed = segment + TAG_BYTES
    raw_aead = AESGCM(data_key.key_bytes)
    plaintext_view = memoryview(plaintext)

    encryptor = ObjectEncryptor(data_key)
    format_ciphertext = b"".join(encryptor.encrypt(io.BytesIO(plaintext)))
    raw_ciphertext = b"".join(
        raw_aead.encrypt(index.to_bytes(12, "big"), plaintext_view[start : start + segment], None)
        for index, start in enumerate(range(0, size, segment))
    )
    raw_view = memoryview(raw_ciphertext)
    # The same bytes as files, for the rows that read a file as publishing reads the spool.
    # Just written, so they are in the page cache: a read is a copy, not a disk access.
    files = {"plaintext": plaintext, "format": format_ciphertext, "raw": raw_ciphertext}
    paths = {name: folder / f"{name}.bin" for name in files}
    for name, content in files.items():
        with paths[name].open("wb") as handle:
            handle.write(content)
            os.fsync(handle.fileno())  # written back now, not while the clock runs

    def format_encrypt(source: Callable[[], BinaryIO]) -> Callable[[], int]:
        def work() -> int:
            with source() as stream:
                chunks = ObjectEncryptor(data_key).encrypt(stream)
                return sum(len(chunk) for chunk in chunks)

        return work

    def reader_encrypt(source: Callable[[], BinaryIO]) -> Callable[[], int]:
        def work() -> int:
            with source() as stream:
                reader = ObjectEncryptor(data_key).reader(stream)
                total = 0
                while chunk := reader.read(READER_READ_SIZE):
                    total += len(chunk)
                return total

        return work

    def format_decrypt(source: Callable[[], BinaryIO]) -> Callable[[], int]:
        def work() -> int:
            with source() as stream:
                chunks = decrypt_stream(stream, data_key, expected_object_id=encryptor.object_id)
                return sum(len(chunk) for chunk in chunks)

        return work

    def raw_encrypt() -> int:
        total = 0
        for index, start in enumerate(range(0, size, segment)):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.encrypt(nonce, plaintext_view[start : start + segment], None))
        return total

    def raw_decrypt() -> int:
        total = 0
        for index, start in enumerate(range(0, len(raw_ciphertext), sealed)):
            nonce = index.to_bytes(12, "big")
            total += len(raw_aead.decrypt(nonce, raw_view[start : start + sealed], None))
        return total

    def raw_stream(operation: str, source: Callable[[], BinaryIO]) -> Callable[[], int]:
        # Raw GCM fed the way a stream feeds the format: read into a reused segment buffer.
        piece = segment if operation == "encrypt" else sealed
        call = raw_aead.encrypt if operation == "encrypt" else raw_aead.decrypt

        def work() -> int:
            buffer, total, index = bytearray(piece), 0, 0
            with source() as stream:
                while count := stream.readinto(buffer):
                    total += len(call(index.to_bytes(12, "big"), memoryview(buffer)[:count], None))
                    index += 1
            return total

        return work

    def memory(name: str) -> Callable[[], BinaryIO]:
        return lambda: io.BytesIO(files[name])

    def file(name: str) -> Callable[[], BinaryIO]:
        return lambda: paths[name].open("rb")

    expected_format, expected_raw = ciphertext_size(size), len(raw_ciphertext)
    variants: dict[str, tuple[Callable[[], int], int]] = {
        "raw encrypt": (raw_encrypt, expected_raw),
        "raw decrypt": (raw_decrypt, size),
    }
    for where, source in (("memory", memory), ("file", file)):
        variants |= {
            f"format encrypt {where}": (format_encrypt(source("plaintext")), expected_format),
            f"same read encrypt {where}": (
                raw_stream("encrypt", source("plaintext")),
                expected_raw,
            ),
            f"format decrypt {where}": (format_decrypt(source("format")), size),
            f"same read decrypt {where}": (raw_stream("decrypt", source("raw")), size),
        }
    variants["format reader file"] = (reader_encrypt(file("plaintext")), expected_format)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, (work, expected) in variants.items():
            timings[name].append(timed(work, expected))

    def row(label: str, format_name: str, operation: str, where: str) -> Row:
        format_times, raw_times = timings[format_name], timings[f"raw {operation}"]
        same_read_times = timings[f"same read {operation} {where}"]
        return Row(
            label=label,
            format_rate=size / MB / statistics.median(format_times),
            raw_rate=size / MB / statistics.median(raw_times),
            same_read_rate=size / MB / statistics.median(same_read_times),
            format_vs_raw=statistics.median(
                raw / ours for raw, ours in zip(raw_times, format_times, strict=True)
            ),
            format_vs_same_read=statistics.median(
                same / ours for same, ours in zip(same_read_times, format_times, strict=True)
            ),
        )

    for path in paths.values():
        path.unlink()
    reads = f"{READER_READ_SIZE // MIB} MiB reads"
    return [
        row("encrypt, in-memory stream", "format encrypt memory", "encrypt", "memory"),
        row("decrypt, in-memory stream", "format decrypt memory", "decrypt", "memory"),
        row("encrypt, from a file", "format encrypt file", "encrypt", "file"),
        row("decrypt, from a file", "format decrypt file", "decrypt", "file"),
        row(f"reader() from a file, {reads}", "format reader file", "encrypt", "file"),
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
    elif operation == "reader":  # the way ObjectStore.put is fed: boto3 reads 8 MiB at a time
        reader = ObjectEncryptor(data_key).reader(RepeatingSource(size))
        with path.open("wb") as sink:
            while chunk := reader.read(READER_READ_SIZE):
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
            for operation in MEMORY_OPERATIONS:  # decrypt reads what reader() wrote
                results[(operation, size)] = run_child(operation, size, path)
            path.unlink()
    return results


def size_label(size: int) -> str:
    return f"{size // 1024**3} GiB" if size % 1024**3 == 0 else f"{size // MIB} MiB"


def cpu_has_vaes() -> bool:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return "vaes" in line.split()
    return False


def throughput_without_vaes(size: int, runs: int) -> list[Row]:
    command = [sys.executable, __file__, "--throughput-child", str(size), str(runs)]
    environment = {**os.environ, "OPENSSL_ia32cap": WITHOUT_VAES}
    finished = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if finished.returncode != 0:
        raise SystemExit(f"bench: the throughput child failed:\n{finished.stderr}")
    return [Row(*row) for row in json.loads(finished.stdout)]


def print_throughput(title: str, rows: list[Row]) -> None:
    print(title)
    print()
    print(
        f"  {'':34} {'format':>7} {'raw GCM':>8} {'format/raw':>11}  {'goal >= 80%':11}"
        f" {'raw GCM + same read':>20} {'format/that':>12}"
    )
    for row in rows:
        verdict = "met" if row.format_vs_raw >= THROUGHPUT_GOAL else "MISSED"
        print(
            f"  {row.label:34} {row.format_rate:7.0f} {row.raw_rate:8.0f}"
            f" {row.format_vs_raw:11.1%}  {verdict:11}"
            f" {row.same_read_rate:20.0f} {row.format_vs_same_read:12.1%}"
        )
    print()


def print_memory(rss: dict[tuple[str, int], dict[str, float]], stream_sizes: list[int]) -> None:
    print("Peak RSS of a process streaming one object (VmHWM; MB = 10^6 bytes)")
    print()
    labels = "".join(f" {size_label(size):>14}" for size in stream_sizes)
    print(f"  {'':26}{labels}   goal < {RSS_GOAL_MB} MB, flat")
    for operation in MEMORY_OPERATIONS:
        peaks = [rss[(operation, size)]["peak_kib"] * 1024 / MB for size in stream_sizes]
        cells = "".join(f" {peak:11.1f} MB" for peak in peaks)
        flat = max(peaks) - min(peaks) < 5
        verdict = "met" if max(peaks) < RSS_GOAL_MB and flat else "MISSED"
        print(f"  {MEMORY_OPERATIONS[operation]:26}{cells}   {verdict}")
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
    parser.add_argument("--runs", type=int, default=5, help="throughput rounds (5)")
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
        size, runs = args.throughput_child
        with tempfile.TemporaryDirectory(prefix="bench-crypto-") as folder:
            rows = throughput(size, runs, Path(folder))
        print(json.dumps([dataclasses.astuple(row) for row in rows]))
        return 0
    load_before = os.getloadavg()[0]
    size = args.size_mib * MIB
    stream_sizes = [256 * MIB, args.stream_gib * 1024**3]
    print(f"bench: throughput, {args.runs} rounds of {size_label(size)}...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-crypto-") as folder:
        rates = throughput(size, args.runs, Path(folder))
    has_vaes = cpu_has_vaes()
    rates_without_vaes = []
    if has_vaes:
        print("bench: the same without VAES and AVX-512...", file=sys.stderr)
        rates_without_vaes = throughput_without_vaes(size, args.runs)
    print("bench: peak RSS while streaming...", file=sys.stderr)
    rss = memory(stream_sizes)
    segments = f"{size_label(size)} in {DEFAULT_SEGMENT_SIZE // MIB} MiB segments"
    print()
    print_throughput(
        f"sharing/crypto.py, {segments}: MB/s of plaintext, median of {args.runs} rounds", rates
    )
    if has_vaes:
        print_throughput("The same with OpenSSL's VAES and AVX-512 paths off", rates_without_vaes)
    else:
        print("(This CPU has no VAES: the AES-NI + AVX2 paths above are what it has.)")
        print()
    print_memory(rss, stream_sizes)
    print_machine(load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
