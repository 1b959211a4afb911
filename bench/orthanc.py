"""A throwaway Orthanc for benchmarks: fresh storage, loopback clients only, stopped afterwards.

    from bench.orthanc import running_orthanc

    with running_orthanc(folder, allowed_scus={"BENCHSCU": "127.0.0.1"}) as orthanc:
        storescu -aet BENCHSCU -aec orthanc.aet 127.0.0.1 orthanc.dicom_port files...
        requests.post(orthanc.dicomweb_url + "studies", ...)
        orthanc.statistics()["CountInstances"]

Debian's packages: `orthanc` (/usr/sbin/Orthanc) and, for DICOMweb, `orthanc-dicomweb` (the
plugin under /usr/share/orthanc/plugins/). Standard library only, so any benchmark can use it.

What the configuration sets, and why; everything else is Orthanc's default. With Orthanc 1.10
the storage defaults are: files stored as received (`StorageCompression` false), each file
fsynced before the store is acknowledged (`SyncStorageArea` true), the built-in SQLite index
in `IndexDirectory`, an MD5 kept per attachment (`StoreMD5ForAttachments` true), no ingest
transcoding, `MaximumPduLength` 16384.

- Storage and index in `folder`, which the caller gives fresh: every start begins empty.
- Orthanc binds its HTTP and DICOM ports on all addresses, and cannot be told otherwise.
  So the HTTP API refuses every client but loopback (`RemoteAccessAllowed` false), and the
  DICOM port accepts stores only from the modalities named in `allowed_scus`, checked by AE
  title *and* host (`DicomAlwaysAllowStore` false, `DicomCheckModalityHost` true). No
  authentication, since only loopback can reach it (`AuthenticationEnabled` false).
- The called AE title is checked (`DicomCheckCalledAet` true), as the portal's listener does.
- Environment variable `TCP_NODELAY=1`: DCMTK, inside Orthanc, leaves Nagle's algorithm on
  for DIMSE without it, which costs a delayed ACK per PDU and makes Orthanc look slow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
PLUGIN_FOLDERS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
LOOPBACK = "127.0.0.1"
DEFAULT_AET = "ORTHANC"
DICOMWEB_ROOT = "/dicom-web/"
START_SECONDS = 30
STOP_SECONDS = 20
START_ATTEMPTS = 3


class OrthancError(RuntimeError):
    """Orthanc is missing, did not start, or answered something unexpected."""


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin of Debian's orthanc-dicomweb package."""
    for folder in PLUGIN_FOLDERS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            if candidate.is_file():
                return candidate.resolve()
    raise OrthancError(
        "the Orthanc DICOMweb plugin is missing: apt-get install orthanc-dicomweb "
        f"(looked in {', '.join(str(folder) for folder in PLUGIN_FOLDERS)})"
    )


def free_port() -> int:
    """A port that is free on every address, since Orthanc binds them all."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc that this process started."""

    folder: Path
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, ending in a slash: POST `dicomweb_url + "studies"` is STOW-RS."""
        return self.url + DICOMWEB_ROOT

    def get_json(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:  # noqa: S310
            return json.load(response)

    def system(self) -> dict[str, Any]:
        """`/system`: version, AE title, ports, database version."""
        return dict(self.get_json("/system"))

    def statistics(self) -> dict[str, Any]:
        """`/statistics`: counts of patients, studies, series and instances, disk size."""
        return dict(self.get_json("/statistics"))

    def plugin_version(self, plugin_id: str = "dicom-web") -> str:
        try:
            return str(self.get_json(f"/plugins/{plugin_id}").get("Version", "?"))
        except urllib.error.HTTPError:
            return "not loaded"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM to Orthanc's process group, SIGKILL if it is still there after a while."""
        stop_process_group(self.process, STOP_SECONDS)


def stop_process_group(process: subprocess.Popen[Any], grace_seconds: float) -> None:
    """Stop a child started with `start_new_session=True`, and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            continue
        break
    # The leader may be gone while others of its group linger.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def orthanc_configuration(
    folder: Path,
    *,
    aet: str,
    dicom_port: int,
    http_port: int,
    allowed_scus: Mapping[str, str],
    dicomweb: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration described in the module docstring; `extra` overrides any key."""
    storage = folder / "storage"
    config: dict[str, Any] = {
        "Name": "benchmark",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        # A modality entry names the SCU's AE title, its host and a port Orthanc would call
        # back (unused here).
        "DicomModalities": {
            calling.lower(): [calling, host, 104] for calling, host in allowed_scus.items()
        },
        "Plugins": [],
    }
    if dicomweb:
        config["Plugins"] = [str(find_dicomweb_plugin())]
        config["DicomWeb"] = {"Enable": True, "Root": DICOMWEB_ROOT}
    config.update(extra or {})
    return config


@contextmanager
def running_orthanc(
    folder: Path,
    *,
    aet: str = DEFAULT_AET,
    allowed_scus: Mapping[str, str] | None = None,
    dicomweb: bool = True,
    extra_config: Mapping[str, Any] | None = None,
    binary: Path = ORTHANC_BINARY,
) -> Iterator[Orthanc]:
    """Start Orthanc with storage in `folder` (created, must be new or empty), yield it, stop it.

    `allowed_scus` maps the AE titles that may C-STORE to the host each must come from
    (default: none). Ports are free ones chosen here; a start that loses a port race is
    retried with new ports.
    """
    if not binary.is_file():
        raise OrthancError(f"{binary} is missing: apt-get install orthanc")
    storage = folder / "storage"
    if storage.exists() and any(storage.iterdir()):
        raise OrthancError(f"{storage} is not empty; Orthanc must start fresh")
    folder.mkdir(parents=True, exist_ok=True)
    orthanc = _start(folder, aet, allowed_scus or {}, dicomweb, extra_config or {}, binary)
    try:
        yield orthanc
    finally:
        orthanc.stop()


def _start(
    folder: Path,
    aet: str,
    allowed_scus: Mapping[str, str],
    dicomweb: bool,
    extra: Mapping[str, Any],
    binary: Path,
) -> Orthanc:
    environment = {**os.environ, "TCP_NODELAY": "1"}
    last_failure = ""
    for attempt in range(START_ATTEMPTS):
        http_port, dicom_port = free_port(), free_port()
        config = orthanc_configuration(
            folder,
            aet=aet,
            dicom_port=dicom_port,
            http_port=http_port,
            allowed_scus=allowed_scus,
            dicomweb=dicomweb,
            extra=extra,
        )
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = folder / f"orthanc-{attempt}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(binary), str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=folder,
                env=environment,
                start_new_session=True,
            )
        orthanc = Orthanc(folder, aet, dicom_port, http_port, process, log)
        try:
            if _wait_until_ready(orthanc):
                return orthanc
        except BaseException:
            orthanc.stop()
            raise
        last_failure = orthanc.log_tail()
        orthanc.stop()
    raise OrthancError(f"Orthanc did not start ({START_ATTEMPTS} attempts):\n{last_failure}")


def _wait_until_ready(orthanc: Orthanc) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            return False
        try:
            system = orthanc.system()
        except (OSError, ValueError):
            time.sleep(0.2)
            continue
        return bool(system.get("DicomPort") == orthanc.dicom_port)
    return False
