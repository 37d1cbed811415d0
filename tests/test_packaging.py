"""The systemd unit, the container recipe and contrib/ are checked with the real tools where we have them."""

from __future__ import annotations

import ctypes.util
import errno
import importlib.metadata
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.relayproc import RelayProcess
from tests.support.upstream import free_port

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
    assert s["WatchdogSec"] == ["30s"] and s["NotifyAccess"] == ["main"]
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["UMask"] == ["0077"]
    assert "serve" in s["ExecStart"][0] and s["User"] == ["relay365"]
    # the credential the store reads is the one the unit loads
    from relay365.tokens import store

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
    assert float(m.group(1)) <= 1.5  # 1.4 on systemd 252 (systemd/README.md); 0.1 is one lost setting


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    runtime = text.split("\nFROM ", 2)[2]
    assert re.search(r"^USER relay365$", runtime, re.M)
    assert 'VOLUME ["/var/lib/relay365"]' in runtime
    assert _healthcheck_command() == ["relay365", "health", "--allow-degraded", "-c",
                                      "/etc/relay365/config.yaml"]
    build = text.split("\nFROM ", 2)[1]
    # dependencies are a layer of their own, before the source is copied in
    assert build.index("pip install -r") < build.index("COPY relay365 ")
    assert "--no-deps" in build.split("COPY relay365 ")[1]


def _healthcheck_command() -> list[str]:
    """The exec-form CMD of the Dockerfile's HEALTHCHECK."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.M).group(1))


def _minimal_config(tmp_path: Path, http_port: int = 0) -> dict:
    """A relay that starts without any upstream: one account (not authorised yet, so /readyz says
    degraded), an unauthenticated SMTP network and the HTTP listener."""
    return {
        "state_dir": str(tmp_path / "state"), "log": {"level": "info", "format": "json"},
        "apps": {"default": {"tenant": "t", "client_id": "c", "authority": "https://127.0.0.1:1"}},
        "accounts": [{"mailbox": "printer@example.test"}],
        "smtp": {"listen": ["127.0.0.1:0"],
                 "unauthenticated": [{"network": "127.0.0.1/32", "mailbox": "printer@example.test"}]},
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }


def test_healthcheck_passes_on_a_degraded_relay_and_fails_on_a_stopped_one(tmp_path):
    """The Dockerfile's HEALTHCHECK command, run against a real relay365 serve."""
    command = _healthcheck_command()
    exe = shutil.which("relay365", path=str(Path(sys.executable).parent))
    assert command[0] == "relay365" and exe
    relay = RelayProcess(tmp_path, _minimal_config(tmp_path)).start()
    health_cfg = tmp_path / "health.yaml"  # what `health` reads: the port the relay really bound
    try:
        health_cfg.write_text(yaml.safe_dump(_minimal_config(tmp_path, relay.ports["http"][0])))
        check = [exe, *command[1:]]
        check[check.index("/etc/relay365/config.yaml")] = str(health_cfg)
        done = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("degraded") and "printer@example.test" in done.stdout
        strict = [a for a in check if a != "--allow-degraded"]  # ready, strictly: not yet
        assert subprocess.run(strict, capture_output=True, timeout=30).returncode == 1
        assert relay.stop() == 0
        done = subprocess.run(check, capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and "not reachable" in done.stderr
    finally:
        relay.stop()


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
    for path in (ROOT / "relay365").rglob("*.py"):
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
            '"bad_password", "event": "auth_failed", "level": "warning", "logger": "relay365.auth", '
            '"timestamp": "2026-11-28T23:41:06.675871Z"}')
    assert pattern.search(line).group("host") == "192.0.2.7"
    assert not pattern.search(line.replace("auth_failed", "auth_ok"))
    reordered = json.dumps({"event": "auth_failed", **json.loads(line)})  # key order is not ours
    assert pattern.search(reordered).group("host") == "192.0.2.7"
    assert not pattern.search(reordered.replace("auth_failed", "auth_ok"))


