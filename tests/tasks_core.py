"""Task functions for test_core.py: importable, so task processes find them."""

import os
import time


def prepare(item):
    return {'thing': item * 10, 1: item + 1}


def dostuff(first, thing):
    return first + thing


def fail(message):
    raise ValueError(message)


def identity(value):
    return value


def add_one(value):
    return value + 1


def timed(seconds):
    """Sleep, and say when this process ran and which group it was in."""
    started = time.time()
    time.sleep(seconds)
    return {'start': started, 'end': time.time(), 'pid': os.getpid(),
            'pgid': os.getpgrp(), 'cwd': os.getcwd()}


def count_call(path, value):
    """Append to a file, so that a test can count how often this ran."""
    with open(path, 'a') as file:
        file.write('x')
    return value


def read_relative(path):
    with open(path) as file:
        return file.read()


def main_global(name):
    import __main__
    return getattr(__main__, name)


def sleep_forever():
    time.sleep(1000)


class Sound:
    def __init__(self, rate):
        self.rate = rate

    def resample(self, rate):
        return Sound(rate)


def load(rate):
    return Sound(rate)


def record_pid_and_sleep(path):
    with open(path, 'a') as file:
        file.write(f'{os.getpid()}\n')
    time.sleep(1000)


def count_and_sleep(path, value, seconds):
    with open(path, 'a') as file:
        file.write(f'{value}\n')
    time.sleep(seconds)
    return value


def hold_memory(megabytes):
    """Touch this much memory, and keep it."""
    block = bytearray(megabytes << 20)
    time.sleep(60)
    return len(block)
