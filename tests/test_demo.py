"""The README's first command: `relay365 demo` relays one message end to end without a tenant."""
import os
import re
import subprocess
import sys


def test_demo_once_relays_a_message_with_xoauth2():
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "relay365", "demo", "--once", "--port", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "TLS: yes   AUTH: XOAUTH2 as scanner@contoso.example" in out
    assert "MAIL FROM: scanner@contoso.example" in out
    assert "event=message_relayed" in out
    assert "Traceback" not in out
    assert re.search(r"Status page: http://127\.0\.0\.1:\d+/ ", out), out[-1500:]
