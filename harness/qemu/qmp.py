"""QMP client over `qemu.qmp`, with a transcript and event waits that keep the rest.

Every command, reply and event goes to `qmp.log` as one JSON line, so a failed
test leaves a readable record of what was said to QEMU.  Events are buffered
here: `wait_event` removes only the event it matched and keeps every other
one for a later wait (subscribe before trigger: call the trigger first, then
wait; nothing arriving in between is lost).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from harness.deadline import Deadline
from harness.errors import DeadlineExceeded, HarnessError, QemuRefused

Event = dict[str, Any]


class QmpCommandError(QemuRefused):
    """QEMU answered a command with an error; `desc` is QEMU's own text."""

    def __init__(self, command: str, desc: str, error_class: str):
        super().__init__(f"QEMU refused {command}: {desc}")
        self.command = command
        self.desc = desc
        self.error_class = error_class


class QmpTimeout(DeadlineExceeded):
    """QEMU's monitor did not answer a command in time: QEMU, not the guest, is stuck."""


class QmpConnectionLost(HarnessError):
    """The QMP connection broke (QEMU most likely died)."""


class Qmp:
    """A negotiated QMP session on an already connected socket."""

    def __init__(self, sock: socket.socket, transcript: Path, name: str = "qemu"):
        self.name = name
        self._log = open(transcript, "a", buffering=1)  # noqa: SIM115 - lives with the session
        self._monitor = QEMUMonitorProtocol(sock, nickname=name)
        self._events: list[Event] = []
        self._closed = False
        greeting = self._monitor.connect(negotiate=True)
        self._record("<", greeting)

    def _record(self, direction: str, message: Any) -> None:
        line = {"t": round(time.time(), 4), "dir": direction, "qemu": self.name, "msg": message}
        self._log.write(json.dumps(line, default=str) + "\n")

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None,
                timeout: float = 60.0) -> Any:
        """Run one QMP command and return its `return` value; QEMU's error raises."""
        args = dict(arguments or {})
        self._record(">", {"execute": command, "arguments": args})
        self._monitor.settimeout(timeout)
        try:
            result = self._monitor.cmd(command, **args)
        except ExecuteError as exc:
            self._record("<", {"error": {"class": exc.error_class, "desc": str(exc)}})
            raise QmpCommandError(command, str(exc), exc.error_class) from None
        except TimeoutError:
            raise QmpTimeout(f"QMP {command} got no answer within {timeout:.0f} s") from None
        except Exception as exc:  # noqa: BLE001 - qemu.qmp raises several types on a dead peer
            self._record("!", repr(exc))
            raise QmpConnectionLost(f"QMP connection lost during {command}: {exc!r}") from None
        self._record("<", {"return": result})
        return result

    def hmp(self, command_line: str) -> str:
        """A human monitor command (for `info usernet` and friends)."""
        return str(self.execute("human-monitor-command", {"command-line": command_line}))

    def _pump(self, wait: float) -> None:
        try:
            new = self._monitor.get_events(wait=wait if wait > 0 else False)
        except TimeoutError:
            new = []
        for event in new:
            self._record("<", event)
        self._events.extend(new)

    def wait_event(self, name: str, deadline: Deadline,
                   match: Callable[[Event], bool] | None = None) -> Event:
        """Wait for event `name` (optionally satisfying `match`) and remove it."""
        while True:
            for i, event in enumerate(self._events):
                if event.get("event") == name and (match is None or match(event)):
                    return self._events.pop(i)
            if deadline.expired():
                seen = ", ".join(e.get("event", "?") for e in self._events[-10:]) or "none"
                raise DeadlineExceeded(f"{deadline.describe()}: no {name} event "
                                       f"(events seen meanwhile: {seen})")
            self._pump(min(0.5, max(deadline.remaining(), 0.01)))

    def events(self, name: str | None = None) -> list[Event]:
        """The buffered events (without removing them), optionally by name."""
        self._pump(0)
        return [e for e in self._events if name is None or e.get("event") == name]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._monitor.close()
        except Exception:  # noqa: BLE001, S110 - after quit or death there is nothing to say
            pass
        self._log.close()
