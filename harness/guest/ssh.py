"""SSH into the guest with paramiko: execute / succeed / wait_until_succeeds.

One verb per meaning (as in the NixOS test driver): `execute` returns
(status, output) and never raises for a non-zero status; `succeed` raises
GuestCommandFailed carrying the output; `wait_until_succeeds` polls to a
deadline.  Every command is logged to the test's `ssh.log`.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, GuestCommandFailed, HarnessError
from harness.guest.hopsocket import HopSocket


class SshKey:
    """A per-run ed25519 key pair."""

    def __init__(self) -> None:
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
        self.private_pem = pem
        self.paramiko_key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
        # Fixed-length line: the fw_cfg file the guest reads keeps its size
        # across a snapshot restore.
        self.authorized_line = public.decode() + " pci-harness\n"


# paramiko logs its transport thread's failures (banner timeouts of a dead
# guest) as tracebacks on stderr; the harness reports them as SshUnavailable.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

ATTEMPT_SECONDS = 5.0  # one login attempt; a live guest answers in well under a second


def _nodelay_connection(port: int, timeout: float) -> socket.socket:
    """A TCP connection to the SSH forward with Nagle off.

    paramiko leaves Nagle on, and slirp's end of the forward delays its ACKs:
    every SSH exchange that writes two packets in a row (channel open + exec,
    the key exchange) then stalls ~40 ms.  Measured under TCG: a login
    0.16 -> 0.07 s, a command 0.08 -> 0.02 s.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class SshUnavailable(HarnessError):
    """SSH to the guest could not be established."""


