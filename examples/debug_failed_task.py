"""A task failed: find out why, fix it, and run it again.

Three tasks count the words of three files, but one file is missing. We
look at the failure from Python (fail_tasks, traceback, output), from the
command line (runforrest show), run the failed task by hand, fix the cause,
and retry (runforrest retry). Run: python examples/debug_failed_task.py

The commands are run as `python -m runforrest ...`, which is what the
`runforrest` command does; in a shell, type `runforrest show ...`.
"""

import os
import subprocess
import sys
import tempfile

from runforrest import TaskList, defer


def count_words(path):
    print('counting the words of', os.path.basename(path))
    with open(path) as file:
        return len(file.read().split())


def runforrest(*arguments):
    """Run the command line tool, show what a user would see, return its status."""
    print('$ runforrest', *arguments)
    done = subprocess.run([sys.executable, '-m', 'runforrest', *arguments],
                          capture_output=True, text=True)
    print(done.stdout + done.stderr, end='')
    return done.returncode


def main():
    with tempfile.TemporaryDirectory(prefix='debug-') as scratch:
        paths = [os.path.join(scratch, f'{name}.txt') for name in ('one', 'two', 'three')]
        for path in paths[:2]:  # three.txt is missing: that task will fail
            with open(path, 'w') as file:
                file.write('a few words here\n')

        directory = os.path.join(scratch, 'tasklist')
        tasklist = TaskList(directory)
        for path in paths:
            tasklist.schedule(defer(count_words, path), metadata=os.path.basename(path))
        for task in tasklist.run(nprocesses=2):
            print(task.taskname, 'done' if task.errorvalue is None else 'failed')

        # From Python: the failed tasks, their error, traceback and output.
        failed = list(tasklist.fail_tasks())[0]
        print('\nfailed:', failed.taskname, repr(failed.errorvalue))
        print('its traceback ends with:', failed.traceback.splitlines()[-1])
        print('its output:', tasklist.output(failed), end='')

        # From the shell: a unique prefix of the name is enough.
        print()
        runforrest('show', os.path.join(directory, failed.taskname[:8]))

        # Run it by hand: -p prints the traceback; -r would re-raise the error,
        # for a debugger: python -m pdb -m runforrest TASKFILE RESULTFILE -r
        print()
        taskfile = os.path.join(directory, 'fail', failed.taskname + '.pkl')
        status = runforrest(taskfile, os.path.join(scratch, 'out.pkl'), '-p')
        print('exit status:', status)

        # Fix the cause, move the failed task back to todo/, and run again.
        with open(paths[2], 'w') as file:
            file.write('now it is here\n')
        print()
        runforrest('retry', directory)
        for task in tasklist.run():
            print(task.taskname, 'done, with', task.returnvalue, 'words')
        print('failed tasks left:', len(list(tasklist.fail_tasks())))


if __name__ == '__main__':
    main()
