"""Task functions for the everyday-use tests: importable, so that task
processes find them (pytest puts tests/ on sys.path, and the driver passes
its sys.path on)."""

import os
import time


def square(x):
    return x * x


def fail(message):
    print('about to fail')
    raise ValueError(message)


def divide(a, b):
    return a / b


def hang():
    time.sleep(600)


def crash():
    import ctypes
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def arguments(*args, **kwargs):
    """What it was called with, to check how pmap passes items."""
    return args, kwargs


def step(result, wait=None, create=None):
    """Create the file `create`, wait until the file `wait` exists, then
    return result, or raise it if it is an exception: lets a test choose
    the order in which tasks end. Gives up waiting after 20 s, returning
    'gave up' instead."""
    if create:
        open(create, 'w').close()
    deadline = time.monotonic() + 20
    while wait and not os.path.exists(wait):
        if time.monotonic() > deadline:
            return 'gave up'
        time.sleep(0.01)
    if isinstance(result, BaseException):
        raise result
    return result


def print_lines(tag, count, create=None, wait=None):
    """Print count numbered lines; halfway, meet another task through
    step(), so that both are sure to print at the same time."""
    for number in range(count):
        if number == count // 2:
            step(None, wait=wait, create=create)
        print(f'{tag} {number}')
    return tag


def main_global(name):
    """A global of __main__, as a session file provides it."""
    import __main__
    return getattr(__main__, name)


def hang_with_child(pidfile):
    """Start a child process, write 'PID CHILD_PID' to pidfile, and hang."""
    import subprocess
    child = subprocess.Popen(['sleep', '600'])
    with open(f'{pidfile}.tmp', 'w') as file:
        file.write(f'{os.getpid()} {child.pid}')
    os.replace(f'{pidfile}.tmp', pidfile)
    time.sleep(600)


def where(value):
    """value, with the process and thread that it was computed in."""
    import threading
    return value, os.getpid(), threading.get_ident()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def rows_with_pid(X):
    """X with a column that holds the process that computed each row."""
    import numpy
    return numpy.column_stack([X * 2, numpy.full(len(X), os.getpid())])
