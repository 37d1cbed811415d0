"""`fuzz/run`: run each target for N inputs and print one line per target.

    fuzz/run --inputs 1000000              # a release run: atheris if installed, all targets
    fuzz/run --inputs 2000 --engine builtin smtp_data sasl
    fuzz/run --target imap_preauth --inputs 100000 --engine atheris
    fuzz/run --inputs 1000000 --jobs 2 smtp_session   # two libFuzzer processes, 500,000 each

atheris runs each target in a subprocess of its own (libFuzzer exits the process when it is done),
coverage-guided over relay365 and aiosmtpd, starting from a copy of the seed corpus; a crash is
saved as fuzz/crashes/<target>-<hash> and the run goes on with the next target. The exit status
is 1 if any target crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import engine
from .targets import CORPUS, TARGETS, seeds

CRASHES = Path(__file__).resolve().parent / "crashes"
MAX_LEN = 4096


def _builtin(name: str, inputs: int, seed: int) -> tuple[int, float, list[str]]:
    result = engine.run(name, TARGETS[name], seeds(name), inputs, seed=seed)
    saved = []
    for data, trace in result.crashes:
        path = CRASHES / f"{name}-{hashlib.sha1(data).hexdigest()[:12]}"
        CRASHES.mkdir(exist_ok=True)
        path.write_bytes(data)
        saved.append(f"{path}\n{trace}")
    return result.inputs, result.seconds, saved


def _atheris(name: str, inputs: int, seed: int, jobs: int = 1) -> tuple[int, float, list[str]]:
    """`jobs` libFuzzer processes side by side, sharing one corpus directory (each adds what it
    finds and reads the others' finds only at its start, as libFuzzer's own -jobs does), each
    running its share of `inputs`; the inputs reported are the sum of what each one ran."""
    CRASHES.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    corpus = work / "corpus"
    shutil.copytree(CORPUS / name, corpus) if (CORPUS / name).is_dir() else corpus.mkdir()
    started = time.monotonic()
    procs = []
    for job in range(jobs):
        share = inputs // jobs + (1 if job < inputs % jobs else 0)
        log = (work / f"job{job}.log").open("w+")
        procs.append((log, subprocess.Popen(
            [sys.executable, "-m", "fuzz.atheris_main", name, f"-runs={share}",
             f"-seed={seed * jobs + job + 1}", f"-max_len={MAX_LEN}", "-timeout=30",
             f"-artifact_prefix={CRASHES}/{name}-", "-print_final_stats=1", str(corpus)],
            cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT,
            text=True)))
    runs, crashes = 0, []
    for log, proc in procs:
        proc.wait()
        log.seek(0)
        out = log.read()
        log.close()
        ran = [int(line.split(":")[-1]) for line in out.splitlines()
               if line.startswith("stat::number_of_executed_units:")]
        runs += ran[-1] if ran else 0
        if proc.returncode != 0:
            crashes.append(out[-4000:])
    seconds = time.monotonic() - started
    shutil.rmtree(work, ignore_errors=True)
    return runs, seconds, crashes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fuzz/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help=f"default: all ({', '.join(TARGETS)})")
    ap.add_argument("--target", action="append", default=[], help="one target (repeatable)")
    ap.add_argument("--inputs", type=int, default=10_000, help="inputs per target (default 10000)")
    ap.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1,
                    help="atheris: libFuzzer processes per target, sharing the inputs (default 1)")
    args = ap.parse_args(argv)
    names = args.targets + args.target or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s): {', '.join(unknown)}")
    eng = args.engine
    if eng == "auto":
        eng = "atheris" if importlib.util.find_spec("atheris") else "builtin"
    if eng == "atheris" and not importlib.util.find_spec("atheris"):
        ap.error("atheris is not installed: pip install -e '.[fuzz]'")
    print(f"engine={eng} inputs={args.inputs} jobs={args.jobs} python={sys.version.split()[0]} "
          f"commit={_commit()}", flush=True)
    failed = False
    for name in names:
        if eng == "atheris":
            runs, seconds, crashes = _atheris(name, args.inputs, args.seed, args.jobs)
        else:
            runs, seconds, crashes = _builtin(name, args.inputs, args.seed)
        rate = runs / seconds if seconds else 0.0
        print(f"{name:14} inputs={runs:<9} seconds={seconds:8.1f} per_s={rate:8.0f} "
              f"crashes={len(crashes)}", flush=True)
        for c in crashes:
            print(c, file=sys.stderr)
        failed = failed or bool(crashes)
    return 1 if failed else 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=False, cwd=os.path.dirname(__file__)).stdout.strip() or "?"
    except OSError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
