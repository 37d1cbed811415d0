"""One target under atheris (libFuzzer), coverage-guided over relay365 and aiosmtpd.
Run by `fuzz/run --engine atheris`; by hand: python -m fuzz.atheris_main TARGET [libFuzzer flags] DIR"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["relay365", "aiosmtpd", "fuzz"]):
    from fuzz.targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]

    def one(data: bytes) -> None:
        # A SystemExit or KeyboardInterrupt out of the target would end the interpreter, and
        # libFuzzer would only say "fuzz target exited" with no trace: make it a crash with one.
        try:
            target(data)
        except (SystemExit, KeyboardInterrupt) as exc:
            raise RuntimeError(f"the target raised {exc!r}") from exc

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
