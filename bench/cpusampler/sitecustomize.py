"""Loaded by the relay process when bench/cpusampler is on its PYTHONPATH (bench.cpuprofile does
that): samples the main thread's Python stack on SIGPROF, i.e. per CPU time the process used.

ITIMER_PROF counts the process's CPU (user + system), so a sample is CPU actually spent - unlike
a wall-clock sampler such as py-spy, which on a loaded machine also counts a thread that is ready
but waiting for a core. The kernel checks the timer at its tick (250 Hz here), and Python runs
the handler at the next bytecode: time spent in C (uvloop, ssl, the kernel) is counted to the
Python frame that runs next. SIGUSR2 clears the counts (after a warm-up); they are written to
$RELAY365_CPU_SAMPLES as collapsed stacks when the process exits.
"""

import os

if os.environ.get("RELAY365_CPU_SAMPLES"):
    import atexit
    import collections
    import signal

    _counts: collections.Counter = collections.Counter()

    def _sample(signum, frame):
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_name} ({code.co_filename}:{code.co_firstlineno})")
            frame = frame.f_back
        _counts[";".join(reversed(stack))] += 1

    def _dump():
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(os.environ["RELAY365_CPU_SAMPLES"], "w") as out:
            for stack, n in _counts.items():
                out.write(f"{stack} {n}\n")

    signal.signal(signal.SIGPROF, _sample)
    signal.signal(signal.SIGUSR2, lambda signum, frame: _counts.clear())
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    atexit.register(_dump)
