"""Task functions for test_pipelines.py: importable, so task processes find them."""

import ctypes
import os
import time

from runforrest import defer


class Prepared:
    """What a first stage returns: indexable, with an attribute."""

    def __init__(self, item, pid):
        self.parts = [item, item + 1]
        self.thing = item * 10
        self.pid = pid

    def __getitem__(self, index):
        return self.parts[index]


def prepare(item, effects=None):
    if effects:
        record(effects, f'prepare-{item}')
    return Prepared(item, os.getpid())


def dostuff(first, thing, effects=None):
    if effects:
        record(effects, f'dostuff-{first}')
    return {'value': first + thing, 'pid': os.getpid()}


def summarize(results):
    return sum(result['value'] for result in results)


def record(effects, name):
    """Leave a file per call, so that a test can count the runs of each task."""
    with open(os.path.join(effects, f'{name}.{os.getpid()}'), 'w'):
        pass


def runs(effects, name):
    return sum(1 for entry in os.listdir(effects) if entry.rpartition('.')[0] == name)


def write(path, text):
    with open(path, 'w') as file:
        file.write(text)


def read(path):
    with open(path) as file:
        return file.read()


def wait_for_file(path, seconds=60):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f'{path} never appeared')
        time.sleep(0.01)
    return path


def pid():
    return os.getpid()


def fault(kind):
    """Fail in one of the ways a task can."""
    if kind == 'raise':
        raise ValueError('the first stage raised')
    if kind == 'segfault':
        ctypes.string_at(0)
    if kind == 'hang':
        time.sleep(3600)
    if kind == 'memory':
        hog = bytearray(1 << 30)
        for offset in range(0, len(hog), 4096):
            hog[offset] = 1
        time.sleep(3600)
    return kind


def meet(here, there, seconds=30):
    """Say that this task runs, and wait for the other one to say so too."""
    write(here, 'here')
    wait_for_file(there, seconds)
    return os.path.basename(here)


def check_pipeline(tasklist, bad_item, **run_options):
    """Run two stages for each of four items and a summary of them, where
    bad_item's first stage raises, and check what each task gets."""
    from runforrest import DependencyFailed
    results, blocked = [], None
    for item in range(4):
        prepared = defer(fault, 'raise') if item == bad_item else defer(prepare, item)
        tasklist.schedule(prepared)
        result = defer(dostuff, prepared[1], prepared.thing)
        if item == bad_item:
            blocked = tasklist.schedule(result)
        else:
            tasklist.schedule(result)
            results.append(result)
    summary = tasklist.schedule(defer(summarize, results))
    finished = {task.taskname: task for task in tasklist.run(nprocesses=2, **run_options)}
    good = [item for item in range(4) if item != bad_item]
    assert finished[summary].returnvalue == sum(item + 1 + item * 10 for item in good)
    assert isinstance(finished[blocked].errorvalue, DependencyFailed)
    assert len(finished) == 9


def big_bytes(megabytes):
    return b'x' * (megabytes << 20)
