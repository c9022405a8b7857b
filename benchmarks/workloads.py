"""Task functions for bench.py and pipelines.py.

They live in an importable module, not in __main__, so that every runner
pickles them by reference, as real tasks are. Each of bench.py's takes an
int and returns something whose size (the int itself, or len() of bytes)
equals it, so that the harness can check every result without keeping them.
"""

import os
import pickle
import signal
import time


def compile_as_installed():
    """Cache the bytecode of this checkout's runforrest and of this module,
    as pip does for what it installs. Without it (an editable install under
    PYTHONDONTWRITEBYTECODE, as here), every process that a benchmark starts
    compiles them anew, a cost that no installed copy pays."""
    import py_compile
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.join(os.path.dirname(here), 'runforrest.py'), os.path.abspath(__file__)):
        py_compile.compile(path, doraise=True)


def identity(x):
    return x


def nap(milliseconds):
    time.sleep(milliseconds / 1000)
    return milliseconds


def spin(iterations):
    # A pure-Python loop: holds the GIL and one CPU, like real numeric Python.
    total = 0
    for i in range(iterations):
        total += i
    return iterations


def blob(nbytes):
    # Cheap to make, so that the time measured is that of moving the result.
    return b'x' * nbytes


# Stages of the pipelines of pipelines.py. Each takes its parameter and the
# list of its inputs' results, so that every system runs the same graph.

def stage(milliseconds, inputs=()):
    """Sleep, then count this stage and every stage upstream of it: the
    result of a graph's stages checks that each got its inputs' results."""
    time.sleep(milliseconds / 1000)
    return 1 + sum(inputs)


def segfault(_, inputs=()):
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(_, inputs=()):
    while True:
        time.sleep(3600)


def hog(nbytes, inputs=()):
    """Touch nbytes of memory, a piece at a time, as a growing result does;
    a memory limit below nbytes should stop it on the way."""
    piece = 8 << 20
    pieces = []
    while len(pieces) * piece < nbytes:
        pieces.append(b'x' * piece)
        time.sleep(0.01)
    return 1 + sum(inputs)


def stage_on_disk(fun, parameter, input_paths, output_path):
    """A stage the TaskGraph way: results travel in files that the graph
    names, not as return values."""
    inputs = []
    for path in input_paths:
        with open(path, 'rb') as file:
            inputs.append(pickle.load(file))
    result = fun(parameter, inputs)  # no output file unless it succeeds
    with open(output_path, 'wb') as file:
        pickle.dump(result, file)
