"""pmap: a parallel map, each call in a process of its own.

Results come in the order of the items, whatever order the calls finish
in. Run: python examples/map.py
"""

import time

from runforrest import pmap


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


if __name__ == '__main__':
    main()
