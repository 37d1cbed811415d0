"""The systemd unit, the container recipe and contrib/ are checked with the real tools where we have them."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "relay365.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_what_operators_rely_on():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] and s["StateDirectory"] == ["relay365"]
    assert s["ConfigurationDirectory"] == ["relay365"]
    assert {c.split(":")[0] for c in s["LoadCredential"]} == {"store-key", "client-secret"}
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"] == s["CapabilityBoundingSet"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges",
                "RestrictAddressFamilies", "SystemCallFilter"):
        assert key in s, key
    assert s["ProtectSystem"] == ["strict"]
    assert "serve" in s["ExecStart"][0] and s["User"] == ["relay365"]
    # the credential the store reads is the one the unit loads
    from relay.tokens import store

    assert '"store-key"' in Path(store.__file__).read_text()


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's relay365, so verify can check the binary."""
    exe = shutil.which("relay365", path=str(Path(sys.executable).parent)) or sys.executable
    unit = tmp_path / "relay365.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/relay365", exe))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_verify_is_clean(tmp_path):
    unit = _unit_for_this_machine(tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "relay365.service" in line]
    assert problems == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_security_rates_it_well(tmp_path):
    unit = _unit_for_this_machine(tmp_path)
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, done.stdout[-500:] + done.stderr
    assert float(m.group(1)) <= 2.0  # 1.4 with systemd 252; the README quotes it


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    runtime = text.split("\nFROM ", 2)[2]
    assert re.search(r"^USER relay365$", runtime, re.M)
    assert 'VOLUME ["/var/lib/relay365"]' in runtime
    assert re.search(r'HEALTHCHECK .*\n.*"relay365", "health", "-c", "/etc/relay365/config.yaml"', runtime)
    build = text.split("\nFROM ", 2)[1]
    # dependencies are a layer of their own, before the source is copied in
    assert build.index("pip install -r") < build.index("COPY relay ")
    assert "--no-deps" in build.split("COPY relay ")[1]


def test_dockerfile_installs_the_dependencies_ci_installs(tmp_path):
    """Run the Dockerfile's own dependency-list command; it must name what this venv got from pip."""
    text = DOCKERFILE.read_text()
    command = re.search(r"RUN (python -c '.*?')\s*\\\n\s*> /tmp/requirements.txt", text, re.S).group(1)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    done = subprocess.run(command.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    from_dockerfile = [line for line in done.stdout.splitlines() if line]
    norm = lambda reqs: sorted(re.sub(r"\s+", "", r).replace('"', "'") for r in reqs)  # noqa: E731
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert norm(from_dockerfile) == norm(declared)
    # ... and CI's environment (scripts/venv.sh: pip install -e .[test]) has every one of them
    for req in from_dockerfile:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        assert importlib.metadata.version(name), name


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "state", "tests"):
        assert name in ignored


def _metric_names_in_source() -> set[str]:
    names = set()
    for path in (ROOT / "relay").rglob("*.py"):
        names |= set(re.findall(r'"(relay365_[a-z_]+)"', path.read_text()))
    return names


def _known(metric: str, names: set[str]) -> bool:
    base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
    return metric in names or base in names


def test_contrib_alerts_and_dashboard_use_real_metrics():
    names = _metric_names_in_source()
    rules = yaml.safe_load((ROOT / "contrib" / "prometheus-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"relay365_[a-z_]+", e)}
    unknown = sorted(m for m in used if not _known(m, names))
    assert unknown == []


def test_fail2ban_filter_matches_the_auth_failed_line():
    conf = (ROOT / "contrib" / "fail2ban" / "filter.d" / "relay365.conf").read_text()
    failregex = re.search(r"^failregex\s*=\s*(.+)$", conf, re.M).group(1).strip()
    pattern = re.compile(failregex.replace("<HOST>", r"(?P<host>[0-9a-fA-F:.]+)"))
    line = ('{"proto": "smtp", "conn": 7, "peer": "192.0.2.7", "user": "scanner", "reason": '
            '"bad_password", "event": "auth_failed", "level": "warning", "logger": "relay.auth", '
            '"timestamp": "2026-11-28T23:41:06.675871Z"}')
    assert pattern.search(line).group("host") == "192.0.2.7"
    assert not pattern.search(line.replace("auth_failed", "auth_ok"))