def test_readme_auth_failed_line_is_what_the_relay_prints():
    """The README's sample has the keys, in the order, that a real failed login logs."""
    import io
    import logging

    import structlog

    from relay365 import logs

    readme = (ROOT / "README.md").read_text()
    sample = json.loads(re.search(r'^(\{"proto": "smtp".*"event": "auth_failed".*\})$', readme,
                                  re.M).group(1))
    buf = io.StringIO()
    logs.configure("info", "json", stream=buf)
    try:  # bound per connection as the adapters do, then the fields localauth passes
        with structlog.contextvars.bound_contextvars(conn=7, proto="smtp", peer="192.0.2.7"):
            structlog.get_logger("relay365.auth").warning(
                "auth_failed", proto="smtp", conn=7, peer="192.0.2.7", user="scanner",
                mechanism="PLAIN", reason="bad_password")
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    real = json.loads(buf.getvalue().splitlines()[-1])
    assert list(real) == list(sample)
    assert {k: v for k, v in real.items() if k != "timestamp"} == {
        k: v for k, v in sample.items() if k != "timestamp"}


def test_readme_reference_table_names_every_key():
    import dataclasses

    from relay365 import config as cfg

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration reference"):]
    table = table[:table.index("\n\n", table.index("| section"))]
    missing = []
    for model in (cfg.Config, cfg.AppConfig, cfg.UpstreamConfig, cfg.AccountConfig, cfg.UserConfig,
                  cfg.SmtpConfig, cfg.ImapConfig, cfg.SpoolConfig, cfg.LimitsConfig, cfg.HttpConfig,
                  cfg.UnauthenticatedNet, cfg.LogConfig, cfg.Endpoint):
        for f in dataclasses.fields(model):
            if not f.metadata.get("internal") and f"`{f.name}" not in table:
                missing.append(f"{model.__name__}.{f.name}")
    assert missing == []


# -- the unit's sandbox, applied to a real `relay365 serve` -------------------------------------
#
# Without a service manager here, the seccomp part of relay365.service is rebuilt from the unit's own
# settings (SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=,
# MemoryDenyWriteExecute= as systemd 252 implements it: seccomp rules on mmap/mprotect/shmat) and
# loaded with libseccomp before the relay starts. Tightening the unit past what the daemon needs
# (a syscall group, an address family, W^X for a JIT) then fails here rather than on a server.

HARDENED_LAUNCHER = r'''
import ctypes, errno, json, mmap, runpy, socket, sys

policy = json.load(open(sys.argv[1]))
lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]


class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                       ctypes.POINTER(Cmp)]
ALLOW = 0x7FFF0000
EQ, MASKED_EQ = 4, 7


def errno_action(code):
    return 0x00050000 | code


def rule(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a syscall on this architecture
        return
    arr = (Cmp * len(cmps))(*cmps) if cmps else None
    assert lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr) == 0, name


def load(ctx):
    assert lib.seccomp_load(ctx) == 0
    lib.seccomp_release(ctx)


# W^X and address families first: once the allow list is loaded, seccomp() itself may be refused
ctx = lib.seccomp_init(ALLOW)
if policy["wx"]:
    W, X, SHM_EXEC = mmap.PROT_WRITE, mmap.PROT_EXEC, 0o100000
    rule(ctx, errno_action(errno.EPERM), "mmap", Cmp(2, MASKED_EQ, W | X, W | X))
    rule(ctx, errno_action(errno.EPERM), "mprotect", Cmp(2, MASKED_EQ, X, X))
    rule(ctx, errno_action(errno.EPERM), "pkey_mprotect", Cmp(2, MASKED_EQ, X, X))
    rule(ctx, errno_action(errno.EPERM), "shmat", Cmp(2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
for family in range(64):
    if family not in policy["families"]:
        rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", Cmp(0, EQ, family, 0))
load(ctx)
ctx = lib.seccomp_init(errno_action(policy["errno"]))
for name in policy["allow"]:
    rule(ctx, ALLOW, name)
load(ctx)

# the policy is in force, or this test proves nothing
for probe in (lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW),
              lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),
              lambda: __import__("os").setpriority(0, 0, 5)):
    try:
        probe()
    except OSError:
        continue
    sys.exit("relay365 test: the sandbox is not in force")
sys.argv = ["relay365", *sys.argv[2:]]
runpy.run_module("relay365", run_name="__main__", alter_sys=True)
'''

# Allowed without being listed (systemd.exec(5), SystemCallFilter=)
ALWAYS_ALLOWED = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


def _syscalls(group: str, seen: set[str] | None = None) -> set[str]:
    """A syscall group as this systemd defines it, nested groups expanded."""
    seen = set() if seen is None else seen
    if not group.startswith("@"):
        return {group}
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#") and item not in seen:
            seen.add(item)
            names |= _syscalls(item, seen)
    return names


