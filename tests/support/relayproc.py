"""relay365 as the operator runs it: `python -m relay365 serve -c CONFIG` in a subprocess.

The config is written as YAML from a dict; listeners use port 0 and the real ports are read from the
`relay_started` JSON log event. Logs are JSON lines in a file, so tests assert on events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml


class RelayProcess:
    def __init__(self, workdir: Path, config: dict, env: dict | None = None, name: str = "relay") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.prefix: list[str] = []  # run under this (a mount namespace: `unshare -m ...`)
        self.ports: dict[str, list[int]] = {}
        self._log_offset = 0

    def write_config(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, timeout: float = 20.0) -> RelayProcess:
        self.write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "relay365", "serve", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        log.close()
        started = self.wait_log("relay_started", timeout=timeout)
        self.ports = {proto: [int(a.rsplit(":", 1)[1]) for a in addrs]
                      for proto, addrs in started["listeners"].items()}
        return self

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"][0]

    @property
    def imap_port(self) -> int:
        return self.ports["imap"][0]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"][0]

    def events(self, since_start: bool = True) -> list[dict]:
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            if since_start:
                f.seek(self._log_offset)
            out = []
            for line in f.read().decode("utf-8", "replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"event": "_raw", "text": line})
            return out

    def find(self, event: str, **match) -> list[dict]:
        return [e for e in self.events() if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]

    def wait_log(self, event: str, timeout: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event, **match)
            if found:
                return found[-1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {event} {match} in the relay log within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events()[-60:])

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
