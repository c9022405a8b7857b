"""Task functions for bench.py.

They live in an importable module, not in __main__, so that every runner
pickles them by reference, as real tasks are. Each takes an int and returns
something whose size (the int itself, or len() of bytes) equals it, so that
the harness can check every result without keeping them.
"""

import time


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