def _unit_seccomp_policy() -> dict:
    s = unit_settings()
    allow, deny = set(), set()
    for entry in s["SystemCallFilter"]:
        target = deny if entry.startswith("~") else allow
        for item in entry.lstrip("~").split():
            target |= _syscalls(item)
    assert allow, "the unit should have an allow list (SystemCallFilter=@system-service)"
    families = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
    return {
        "allow": sorted((allow | _syscalls("@default") | ALWAYS_ALLOWED) - deny),
        "errno": getattr(errno, s["SystemCallErrorNumber"][0]),
        "families": [families[f] for f in s["RestrictAddressFamilies"][0].split()],
        "wx": s["MemoryDenyWriteExecute"] == ["yes"],
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="needs libseccomp2")
def test_relay_runs_inside_the_units_seccomp_and_wx_policy(tmp_path):
    """serve, STARTTLS, the token store, /healthz, a reload and a clean stop under the unit's filters."""
    from tests.support.pki import make_pki

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(_unit_seccomp_policy()))
    launcher = tmp_path / "hardened.py"
    launcher.write_text(HARDENED_LAUNCHER)
    pki = make_pki(tmp_path / "pki")
    config = _minimal_config(tmp_path)
    config["smtp"].update(tls="starttls", cert_file=str(pki.cert_file), key_file=str(pki.key_file))
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "relay.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(launcher), str(policy), "serve", "-c", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        started = _wait_event(proc, log_path, "relay_started")
        port = {p: int(a[0].rsplit(":", 1)[1]) for p, a in started["listeners"].items()}
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        with smtplib.SMTP("127.0.0.1", port["smtp"], timeout=10) as smtp:
            smtp.starttls(context=context)
            assert smtp.ehlo()[0] == 250
        with urllib.request.urlopen(f"http://127.0.0.1:{port['http']}/healthz", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGHUP)
        _wait_event(proc, log_path, "reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    problems = [e for e in _events(log_path) if e.get("level") in ("error", "critical")
                and e.get("event") != "token_failed"]  # no refresh token yet: expected here
    assert problems == []


def _events(log_path: Path) -> list[dict]:
    events = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"event": "_raw", "level": "error", "text": line})  # a traceback, say
    return events


def _wait_event(proc: subprocess.Popen, log_path: Path, event: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in _events(log_path) if e.get("event") == event]
        if found:
            return found[-1]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {event} (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")


# -- the image, where a builder is available (opt in: RELAY365_TEST_IMAGE=1) --------------------

def _engine() -> list[str] | None:
    for engine in ("podman", "docker"):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True,
                                                   timeout=60).returncode == 0:
            return [engine]
    return ["buildah"] if shutil.which("buildah") else None


@pytest.mark.skipif(os.environ.get("RELAY365_TEST_IMAGE") != "1",
                    reason="builds the container image: set RELAY365_TEST_IMAGE=1 (needs podman, docker or "
                           "buildah, and the base image; RELAY365_TEST_BASE overrides it)")
