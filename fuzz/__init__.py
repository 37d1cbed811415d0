"""Fuzzing every parser a stranger reaches before login, plus the config loader and the spool's
record reader.

Targets live in `fuzz.targets` (one function `bytes -> None` each, which raises only on a bug);
`fuzz/run --inputs N` runs each for N inputs, coverage-guided with atheris (libFuzzer) when it is
installed (`pip install -e .[fuzz]`), else with the small mutation engine in `fuzz.engine`. Seed
corpora are in `fuzz/corpus/<target>/`, taken from what real clients send (see `fuzz.seeds`).
The test suite runs every target for a few hundred inputs (tests/test_fuzz.py).
"""
