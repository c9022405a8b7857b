"""Well-behaved task functions for the tests (the misbehaving ones are in
faulty.py). They live in an importable module because a task travels to its
process as a pickle that names its function by module and name; conftest.py
puts tests/ on the import path of every process the tests start."""

import os
import time

# The process that imported this module first: the task process itself,
# unless the forkserver template preloaded the module for all tasks.
IMPORTED_IN = os.getpid()


def identity(value):
    return value


def add_one(value):
    return value + 1


def square(x):
    return x * x


def divide(a, b):
    return a / b


def prepare(item):
    return {'thing': item * 10, 1: item + 1}


def dostuff(first, thing):
    return first + thing


def fail(message):
    print('about to fail')
    raise ValueError(message)


def arguments(*args, **kwargs):
    """What it was called with, to check how pmap passes items."""
    return args, kwargs


def timed(seconds):
    """Sleep, and say when this process ran and which group it was in."""
    started = time.time()
    time.sleep(seconds)
    return {'start': started, 'end': time.time(), 'pid': os.getpid(),
            'pgid': os.getpgrp(), 'cwd': os.getcwd()}


def wait_for_files(directory, pattern, count):
    """Wait until count files in directory match pattern; return the time
    then, or None after 30 s."""
    import glob
    deadline = time.monotonic() + 30
    while len(glob.glob(os.path.join(directory, pattern))) < count:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    return time.time()


def count_files_later(directory, pattern, count, seconds):
    """Wait until count files in directory match pattern, then seconds more;
    return how many match then, or None if count never did."""
    import glob
    if wait_for_files(directory, pattern, count) is None:
        return None
    time.sleep(seconds)
    return len(glob.glob(os.path.join(directory, pattern)))


class LoadedMark:
    """A value that, each time it is unpickled in a process other than
    `driver`, leaves a file loaded-PID in directory."""

    def __init__(self, directory, driver):
        self.directory, self.driver = directory, driver

    def __reduce__(self):
        return _unpickle_mark, (self.directory, self.driver)


def _unpickle_mark(directory, driver):
    if os.getpid() != driver:
        open(os.path.join(directory, f'loaded-{os.getpid()}'), 'w').close()
    return LoadedMark(directory, driver)


def imported_in():
    """(the pid that imported this module, this task's pid)."""
    return IMPORTED_IN, os.getpid()


def count_call(path, value):
    """Append to a file, so that a test can count how often this ran."""
    with open(path, 'a') as file:
        file.write('x')
    return value


def count_and_sleep(path, value, seconds):
    with open(path, 'a') as file:
        file.write(f'{value}\n')
    time.sleep(seconds)
    return value


def read_relative(path):
    with open(path) as file:
        return file.read()


def main_global(name):
    """A global of __main__, as a session file provides it."""
    import __main__
    return getattr(__main__, name)


def hang():
    time.sleep(1000)


def record_pid_and_sleep(path):
    with open(path, 'a') as file:
        file.write(f'{os.getpid()}\n')
    time.sleep(1000)


def hold_memory(megabytes):
    """Touch this much memory, and keep it."""
    block = bytearray(megabytes << 20)
    time.sleep(60)
    return len(block)


def crash():
    import ctypes
    ctypes.string_at(0)  # reads address 0: SIGSEGV


class Sound:
    def __init__(self, rate):
        self.rate = rate

    def resample(self, rate):
        return Sound(rate)


def load(rate):
    return Sound(rate)


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