def test_image_builds_and_runs(tmp_path):
    """Build the Dockerfile, then in the image: --version, check, serve and the HEALTHCHECK command."""
    engine = _engine()
    assert engine, "RELAY365_TEST_IMAGE=1 but no podman, docker or buildah"
    tag = "localhost/relay365:packaging-test"
    build = ([*engine, "bud", "--format", "docker", "--isolation", "chroot"] if engine == ["buildah"]
             else [*engine, "build", *(["--format", "docker"] if engine == ["podman"] else [])])
    base = os.environ.get("RELAY365_TEST_BASE")
    build += ["--network", "host", "-t", tag, *(["--build-arg", f"PYTHON={base}"] if base else []), str(ROOT)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    inspect = [*engine, "inspect", tag] if engine == ["buildah"] else [*engine, "image", "inspect", tag]
    meta = json.dumps(json.loads(subprocess.run(inspect, capture_output=True, text=True, check=True,
                                                timeout=60).stdout))
    assert '"relay365"' in meta and "/var/lib/relay365" in meta and "--allow-degraded" in meta

    http_port = free_port()  # for the HTTP listener (health reads it from the config)
    config = _minimal_config(tmp_path, http_port)
    config["state_dir"] = "/var/lib/relay365"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cfg.chmod(0o644)
    health = " ".join(_healthcheck_command())
    script = ("relay365 --version && relay365 check -c /etc/relay365/config.yaml && id -un && "
              "{ relay365 serve -c /etc/relay365/config.yaml >/tmp/serve.log 2>&1 & } && "
              f"for i in $(seq 50); do {health} >/dev/null 2>&1 && break; sleep 0.2; done; "
              f"{health}; rc=$?; kill -TERM $!; wait $!; echo serve_exit=$?; exit $rc")
    mount = ["-v", f"{cfg}:/etc/relay365/config.yaml:ro"]
    if engine == ["buildah"]:
        ctr = subprocess.run(["buildah", "from", tag], capture_output=True, text=True, check=True,
                             timeout=120).stdout.strip()
        try:
            run = ["buildah", "run", "--isolation", "chroot", "--network", "host", *mount, ctr, "--",
                   "sh", "-c", script]
            done = subprocess.run(run, capture_output=True, text=True, timeout=120)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=60)
    else:
        run = [*engine, "run", "--rm", "--network", "host", *mount, "--entrypoint", "sh", tag, "-c", script]
        done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    version = importlib.metadata.version("relay365")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"relay365 {version}"
    assert "is valid" in done.stdout and "relay365" in lines and "degraded" in done.stdout
    assert "serve_exit=0" in lines


# -- contrib/ against what a running relay really exports ---------------------------------------

def _exported_series(tmp_path: Path) -> dict[str, set[str]]:
    """Series name -> label names, from a real relay's /metrics (labels of metrics with no samples
    yet come from their declaration in relay.metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    from relay365 import metrics

    relay = RelayProcess(tmp_path, _minimal_config(tmp_path)).start()
    try:
        url = f"http://127.0.0.1:{relay.ports['http'][0]}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
    finally:
        relay.stop()
    declared = {c._name: set(c._labelnames) for c in vars(metrics).values()
                if hasattr(c, "_labelnames") and hasattr(c, "_name")}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("relay365_"):
            continue
        labels = declared.get(family.name, set()) | {k for s in family.samples for k in s.labels}
        for suffix in suffixes.get(family.type, [""]):
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def _contrib_queries() -> list[str]:
    rules = yaml.safe_load((ROOT / "contrib" / "prometheus-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    return exprs + [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_contrib_queries_name_series_and_labels_a_running_relay_exports(tmp_path):
    series = _exported_series(tmp_path)
    # what the issue asks to be measurable, and the spool gauges the alerts need
    for name in ("relay365_sessions_total", "relay365_auth_failures_total", "relay365_bytes_relayed_total",
                 "relay365_upstream_seconds_bucket", "relay365_token_refreshes_total",
                 "relay365_accounts_needing_auth", "relay365_spool_depth",
                 "relay365_spool_oldest_age_seconds", "relay365_active_connections"):
        assert name in series, name
    problems = []
    for expr in _contrib_queries():
        used = set(re.findall(r"\b(relay365_[a-z_]+)", expr))
        problems += [f"{expr}: no series {m}" for m in used - set(series)]
        labels = set().union(*(series.get(m, set()) for m in used)) if used else set()
        for metric, matchers in re.findall(r"\b(relay365_[a-z_]+)\{([^}]*)\}", expr):
            wanted = set(re.findall(r"(\w+)\s*[=!~]", matchers))
            problems += [f"{expr}: {metric} has no label {k}" for k in wanted - series.get(metric, set())]
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            wanted = {k.strip() for k in group.split(",") if k.strip()}
            problems += [f"{expr}: no label {k} to group by" for k in wanted - labels]
    assert problems == []


def test_grafana_dashboard_is_importable():
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)  # Grafana keys panels by id
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        uid = panel.get("datasource", {}).get("uid", "")
        assert not uid.startswith("$") or uid.strip("${}") in variables, panel["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian: prometheus)")
def test_promtool_accepts_the_alerts_and_every_dashboard_query(tmp_path):
    """PromQL syntax and rule structure, checked by Prometheus' own parser."""
    dashboard = json.loads((ROOT / "contrib" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(as_rules))
    for rules in (ROOT / "contrib" / "prometheus-alerts.yml", tmp_path / "dashboard.yml"):
        done = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
