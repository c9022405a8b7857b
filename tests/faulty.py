"""Task functions for test_faults.py: each one misbehaves in one way, for real.

They live in an importable module (not in the test file) because a task
travels to its process as a pickle that refers to its function by module
and name. Tasks that the tests must watch write a "marker": a JSON file with
the pids (and their start times, so that a reused pid is not mistaken for a
survivor) of every process the task made, written atomically so that a test
polling for it never reads half of it.
"""

import ctypes
import hashlib
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time


# -- markers -------------------------------------------------------------------

def start_time(pid):
    """The start time of a process in clock ticks since boot (field 22 of
    /proc/PID/stat), or None if there is no such process."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as file:
            return int(file.read().rpartition(b')')[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def write_marker(path, children=()):
    """Write, atomically, the pids of this process and of its children."""
    pids = [os.getpid(), *children]
    data = {'pgid': os.getpgrp(), 'sid': os.getsid(0),
            'processes': [[pid, start_time(pid)] for pid in pids]}
    temporary = f'{path}.{os.getpid()}.part'
    with open(temporary, 'w') as file:
        json.dump(data, file)
    os.replace(temporary, path)


# -- healthy tasks -------------------------------------------------------------

def double(x):
    return 2 * x


def slow_double(x, seconds):
    time.sleep(seconds)
    return 2 * x


def thread_variables():
    """What a task sees of the variables that cap numeric libraries' threads."""
    names = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS',
             'VECLIB_MAXIMUM_THREADS', 'NUMEXPR_NUM_THREADS', 'BLIS_NUM_THREADS')
    return {name: os.environ.get(name) for name in names}


# -- raising -------------------------------------------------------------------

def raise_value_error(text):
    raise ValueError(text)


class SocketHoldingError(Exception):
    """An exception that cannot be pickled, not even by dill: it holds a socket."""

    def __init__(self, message):
        super().__init__(message)
        self.connection = socket.socket()


def raise_socket_holding_error(text):
    raise SocketHoldingError(text)


