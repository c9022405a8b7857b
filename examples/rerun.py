"""Running a script again: only what is new or changed runs.

`driver()` is a script of yours: it prepares every data file and plots the
result of each, on a task list opened with reuse=True. This example runs it
six times, as you would while you work, each time in a fresh interpreter,
and changes something in between: nothing; a new data file; the code of
the plotting stage; the timestamp of one file; the content of another.
Each time, only the tasks that the change concerns run; the others are
yielded with their stored results. Run: python examples/rerun.py
"""

import os
import subprocess
import sys
import tempfile
import textwrap
import time

from runforrest import File, TaskList, defer

STAGES = '''
def prepare(path):
    with open(path) as file:
        return sorted(int(word) for word in file.read().split())


def plot(numbers, path):
    with open(path, 'w') as file:
        file.write('*' * len(numbers))
    return f'{len(numbers)} numbers, largest {numbers[-1]}'
'''


def driver(directory):
    import stages  # the user's own module, in the project directory
    tasklist = TaskList(os.path.join(directory, 'results'), reuse=True)
    for name in sorted(os.listdir(os.path.join(directory, 'data'))):
        prepared = defer(stages.prepare, File(os.path.join(directory, 'data', name)))
        tasklist.schedule(prepared)
        plot = os.path.join(directory, 'plots', name)
        tasklist.schedule(defer(stages.plot, prepared, plot), outputs=[plot])
    ran = reused = 0
    for task in tasklist.run(nprocesses=2):
        reused += task.reused
        ran += not task.reused
    print(f'ran {ran}, reused {reused}')


def run_driver(directory, step):
    done = subprocess.run([sys.executable, __file__, directory], capture_output=True,
                          text=True, env={**os.environ, 'PYTHONPATH': directory})
    print(f'{step}: {done.stdout.strip() or done.stderr}')


def main():
    with tempfile.TemporaryDirectory(prefix='rerun-') as directory:
        for folder in ('data', 'plots'):
            os.mkdir(os.path.join(directory, folder))
        stages = os.path.join(directory, 'stages.py')
        with open(stages, 'w') as file:
            file.write(STAGES)
        for name, numbers in (('a.txt', '3 1 2'), ('b.txt', '5 4'), ('c.txt', '9')):
            with open(os.path.join(directory, 'data', name), 'w') as file:
                file.write(numbers)

        run_driver(directory, 'first run')
        run_driver(directory, 'nothing changed')
        with open(os.path.join(directory, 'data', 'd.txt'), 'w') as file:
            file.write('8 6 7')
        run_driver(directory, 'a new data file')
        with open(stages, 'a') as file:
            file.write(textwrap.dedent('''
                def plot(numbers, path):
                    with open(path, 'w') as file:
                        file.write('#' * len(numbers))
                    return f'{len(numbers)} numbers, smallest {numbers[0]}'
                '''))
        run_driver(directory, 'the plotting code changed')
        later = time.time() + 60
        os.utime(os.path.join(directory, 'data', 'a.txt'), (later, later))
        run_driver(directory, 'a.txt touched')
        with open(os.path.join(directory, 'data', 'b.txt'), 'w') as file:
            file.write('5 4 11')
        run_driver(directory, 'b.txt changed')
        status = subprocess.run([sys.executable, '-m', 'runforrest', 'status',
                                 os.path.join(directory, 'results')],
                                capture_output=True, text=True)
        print('$ runforrest status results')
        print(status.stdout.replace(directory + os.sep, ''), end='')


if __name__ == '__main__':
    if len(sys.argv) > 1:
        driver(sys.argv[1])
    else:
        main()
