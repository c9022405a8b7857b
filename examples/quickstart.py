"""The loop from the README, run in parallel.

Without runforrest, the loop would read:

    for item in items:
        intermediate = prepare(item)
        result = dostuff(intermediate[1], intermediate.thing)

Here every `dostuff(prepare(item)...)` becomes one task, which runs in a
process of its own. Run it from anywhere: python examples/quickstart.py
"""

import collections
import os
import tempfile

from runforrest import TaskList, defer

# Functions and classes of this script travel to the task processes with
# dill, so they need not live in an importable module.
Prepared = collections.namedtuple('Prepared', 'item square thing')


def prepare(item):
    return Prepared(item, item * item, thing=f'thing-{item}')


def dostuff(square, thing):
    if square == 9:
        raise ValueError(f'{thing} is unlucky')
    return f'{thing}: {square}'


def main():
    # A task list is a directory. This one is a fresh, empty temporary
    # directory, and post_clean removes it at the end.
    directory = tempfile.mkdtemp(prefix='quickstart-')
    with TaskList(directory, post_clean=True) as tasklist:
        for item in range(6):
            task = defer(prepare, item)
            # Indexing and attribute access on a task are deferred, too.
            task = defer(dostuff, task[1], task.thing)
            tasklist.schedule(task, metadata={'item': item})

        # Tasks come back as they finish, which is not schedule order.
        results, failures = {}, []
        for task in tasklist.run(nprocesses=2, autokill=30):
            if task.errorvalue is None:
                results[task.metadata['item']] = task.returnvalue
            else:
                failures.append(task)

        for item in sorted(results):
            print(f'item {item} -> {results[item]}')
        for task in failures:
            print(f'item {task.metadata["item"]} failed: '
                  f'{type(task.errorvalue).__name__}: {task.errorvalue}')
    print('task list removed:', not os.path.exists(directory))


if __name__ == '__main__':
    main()
