"""pmap and its kin: parallel maps and calls, each call in a process of its own.

Results come in the order of the items, whatever order the calls finish
in. Run: python examples/map.py
"""

import itertools
import time

from runforrest import background, call, pmap, pmap_rows, proc


def power(base, exponent, modulo=None):
    return pow(base, exponent, modulo)


def main():
    # Lambdas and closures are fine: they travel to the processes with dill.
    print('squares:', list(pmap(lambda x: x * x, range(5), nprocesses=2)))
    offset = 100
    print('shifted:', list(pmap(lambda x: x + offset, [1, 2, 3])))

    # star=True: each item is a tuple of arguments, power(*item).
    print('star:', list(pmap(power, [(2, 3), (3, 2)], star=True)))
    # kwstar=True: each item is (value, keywords), power(value, **keywords).
    print('kwstar:', list(pmap(power, [(2, {'exponent': 10}), (3, {'exponent': 3})],
                               kwstar=True)))
    # args and kwargs are the same for every item: power(item, 2, modulo=7).
    print('extras:', list(pmap(power, [3, 4, 5], args=(2,), kwargs={'modulo': 7})))

    # errors='return' yields a failure's exception in place of its result;
    # the default, errors='raise', would raise the first one.
    for result in pmap(lambda x: 1 / x, [1, 0, 4], errors='return'):
        print('reciprocal:', repr(result))

    # autokill (any option of TaskList.run works) stops calls that hang.
    started = time.monotonic()
    results = list(pmap(time.sleep, [0, 60], autokill=2, errors='return'))
    print('autokill:', [type(result).__name__ for result in results],
          f'after {time.monotonic() - started:.0f} s, not 60')

    # pmap takes its items as it needs them, a few per process ahead, so
    # that an endless generator is fine: here, the first squares over 50.
    squares = pmap(lambda x: x * x, itertools.count(), nprocesses=2)
    print('endless:', next(square for square in squares if square > 50))

    # An error says which item it came from.
    try:
        list(pmap(lambda x: 1 / x, [1, 2, 0]))
    except ZeroDivisionError as error:
        print('failing item:', error.item_index)

    # call: different functions at once, their results in the order given.
    total, largest = call([proc(sum, [1, 2, 3]), proc(max, [4, 8, 6])])
    print('call:', total, largest)

    # background: one call, started now; a concurrent.futures.Future.
    future = background(pow, 2, 100)
    print('background:', future.result(timeout=60) == 2 ** 100)
    hanging = background(time.sleep, 60)
    hanging.cancel()  # kills its process, with any children it started
    print('cancelled:', hanging.cancelled())

    # pmap_rows: a NumPy array split by rows, one piece per process.
    try:
        import numpy
    except ImportError:
        print('pmap_rows: needs numpy')
    else:
        X = numpy.arange(12).reshape(6, 2)
        running_sums = pmap_rows(lambda rows: rows.cumsum(axis=1), X, nprocesses=2)
        print('pmap_rows:', (running_sums == X.cumsum(axis=1)).all())

    # threads=True: for calls that wait on the network or the disk, threads
    # of this process, with no isolation at all.
    print('threads:', list(pmap(len, ['a', 'bb', 'ccc'], threads=True)))


if __name__ == '__main__':
    main()
