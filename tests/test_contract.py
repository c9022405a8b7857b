"""The original RunForrest's contract, to the letter: nothing scheduled is
dropped, a task file is a pickled task, and a list is three folders."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import dill
import pytest

import runforrest
from runforrest import TaskList, TaskListError, defer

import tasks

HERE = os.path.dirname(os.path.abspath(__file__))


def run_script(tmp_path, body, *args, expect=0):
    script = tmp_path / 'script.py'
    script.write_text(textwrap.dedent(body))
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path,
                          env={**os.environ, 'PYTHONPATH': HERE},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == expect, done.stderr
    return done.stdout


SCHEDULE_ONLY = '''
import sys
from runforrest import TaskList, defer
import tasks
if sys.argv[1] == 'with':
    with TaskList('list') as tasklist:
        for value in (1, 2):
            tasklist.schedule(defer(tasks.identity, value))
else:
    tasklist = TaskList('list')
    for value in (1, 2):
        tasklist.schedule(defer(tasks.identity, value))
    if sys.argv[1] == 'run':
        print(sorted(task.returnvalue for task in tasklist.run(nprocesses=2)))
'''

RESUME = '''
from runforrest import TaskList, defer
import tasks
tasklist = TaskList('list', noschedule_if_exist=True)
print(tasklist.schedule(defer(tasks.identity, 3)))
print(sorted(task.returnvalue for task in tasklist.run(nprocesses=2)))
print(sorted(task.returnvalue for task in tasklist.done_tasks()))
'''


@pytest.mark.parametrize('how', ['plain', 'with', 'run'])
def test_a_list_whose_script_ended_normally_is_never_emptied(tmp_path, how):
    first = run_script(tmp_path, SCHEDULE_ONLY, how)
    assert first == ('[1, 2]\n' if how == 'run' else '')
    assert not os.path.exists(tmp_path / 'list' / '.runforrest' / 'scheduling')
    # A second script, with noschedule_if_exist, schedules nothing and runs
    # what is left; nothing that was scheduled or done is gone.
    second = run_script(tmp_path, RESUME).split('\n')
    assert second[0] == 'None'
    assert second[1] == ('[]' if how == 'run' else '[1, 2]')
    assert second[2] == '[1, 2]'


SCHEDULING = '''
import os, signal, sys, time
from runforrest import TaskList, defer
import tasks
tasklist = TaskList('list', noschedule_if_exist=True)
for value in range(6):
    print(tasklist.schedule(defer(tasks.count_call, 'runs', value)), flush=True)
    if value == 3 and sys.argv[1] == 'stop':
        time.sleep(3600)  # killed here, in the middle of its scheduling
print(sorted(task.returnvalue for task in tasklist.run(nprocesses=2)))
'''


def test_a_script_killed_while_scheduling_is_taken_up_where_it_stopped(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(textwrap.dedent(SCHEDULING))
    env = {**os.environ, 'PYTHONPATH': HERE}
    killed = subprocess.Popen([sys.executable, str(script), 'stop'], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True)
    scheduled = [killed.stdout.readline().strip() for _ in range(4)]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed.stdout.close()
    assert sorted(os.listdir(tmp_path / 'list' / 'todo')) == [f'{name}.pkl' for name in scheduled]
    # The same script again: the four tasks stand, two more are scheduled,
    # and each of the six runs once.
    again = subprocess.run([sys.executable, str(script), 'go'], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    names = again.stdout.split('\n')[:6]
    assert names[:4] == scheduled and len(set(names)) == 6
    assert again.stdout.split('\n')[6] == '[0, 1, 2, 3, 4, 5]'
    assert (tmp_path / 'runs').read_text() == 'x' * 6
    assert not os.path.exists(tmp_path / 'list' / '.runforrest' / 'scheduling')


def test_taking_up_a_cut_scheduling_refuses_another_script(tmp_path):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks.identity, 1))
    tasklist._scheduling.detach()  # as if the script was killed here
    again = TaskList(tmp_path / 'list', noschedule_if_exist=True)
    with pytest.raises(TaskListError, match='where the script scheduled 00000001-identity'):
        again.schedule(defer(tasks.add_one, 1))
    assert os.listdir(tmp_path / 'list' / 'todo') == ['00000001-identity.pkl']


@pytest.mark.parametrize('load', [pickle.load, dill.load], ids=['pickle', 'dill'])
def test_every_task_file_unpickles_to_its_task(tmp_path, load):
    tasklist = TaskList(tmp_path / 'list')
    done = tasklist.schedule(defer(tasks.identity, [1, 2]), metadata={'n': 1})
    fail = tasklist.schedule(defer(tasks.fail, 'no'), metadata={'n': 2})
    lam = tasklist.schedule(defer(lambda: (lambda x: x * 3)), metadata={'n': 3})
    tasklist.flush()
    with open(tasklist._path('todo', done), 'rb') as file:
        todo = load(file)
    assert isinstance(todo, runforrest.Task) and todo.metadata == {'n': 1}
    assert todo.returnvalue is None and runforrest.evaluate(todo) == [1, 2]
    list(tasklist.run(nprocesses=2))
    with open(os.path.join(tasklist.directory, 'done', f'{done}.pkl'), 'rb') as file:
        task = load(file)
    assert task.metadata == {'n': 1} and task.returnvalue == [1, 2]
    assert task.errorvalue is None and task.runtime > 0
    with open(os.path.join(tasklist.directory, 'fail', f'{fail}.pkl'), 'rb') as file:
        task = load(file)
    assert task.metadata == {'n': 2} and str(task.errorvalue) == 'no'
    assert isinstance(task.errorvalue, ValueError) and 'in fail' in task.traceback
    with open(os.path.join(tasklist.directory, 'done', f'{lam}.pkl'), 'rb') as file:
        assert load(file).returnvalue(2) == 6
    # runforrest reads the outcome alone: the same, also one that only dill pickles.
    path = os.path.join(tasklist.directory, 'done', f'{lam}.pkl')
    assert runforrest.read_task(path, outcome=False).returnvalue(2) == 6


def test_a_list_shows_only_its_three_folders_and_tasks_in_them(tmp_path):
    tasklist = TaskList(tmp_path / 'list', logfile=str(tmp_path / 'list.log'))
    for value in range(3):
        tasklist.schedule(defer(tasks.identity, value))
    tasklist.schedule(defer(tasks.divide, 1, 0))  # fails without a word
    list(tasklist.run(nprocesses=2, save_session=True))
    assert sorted(os.listdir(tasklist.directory)) == ['.runforrest', 'done', 'fail', 'todo']
    tasklist.schedule(defer(print, 'loud'))
    list(tasklist.run(nprocesses=1))
    assert sorted(os.listdir(tasklist.directory)) == ['.runforrest', 'done', 'fail', 'output', 'todo']
    # Code that walks the folders as the original README describes finds tasks only.
    for state in ('todo', 'done', 'fail'):
        for entry in os.listdir(os.path.join(tasklist.directory, state)):
            with open(os.path.join(tasklist.directory, state, entry), 'rb') as file:
                assert isinstance(pickle.load(file), runforrest.Task), entry


def test_the_originals_typical_use(tmp_path, monkeypatch):
    from tqdm import tqdm
    monkeypatch.chdir(tmp_path)
    tasklist = TaskList('x', noschedule_if_exist=True, logfile='x.log')
    for item in range(4):
        task = defer(tasks.prepare, item)
        task = defer(tasks.dostuff, task[1], task['thing'])
        tasklist.schedule(task, metadata={'item': item})
    tasklist.schedule(defer(tasks.fail, 'flaky'), metadata={'item': 'bad'})
    finished = list(tqdm(tasklist.run(nprocesses=16, autokill=600)))
    assert len(finished) == 5
    assert 'schedule' in (tmp_path / 'x.log').read_text()
    # Later, from another script: the results, read back.
    again = TaskList('x', noschedule_if_exist=True)
    results = {task.metadata['item']: task.returnvalue for task in again.done_tasks()}
    assert results == {item: item + 1 + item * 10 for item in range(4)}
    # A failed task copied (not moved) back to todo/, and run again.
    [failed] = os.listdir('x/fail')
    shutil.copy(os.path.join('x/fail', failed), os.path.join('x/todo', failed))
    [rerun] = list(again.run(nprocesses=1))
    assert rerun.taskname == failed[:-4] and str(rerun.errorvalue) == 'flaky'
    assert os.listdir('x/todo') == [] and os.listdir('x/fail') == [failed]


def test_a_task_file_of_the_older_format_is_named_as_such(tmp_path):
    tasklist = TaskList(tmp_path / 'list')
    path = os.path.join(tasklist.directory, 'todo', '00000001-old.pkl')
    with open(path, 'wb') as file:
        pickle.dump({'format': 1, 'state': 'todo', 'record_size': 10}, file)
    with pytest.raises(runforrest.TaskFileError, match='runforrest 1.0'):
        runforrest.read_task(path)


def test_the_module_file_runs_a_task_as_the_original_readme_says(tmp_path):
    # "python runforrest.py --do_raise infile outfile"
    tasklist = TaskList(tmp_path / 'list')
    name = tasklist.schedule(defer(tasks.fail, 'first hand'))
    tasklist.flush()
    done = subprocess.run([sys.executable, runforrest.__file__, '--do_raise',
                           tasklist._path('todo', name), str(tmp_path / 'out.pkl')],
                          env={**os.environ, 'PYTHONPATH': HERE}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith('ValueError: first hand')
    assert 'in fail' in done.stderr
    assert str(runforrest.read_task(tmp_path / 'out.pkl').errorvalue) == 'first hand'


def test_the_original_readmes_task_examples(tmp_path):
    import datetime
    import numpy
    evaluate = runforrest.evaluate
    assert list(evaluate(defer(numpy.zeros, 5))) == [0.0] * 5
    assert evaluate(defer(dict, alpha='a', beta='b')) == {'alpha': 'a', 'beta': 'b'}
    assert evaluate(defer(lambda x: x, 42)) == evaluate(defer(42)) == 42
    task1 = defer(Exception, 'an error message')
    assert evaluate(defer(lambda x: x, task1.args[0])) == 'an error message'
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(task1.args[0], metadata={'date': datetime.date.today()})
    [task] = tasklist.run(nprocesses=10, print_errors=True, autokill=300)
    assert task.returnvalue == 'an error message'
    assert task.metadata == {'date': datetime.date.today()}
