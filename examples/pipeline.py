"""A pipeline: each stage of each item a task of its own, and a summary of all.

Without runforrest, the loop would read:

    results = []
    for item in items:
        intermediate = prepare(item)
        results.append(dostuff(intermediate[1], intermediate.thing))
    print(summarize(results))

Here `prepare` and `dostuff` of every item, and the summary, each run in a
process of their own, as soon as what they need is done. One `prepare`
fails; its `dostuff` fails too, unrun, and the summary, which needs every
item, with it. The example then fixes the input and retries the failed
stage: the tasks that failed because of it come back with it, and what was
done already is not done again. Run it from anywhere:
python examples/pipeline.py
"""

import collections
import os
import tempfile

from runforrest import TaskList, defer

Prepared = collections.namedtuple('Prepared', 'item square thing')


def prepare(item, broken):
    if os.path.exists(broken):
        raise ValueError(f'item {item} cannot be prepared yet')
    return Prepared(item, item * item, thing=f'thing-{item}')


def dostuff(square, thing):
    return f'{thing}: {square}'


def summarize(results):
    return '; '.join(results)


def main():
    directory = tempfile.mkdtemp(prefix='pipeline-')
    broken = os.path.join(directory, 'item-3-is-broken')
    with TaskList(os.path.join(directory, 'tasks')) as tasklist:
        results = []
        for item in range(5):
            # A scheduled task that a later task uses is a dependency: it
            # runs first, and the later task gets its stored result.
            prepared = defer(prepare, item, broken if item == 3 else '')
            tasklist.schedule(prepared)
            result = defer(dostuff, prepared[1], prepared.thing)
            tasklist.schedule(result)
            results.append(result)
        summary = tasklist.schedule(defer(summarize, results))

        open(broken, 'w').close()
        for task in tasklist.run(nprocesses=2):
            outcome = task.returnvalue if task.errorvalue is None else \
                f'{type(task.errorvalue).__name__}: {task.errorvalue}'
            print(f'{task.taskname}: {outcome}')

        os.remove(broken)
        retried = tasklist.retry(error_type='ValueError')
        print('retried:', ', '.join(retried))
        for task in tasklist.run(nprocesses=2):
            print(f'{task.taskname} again: {task.errorvalue or "done"}')
        [final] = [task for task in tasklist.done_tasks() if task.taskname == summary]
        print('summary:', final.returnvalue)
        tasklist.clean()
    os.rmdir(directory)


if __name__ == '__main__':
    main()