class GuestShell:
    """An SSH session to the guest: a login through the host forward on `port`
    (`connect`), or a session over a given connection (`attach`, port None)."""

    def __init__(self, port: int | None, key: SshKey, log_path: Path):
        self.port = port
        self._key = key
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives with the shell
        self._client: paramiko.SSHClient | None = None
        self._last_channel: paramiko.Channel | None = None
        self._session: paramiko.Transport | None = None  # attach(): a session over a given socket
        self._hop_socket: HopSocket | None = None         # ... when that socket is a HopSocket

    def attach(self, sock: Any, deadline: Deadline) -> None:
        """Log in over an already connected byte stream (one attempt, to `deadline`).

        `sock` is anything socket-like paramiko accepts; the migrating session
        passes a HopSocket (harness/guest/hopsocket.py).
        """
        transport = paramiko.Transport(sock)
        transport.auth_timeout = max(deadline.remaining(), 0.1)  # the login keeps the deadline too
        try:
            transport.start_client(timeout=max(deadline.remaining(), 0.1))
            transport.auth_publickey("root", self._key.paramiko_key)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            when = f"{deadline.describe()}: " if deadline.expired() else ""
            raise SshUnavailable(f"{when}cannot log in over the guest's migrating SSH "
                                 f"connection ({exc!r})") from None
        self._session = transport
        self._hop_socket = sock if isinstance(sock, HopSocket) else None

    @property
    def migrates(self) -> bool:
        """True for a session over a HopSocket: it can follow the guest to another QEMU."""
        return self._hop_socket is not None

    def follow(self, sock: socket.socket, log_path: Path, name: str = "next") -> None:
        """The guest now runs in another QEMU (`name`): talk through its connection."""
        if self._hop_socket is None:
            raise HarnessError("this SSH session cannot follow a migration")
        self._hop_socket.follow(sock, name)
        self.relog(log_path)
        # What the previous QEMU's connection carried, for an ssh-dead post-mortem.
        self._log.write(f"# session moved to {name}: {self._hop_socket.ledger(1, current=False)}\n")

    def ledger(self) -> str | None:
        """Bytes the migrating session carried over its last connections (None for a
        session that does not migrate)."""
        return self._hop_socket.ledger() if self._hop_socket is not None else None

    def ping(self, deadline: Deadline) -> float:
        """One request/answer round trip with sshd, no command run: open a channel
        and close it.  Returns the seconds it took."""
        started = time.monotonic()
        transport = self._transport()
        if transport is None or not transport.is_active():
            raise SshUnavailable("SSH connection to the guest is gone (ping)")
        try:
            channel = transport.open_session(timeout=max(deadline.remaining(), 0.1))
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            when = f"{deadline.describe()}: " if deadline.expired() else ""
            raise SshUnavailable(f"{when}the guest's sshd does not answer "
                                 f"({exc or type(exc).__name__})") from None
        seconds = time.monotonic() - started
        self._log.write(f"# ping: sshd answered in {seconds:.3f} s\n")
        return seconds

    def settle(self, deadline: Deadline) -> bool:
        """Until nothing the harness sent is on its way: the last command's channel
        is closed both ways, and (a migrating session) QEMU has read every byte.
        False when the deadline came first.

        sshd sends its CLOSE after the exit status, and paramiko answers it from
        its own thread, so right after `execute` returns the harness may still be
        sending; `channel.closed` is set before that answer is written, not after
        (a sweep lost it at hop 2 under load: the session moved on 0.44 s after
        its last send to a source already stopped).  A ping's round trip comes
        after it in the stream, and the ping's own CLOSE is written by this
        thread; then the socket's send queue says when QEMU read it."""
        channel = self._last_channel
        if channel is not None and deadline.poll(
                lambda: True if channel.closed else None, interval=0.005) is None:
            return False
        hop_socket = self._hop_socket
        if hop_socket is None:
            return True
        try:
            self.ping(deadline)
        except SshUnavailable:
            return False
        return deadline.poll(lambda: True if hop_socket.unsent() == 0 else None,
                             interval=0.005) is not None

    def relog(self, log_path: Path) -> None:
        """Log later commands to `log_path` (the session moved to another process)."""
        self._log.close()
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives with the shell

    def _transport(self) -> paramiko.Transport | None:
        if self._session is not None:
            return self._session
        return self._client.get_transport() if self._client is not None else None

    def connect(self, deadline: Deadline) -> None:
        """Log in, retrying until `deadline`.

        slirp accepts the TCP connection even when the guest is dead, so a
        single attempt can hang in the banner or key exchange: every attempt
        is capped at ATTEMPT_SECONDS and the loop keeps the overall deadline.
        """
        if self.port is None:
            raise HarnessError("this shell has no host forward to log in through")
        last: Exception | None = None
        while not deadline.expired():
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            sock: socket.socket | None = None
            attempt = min(max(deadline.remaining(), 0.5), ATTEMPT_SECONDS)
            try:
                sock = _nodelay_connection(self.port, attempt)
                client.connect("127.0.0.1", port=self.port, username="root", sock=sock,
                               pkey=self._key.paramiko_key, allow_agent=False,
                               look_for_keys=False, timeout=attempt, banner_timeout=attempt,
                               auth_timeout=attempt, channel_timeout=attempt)
                self._client = client
                return
            except (paramiko.SSHException, OSError, EOFError) as exc:
                last = exc
                client.close()
                if sock is not None:
                    sock.close()
                time.sleep(0.05)
        raise SshUnavailable(f"{deadline.describe()}: cannot SSH to the guest on "
                             f"127.0.0.1:{self.port} ({last!r})")

    def execute(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run `command`; return (exit status, stdout+stderr)."""
        if self._client is None and self._session is None:
            raise SshUnavailable("SSH is not connected")
        deadline = Deadline(timeout, f"guest command {command!r}")
        started = time.monotonic()
        transport = self._transport()
        if transport is None or not transport.is_active():
            raise SshUnavailable(f"SSH connection to the guest is gone (running {command!r})")
        chunks: list[bytes] = []
        try:
            channel = transport.open_session(timeout=deadline.remaining())
            channel.set_combine_stderr(True)
            channel.settimeout(0.2)
            _exec_request(channel, command, deadline)
            while True:
                try:
                    data = channel.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                except TimeoutError:
                    if deadline.expired():
                        channel.close()
                        output = b"".join(chunks).decode(errors="replace")
                        self._record(command, None, output, time.monotonic() - started)
                        raise DeadlineExceeded(deadline.describe(), tail=output[-2000:]) from None
            # The output can end (EOF) before the exit status arrives, and a guest
            # that freezes in between would never send it: wait to the deadline only.
            if not channel.status_event.wait(max(deadline.remaining(), 0.1)):
                channel.close()
                output = b"".join(chunks).decode(errors="replace")
                self._record(command, None, output, time.monotonic() - started)
                raise DeadlineExceeded(f"{deadline.describe()}: the output ended but no exit "
                                       "status came", tail=output[-2000:])
            status = channel.recv_exit_status()
            self._last_channel = channel
        except (paramiko.SSHException, OSError, EOFError) as exc:
            # A dead or hung guest: one named error, never a paramiko traceback.
            output = b"".join(chunks).decode(errors="replace")
            self._record(command, None, output, time.monotonic() - started)
            raise SshUnavailable(f"SSH to the guest failed while running {command!r}: {exc}",
                                 tail=output[-2000:] or None) from None
        output = b"".join(chunks).decode(errors="replace")
        self._record(command, status, output, time.monotonic() - started)
        return status, output

    def succeed(self, command: str, timeout: float = 60.0) -> str:
        """Run `command`; raise GuestCommandFailed (with output) unless it exits 0."""
        status, output = self.execute(command, timeout)
        if status != 0:
            raise GuestCommandFailed(command, status, output)
        return output

    def wait_until_succeeds(self, command: str, timeout: float = 60.0) -> str:
        deadline = Deadline(timeout, f"waiting for {command!r} to succeed")
        status, output = -1, ""
        while not deadline.expired():
            status, output = self.execute(command, timeout=max(deadline.remaining(), 1))
            if status == 0:
                return output
            time.sleep(0.1)
        raise DeadlineExceeded(f"{deadline.describe()} (last status {status})", tail=output)

    def _record(self, command: str, status: int | None, output: str, seconds: float) -> None:
        shown = output if len(output) < 4000 else output[:2000] + "\n[...]\n" + output[-2000:]
        self._log.write(f"$ {command}\n{shown}{'' if shown.endswith(chr(10)) or not shown else chr(10)}"
                        f"# status {status if status is not None else 'TIMEOUT'} "
                        f"in {seconds:.3f} s\n")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._session is not None:
            self._session.close()
            self._session = None
        self._log.close()


#: dropbear refuses a command longer than this (MAX_CMD_LEN), and then never
#: answers the request: paramiko's exec_command would wait for ever.
MAX_COMMAND_BYTES = 9000


def _exec_request(channel: paramiko.Channel, command: str, deadline: Deadline) -> None:
    """paramiko's `exec_command` under a deadline: its own wait for the server's
    answer has none, so a guest that stops answering (or a refused request)
    would hang the caller for good, out of reach of SIGINT.  The request is
    sent from a helper thread; past the deadline the channel is closed."""
    if len(command.encode()) > MAX_COMMAND_BYTES:
        raise HarnessError(f"guest command of {len(command.encode())} bytes: dropbear takes "
                           f"at most {MAX_COMMAND_BYTES}", tail=command[:200])
    done = threading.Event()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            channel.exec_command(command)
        except BaseException as exc:  # noqa: BLE001 -- re-raised by the caller
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=send, name="ssh-exec", daemon=True).start()
    while not done.wait(0.2):
        if deadline.expired():
            channel.close()
            raise DeadlineExceeded(f"{deadline.describe()}: the guest never answered the "
                                   "request to run the command")
    if errors:
        raise errors[0]