class LockHoldingError(Exception):
    """An exception that holds a lock (the C pickler refuses it; dill does not)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_lock_holding_error(text):
    raise LockHoldingError(text)


class TwoArgumentError(Exception):
    """Pickles, but cannot be unpickled: pickle calls cls(*self.args), and
    self.args holds one argument where __init__ needs two."""

    def __init__(self, code, detail):
        super().__init__(f'code {code}: {detail}')


def raise_two_argument_error(code, detail):
    raise TwoArgumentError(code, detail)


# -- crashing ------------------------------------------------------------------

def with_child(marker):
    """Start a child that would wait for 1000 s (in the task's process
    group), and say so in the marker: a crash must take the child along."""
    child = subprocess.Popen(['sleep', '1000'])
    write_marker(marker, [child.pid])


def segfault(marker):
    with_child(marker)
    ctypes.string_at(0)


def abort(marker):
    with_child(marker)
    os.abort()


def kill_self(marker):
    with_child(marker)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_with(marker, code):
    with_child(marker)
    os._exit(code)


def close_stdio_and_return(value):
    print('before closing stdout and stderr', flush=True)
    os.close(1)
    os.close(2)
    return value


def scribble_on_descriptors(value):
    """Writes junk to every descriptor it has besides stdin, stdout and
    stderr, as a confused C library might, and returns value."""
    for name in os.listdir('/proc/self/fd'):
        if int(name) > 2:
            try:
                os.write(int(name), b'\x00junk{"ended": 1}\n')
            except OSError:
                pass
    return value


def crash_first_time(flag):
    """Aborts unless the flag file exists, creating it: fails once, then works."""
    if os.path.exists(flag):
        return 'second attempt'
    open(flag, 'w').close()
    os.abort()


def always_crash(attempts):
    with open(attempts, 'a') as file:
        file.write(f'{os.getpid()}\n')
    os.abort()


# -- hanging -------------------------------------------------------------------

def hang(marker):
    write_marker(marker)
    time.sleep(1000)


def hang_with_subprocess(marker):
    with_child(marker)
    time.sleep(1000)


def hang_with_multiprocessing(marker):
    child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(1000,))
    child.start()
    write_marker(marker, [child.pid])
    time.sleep(1000)


# -- memory --------------------------------------------------------------------

def allocate(total, step):
    """Allocate and touch `total` bytes, `step` at a time, slowly enough for a
    memory watchdog to see it grow; returns what it got if nobody stops it."""
    blocks = []
    while len(blocks) * step < total:
        blocks.append(b'x' * step)  # written, so resident, unlike calloc'ed zeros
        time.sleep(0.01)
    time.sleep(30)  # hold it: on a busy machine the watchdog may look late
    return len(blocks) * step


def allocate_in_children(marker, children, size):
    """Fork `children` processes that each touch `size` bytes and hold them,
    so that the task's process group holds children * size bytes, and no
    process of it more than size; say so in the marker, and wait."""
    pids = []
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            block = b'x' * size  # written, so resident
            time.sleep(60)
            os._exit(len(block) == 0)
        pids.append(pid)
    write_marker(marker, pids)
    time.sleep(60)


def misbehave(path, how):
    """Record this run (as append_effect does), then fail in one way:
    'raise', 'crash', 'hang', 'allocate' (1 GiB, slowly) or 'unpicklable'
    (return a generator)."""
    append_effect(path, how, 0)
    if how == 'raise':
        raise ValueError('raised on purpose')
    if how == 'crash':
        os.abort()
    if how == 'hang':
        time.sleep(1000)
    if how == 'allocate':
        return allocate(1 << 30, 10 << 20)
    return (number for number in range(3))


# -- results -------------------------------------------------------------------

def return_generator():
    return (number for number in range(3))


def return_socket():
    return socket.socket()


def big_result(size, seed, digest_file):
    """size random bytes; their sha256 goes to digest_file, for the driver to
    check that the result arrived intact."""
    generator = random.Random(seed)
    chunk = 1 << 20  # randbytes takes at most 256 MiB at once
    data = b''.join(generator.randbytes(min(chunk, size - start))
                    for start in range(0, size, chunk))
    with open(digest_file, 'w') as file:
        file.write(hashlib.sha256(data).hexdigest())
    return data


class SlowPickle:
    """A value whose pickling blocks while the flag file exists: holds a
    task in the middle of writing its result file. Writes marker when it
    starts to block."""

    def __init__(self, flag, marker, payload):
        self.flag, self.marker, self.payload = flag, marker, payload

    def __reduce__(self):
        if os.path.exists(self.flag):
            write_marker(self.marker)
            deadline = time.monotonic() + 120
            while os.path.exists(self.flag) and time.monotonic() < deadline:
                time.sleep(0.02)
        return SlowPickle, (self.flag, self.marker, self.payload)

    def __eq__(self, other):
        return isinstance(other, SlowPickle) and other.payload == self.payload


def return_slowly_pickled(flag, marker, payload, padding):
    # The padding is pickled before the blocking part, so the half-written
    # result file is big.
    return [b'p' * padding, SlowPickle(flag, marker, payload)]


# -- output --------------------------------------------------------------------

def flood(lines):
    """Print `lines` numbered lines of 100 bytes to stdout, and a last line
    to stderr; returns how many bytes were printed to stdout."""
    chunk = 1000
    for first in range(0, lines, chunk):
        sys.stdout.write(''.join(f'line {number:09d} {"x" * 84}\n'
                                 for number in range(first, min(first + chunk, lines))))
    print('flood finished', file=sys.stderr)
    return lines * 100


# -- process and thread bombs --------------------------------------------------

def fork_bomb(limit, hold):
    """Fork children (which just wait) until fork fails or `limit` is
    reached; then one child exits, leaving room for exactly one more
    process or thread; keep the rest for `hold` seconds, then fail with what
    stopped the bomb."""
    children = []
    error = None
    try:
        for _ in range(limit):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)  # killed with the task's process group long before
                os._exit(0)
            children.append(pid)
    except OSError as stop:
        error = stop
    if error is not None and children:
        os.kill(children[-1], signal.SIGKILL)
        os.waitpid(children.pop(), 0)
    time.sleep(hold)
    raise RuntimeError(f'fork bomb made {len(children) + 1} processes, then: {error}')


def thread_bomb(limit, hold):
    """Start threads (which just wait) until that fails or `limit` is
    reached; then one thread ends, leaving room for exactly one more process
    or thread; keep the rest for `hold` seconds, then fail with what stopped
    the bomb."""
    release, release_one = threading.Event(), threading.Event()
    first = threading.Thread(target=release_one.wait, daemon=True)
    first.start()
    threads = [first]
    error = None
    try:
        for _ in range(limit - 1):
            thread = threading.Thread(target=release.wait, daemon=True)
            thread.start()
            threads.append(thread)
    except RuntimeError as stop:
        error = stop
    if error is not None:
        release_one.set()
        first.join()
    time.sleep(hold)
    release.set()
    raise RuntimeError(f'thread bomb made {len(threads)} threads, then: {error}')


# -- side effects, for killing the driver ----------------------------------------

def append_effect(path, value, seconds):
    """Record that this task ran (a line with its pid and start time), then
    work a little, then return value."""
    with open(path, 'a') as file:
        file.write(f'{os.getpid()} {start_time(os.getpid())}\n')
    time.sleep(seconds)
    return value


def crash_on_first_run(path, value):
    """Record this run (as append_effect does); abort if it is the first."""
    append_effect(path, value, 0)
    with open(path) as file:
        if len(file.readlines()) == 1:
            os.abort()
    return value


def fail_until_exists(flag, path, value):
    """Record this run (as append_effect does); raise ValueError unless the
    file flag exists."""
    append_effect(path, value, 0)
    if not os.path.exists(flag):
        raise ValueError(f'{flag} does not exist yet')
    return value


# -- not a task: a process hog, run as a script by the tests ----------------------

def hog(ready_file, leave_free, hold):
    """Fork children until fork fails (the process limit), then let
    `leave_free` of them exit, so that exactly that many processes or
    threads may start; say so in ready_file, hold for `hold` seconds, and
    leave (taking the children along)."""
    children = []
    while len(children) < 1000:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(hold + 60)
            os._exit(0)
        children.append(pid)
    for _ in range(leave_free):
        pid = children.pop()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with open(ready_file, 'w') as file:
        file.write(str(len(children)))
    time.sleep(hold)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == '__main__':
    hog(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
