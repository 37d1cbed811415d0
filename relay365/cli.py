"""`relay365` command line: serve, check, hash-password, auth, accounts, health, queue, demo.

Every failure an operator can cause ends in one clear message and a non-zero exit, never a traceback:
2 for a bad config, 1 for anything else that went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable

import structlog

from . import __version__
from .config import Config, load_config
from .errors import ConfigError, RelayError
from .hardening import disable_core_dumps

EXIT_CONFIG = 2


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"relay365: configuration {exc.source} has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _raise_fd_limit(want: int = 65536) -> None:
    """Each relayed session holds two sockets; a shell's soft limit of 1024 would cap the relay at
    ~500 sessions. Raise the soft limit towards the hard one, as servers usually do."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Relay
    from .features import load, needed
    from .logs import configure
    from .runloop import run

    hardened = disable_core_dumps()  # before the config (client secrets, seed tokens) is read
    config = _load(args.config)
    problems = load(needed(config))  # the parts it uses load now, not at their first use
    if problems:
        for problem in problems:
            print(f"relay365: {problem}", file=sys.stderr)
        return 1
    configure(args.log_level or config.log.level, config.log.format)
    if not hardened:
        structlog.get_logger("relay365").warning("core_dumps_not_disabled")
    _raise_fd_limit()

    async def main() -> None:
        relay = Relay(config)
        await relay.start()
        try:
            await relay.serve()
        finally:
            await relay.stop()

    try:
        run(main())
    except RelayError as exc:
        structlog.get_logger("relay365").error("startup_failed", error=str(exc))
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a listener could not be bound, or a file in the state directory
        where = f"{exc.filename}: " if exc.filename else "cannot listen: "
        print(f"relay365: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .features import PARTS, load

    config = _load(args.config)
    print(f"relay365: configuration {args.config} is valid "
          f"({len(config.accounts)} account(s), {len(config.users)} user(s))")
    problems = load(list(PARTS))  # all of them: a reload may turn on what this config does not use
    if problems:
        for problem in problems:
            print(f"relay365: {problem}", file=sys.stderr)
        return 1
    from .tokens.store import StoreError, TokenStore

    store = TokenStore(config.state_dir)
    try:
        if store.path.exists():  # like nginx -t: look, but create nothing (not even the key)
            held = store.check()
            print(f"relay365: token store {store.path} is readable ({held} refresh token(s))")
        else:
            print(f"relay365: no token store yet at {store.path} (made on first use)")
    except StoreError as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    if not args.upstream:
        return 0
    from .logs import configure

    configure("warning", "console")
    from .checks import check_upstream

    return asyncio.run(check_upstream(config))


def cmd_hash_password(args: argparse.Namespace) -> int:
    from .passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("relay365: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("relay365: empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_accounts(args: argparse.Namespace) -> int:
    import json

    from .accounts import collect, render
    from .tokens.store import StoreError

    config = _load(args.config)
    try:
        report = collect(config)
    except StoreError as exc:
        print(f"relay365: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1) if args.json else render(report))
    return 1 if any(a["state"] == "needs-auth" for a in report["accounts"]) else 0


def cmd_auth(args: argparse.Namespace) -> int:
    from .logs import configure
    from .onboard import run_auth

    disable_core_dumps()  # it holds a fresh refresh token and the client secret
    config = _load(args.config)
    configure("warning", "console")
    return run_auth(config, args.mailbox, device=args.device, token_stdin=args.refresh_token_stdin,
                    verify=args.verify, redirect_uri=args.redirect_uri)


def cmd_health(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.request

    config = _load(args.config)
    if config.http is None:
        print("relay365: health needs the http: listener in the config", file=sys.stderr)
        return 2
    addr = config.http.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr.host, addr.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{addr.port}/readyz"
    try:
        # never through $http_proxy: the relay is on this host (or in this container)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=args.timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:
        print(f"relay365: not reachable at {url}: {exc}", file=sys.stderr)
        return 1
    status = body.get("status", "?")
    print(status + "".join(f"\n  {r}" for r in body.get("reasons", [])))
    return 0 if status == "ready" or (status == "degraded" and args.allow_degraded) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .standins.demo import run_demo

    return run_demo(keep_serving=not args.once, port=args.port)


def _add_auth_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("auth", help="authorise a mailbox: get and store its refresh token")
    s.add_argument("mailbox")
    s.add_argument("-c", "--config", required=True)
    how = s.add_mutually_exclusive_group()
    how.add_argument("--device", action="store_true", help="device-code flow (no browser here)")
    how.add_argument("--refresh-token-stdin", action="store_true",
                     help="import a refresh token read from standard input")
    s.add_argument("--redirect-uri", help="http://localhost:PORT for a local listener; default: "
                   "the nativeclient page, and you paste the address you land on")
    s.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="after storing, log in upstream over SMTP and IMAP (default: on)")
    s.set_defaults(func=cmd_auth)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="relay365", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"relay365 {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the relay")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("check", help="validate the config (and with --upstream, log in upstream)")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--upstream", action="store_true",
                   help="also get a token for each account and try an XOAUTH2 login upstream")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("hash-password", help="read a password (stdin or prompt), print its hash")
    s.set_defaults(func=cmd_hash_password)

    _add_auth_parser(sub)

    s = sub.add_parser("accounts", help="show each upstream account's token state")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_accounts)

    s = sub.add_parser("health", help="exit 0 when the running relay is ready (for HEALTHCHECK)")
    s.add_argument("-c", "--config", required=True)
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--allow-degraded", action="store_true",
                   help="also exit 0 when an account needs re-authorisation")
    s.set_defaults(func=cmd_health)

    s = sub.add_parser("demo", help="run the relay against an embedded Office 365 stand-in")
    s.add_argument("--once", action="store_true", help="send the sample message and exit")
    s.add_argument("--port", type=int, default=2525, help="local SMTP port of the demo relay")
    s.set_defaults(func=cmd_demo)

    from .spool.cli import add_queue_parser

    add_queue_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
