"""Surviving a crash: run the same script again, and it carries on.

`driver()` is what a long-running script of yours looks like. Its task
list is created with noschedule_if_exist=True: the first time, it schedules
every task; when it runs again after a crash, it schedules nothing and runs
what is left in todo/.

To show that, this example starts the driver as a process of its own,
SIGKILLs it halfway through (as a power cut or the OOM killer would), then
starts it again. Run: python examples/resume.py
"""

import os
import subprocess
import sys
import tempfile
import time

from runforrest import TaskList, defer

NTASKS = 8


def slow_square(x):
    time.sleep(0.3)  # stands in for real work, so that we can interrupt it
    return x * x


def driver(directory):
    tasklist = TaskList(directory, noschedule_if_exist=True)
    for x in range(NTASKS):
        tasklist.schedule(defer(slow_square, x), metadata=x)
    for task in tasklist.run(nprocesses=2):
        # flush, so that the demo below sees each line as it happens
        print('finished', task.taskname, flush=True)


def start_driver(directory):
    return subprocess.Popen([sys.executable, __file__, directory],
                            stdout=subprocess.PIPE, text=True)


def demo():
    with tempfile.TemporaryDirectory(prefix='resume-') as scratch:
        directory = os.path.join(scratch, 'tasklist')

        first = start_driver(directory)
        finished_first = []
        while len(finished_first) < 3:
            finished_first.append(first.stdout.readline().split()[1])
        first.kill()  # SIGKILL: no chance to clean up
        first.wait()
        print(f'first driver killed after {len(finished_first)} of {NTASKS} tasks')

        # Its tasks died with it; the results it had are safe on disk.
        second = start_driver(directory)
        finished_second = [line.split()[1] for line in second.stdout]
        second.wait()
        print(f'second driver finished {len(finished_second)} more')

        tasklist = TaskList.open(directory)
        done = list(tasklist.done_tasks())
        print('todo:', len(list(tasklist.todo_tasks())), 'done:', len(done))
        # done/ holds each task once, with its result, and what the first
        # driver finished, the second did not run again.
        print('every task finished exactly once:',
              sorted(task.metadata for task in done) == list(range(NTASKS))
              and all(task.returnvalue == task.metadata ** 2 for task in done)
              and not set(finished_first) & set(finished_second))


if __name__ == '__main__':
    if len(sys.argv) > 1:
        driver(sys.argv[1])
    else:
        demo()
