"""Running a script again on a list opened with reuse=True: only what is new
or changed runs. Each test writes a small project (a module of the user's
own and a script) and runs the script twice, as a user would."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import runforrest
from conftest import STATES, keys_record, names, task_file
from runforrest import TaskList

MODULE = '''
SCALE = 10


def helper(x):
    return x * SCALE


def prepare(item):
    """Make an item ready."""
    return helper(item)


def plot(value, path):
    with open(path, 'w') as file:
        file.write(str(value))
    return value + 1


def size(path):
    with open(path) as file:
        return len(file.read())


def wait_for(path):
    import time
    while not __import__('os').path.exists(path):
        time.sleep(0.01)
    return path


def fail_unless(path):
    with open(path) as file:
        return file.read()
'''

SCRIPT = '''
import json, sys
from runforrest import File, TaskList, defer
import project
items = json.loads(sys.argv[1])
tasklist = TaskList('results', reuse=True)
for item in items:
    prepared = defer(project.prepare, item)
    tasklist.schedule(prepared)
    tasklist.schedule(defer(project.plot, prepared, f'plot-{item}.txt'),
                      outputs=[f'plot-{item}.txt'])
for task in tasklist.run(nprocesses=2):
    print(json.dumps([task.taskname, task.reused, task.returnvalue]), flush=True)
'''


class Project:
    """A directory with the user's module and script, run as a user runs it."""

    def __init__(self, path, module=MODULE, script=SCRIPT):
        self.path = path
        path.mkdir(exist_ok=True)
        self.write('project.py', module)
        self.write('script.py', script)

    def write(self, name, text):
        (self.path / name).write_text(textwrap.dedent(text))

    def edit(self, old, new, name='project.py'):
        text = (self.path / name).read_text()
        assert old in text
        (self.path / name).write_text(text.replace(old, new))

    def run(self, *args, expect=0, script='script.py'):
        done = subprocess.run([sys.executable, script, *map(str, args)], cwd=self.path,
                              env={**os.environ, 'PYTHONPATH': str(self.path)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == expect, done.stderr
        if expect:
            return done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def ran(self, *args):
        """The names of the tasks that ran (were not reused)."""
        return sorted(name for name, reused, _ in self.run(*args) if not reused)

    def status(self):
        done = subprocess.run([sys.executable, '-m', 'runforrest', 'status', 'results', '--json'],
                              cwd=self.path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path / 'project')


def test_an_unchanged_script_runs_nothing_and_yields_every_result(project):
    first = project.run('[1, 2]')
    assert [reused for _, reused, _ in first] == [False] * 4
    again = project.run('[1, 2]')
    assert sorted(again) == sorted([name, True, value] for name, _, value in first)
    assert project.status()['why'] == {}


def test_added_items_run_alone(project):
    project.run('[1, 2]')
    assert project.ran('[1, 2, 3]') == ['00000005-prepare', '00000006-plot']
    assert project.status()['why'] == {'new': 2}


@pytest.mark.parametrize('old, new, why', [
    ('return helper(item)', 'return helper(item) + 1', 'code of project.prepare changed'),
    ('return x * SCALE', 'return x * SCALE * 2', 'code of project.prepare changed'),
    ('SCALE = 10', 'SCALE = 11', 'code of project.prepare changed'),
])
def test_changed_code_a_helper_or_a_constant_runs_again(project, old, new, why):
    project.run('[1, 2]')
    project.edit(old, new)
    assert len(project.ran('[1, 2]')) == 4  # the plots depend on what changed
    whys = project.status()['why']
    assert whys[why] == 2 and whys['dependency 00000005-prepare ran again'] == 1


def test_a_docstring_a_comment_or_moved_code_changes_nothing(project):
    project.run('[1, 2]')
    project.edit('"""Make an item ready."""', '"""Make an item ready, as it says."""\n    # here')
    project.edit('SCALE = 10\n', 'SCALE = 10\n\n\ndef unrelated():\n    return 3\n\n')
    assert project.ran('[1, 2]') == []


def test_a_changed_later_stage_runs_alone(project):
    project.run('[1, 2]')
    project.edit('return value + 1', 'return value + 2')
    assert project.ran('[1, 2]') == ['00000005-plot', '00000006-plot']
    assert project.status()['why'] == {'code of project.plot changed': 2}


FILE_SCRIPT = '''
import json, sys
from runforrest import File, TaskList, defer
import project
tasklist = TaskList('results', reuse=True)
tasklist.schedule(defer(project.size, File(sys.argv[1])))
for task in tasklist.run(nprocesses=1):
    print(json.dumps([task.taskname, task.reused, task.returnvalue]), flush=True)
'''


def test_input_files_count_by_content(project):
    project.write('files.py', FILE_SCRIPT)
    data = project.path / 'data.txt'
    data.write_text('some data')
    assert project.run('data.txt', script='files.py') == [['00000001-size', False, 9]]
    os.utime(data, (1, 1))  # touched
    assert project.run('data.txt', script='files.py')[0][1] is True
    shutil.copy(data, project.path / 'copy.txt')
    os.replace(project.path / 'copy.txt', data)  # replaced by a copy with the same bytes
    assert project.run('data.txt', script='files.py')[0][1] is True
    data.write_text('other data!')
    assert project.run('data.txt', script='files.py') == [['00000002-size', False, 11]]
    assert project.status()['why'] == {'input file data.txt changed': 1}


def test_a_deleted_or_changed_output_runs_again(project):
    project.run('[1, 2]')
    (project.path / 'plot-1.txt').unlink()
    (project.path / 'plot-2.txt').write_text('spoiled')
    assert project.ran('[1, 2]') == ['00000005-plot', '00000006-plot']
    assert sorted(project.status()['why']) == [
        f'output {project.path / name} missing or changed' for name in ('plot-1.txt', 'plot-2.txt')]
    assert (project.path / 'plot-1.txt').read_text() == '10'


def test_a_task_that_does_not_write_its_output_fails(tmp_path):
    tasklist = TaskList(tmp_path / 'list', reuse=True)
    missing = tmp_path / 'never-written'
    tasklist.schedule(runforrest.defer(len, 'abc'), outputs=[missing])
    [task] = tasklist.run(nprocesses=1)
    assert isinstance(task.errorvalue, runforrest.MissingOutput)
    assert task.errorvalue.path == str(missing) and str(missing) in str(task.errorvalue)


FAILING_SCRIPT = '''
import json
from runforrest import TaskList, defer
import project
tasklist = TaskList('results', reuse=True)
tasklist.schedule(defer(project.fail_unless, 'flag'))
for task in tasklist.run(nprocesses=1):
    print(json.dumps([task.taskname, task.reused, repr(task.errorvalue)]), flush=True)
'''


def test_a_failed_task_runs_again(project):
    project.write('failing.py', FAILING_SCRIPT)
    [[name, reused, error]] = project.run(script='failing.py')
    assert 'FileNotFoundError' in error
    (project.path / 'flag').write_text('fixed')
    assert project.run(script='failing.py') == [['00000002-fail_unless', False, 'None']]
    assert project.status()['why'] == {'failed before': 1}


RESUMED_SCRIPT = '''
import json, sys
from runforrest import TaskList, defer
import project
tasklist = TaskList('results', reuse=True)
for item in range(3):
    tasklist.schedule(defer(project.prepare, item))
tasklist.schedule(defer(project.wait_for, 'gate'))
for task in tasklist.run(nprocesses=2):
    print(json.dumps([task.taskname, task.reused, task.returnvalue]), flush=True)
'''


def test_an_interrupted_run_resumes_without_scheduling_twice(project):
    project.write('resumed.py', RESUMED_SCRIPT)
    driver = subprocess.Popen([sys.executable, 'resumed.py'], cwd=project.path,
                              env={**os.environ, 'PYTHONPATH': str(project.path)},
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = [json.loads(driver.stdout.readline()) for _ in range(3)]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        driver.stdout.close()
    assert sorted(name for name, _, _ in lines) == [f'0000000{i}-prepare' for i in (1, 2, 3)]
    (project.path / 'gate').write_text('open')
    again = project.run(script='resumed.py')
    assert sorted(again) == sorted([[name, True, value] for name, _, value in lines] +
                                   [['00000004-wait_for', False, 'gate']])
    assert sorted(os.listdir(project.path / 'results' / 'done')) == [
        '00000001-prepare.pkl', '00000002-prepare.pkl', '00000003-prepare.pkl',
        '00000004-wait_for.pkl']


def test_stale_tasks_are_left_alone_counted_and_cleaned(project):
    project.run('[1, 2, 3]')
    assert project.ran('[1]') == []
    assert project.status()['stale'] == 4
    done = subprocess.run([sys.executable, '-m', 'runforrest', 'clean', 'results', '--stale'],
                          cwd=project.path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(project.path / 'results' / 'done')) == [
        '00000001-prepare.pkl', '00000002-plot.pkl']
    assert project.status()['stale'] == 0


def test_a_stale_todo_task_neither_runs_nor_is_yielded(tmp_path):
    old = TaskList(tmp_path / 'list', reuse=True)
    stale = old.schedule(runforrest.defer(pow, 2, 8))
    old.flush()  # the old script schedules and stops
    new = TaskList(tmp_path / 'list', reuse=True)
    fresh = new.schedule(runforrest.defer(pow, 2, 9))
    assert [task.taskname for task in new.run(nprocesses=1)] == [fresh]
    assert new._names('todo') == [stale]


def test_an_argument_that_cannot_be_keyed_is_refused_by_name(tmp_path):
    import threading
    tasklist = TaskList(tmp_path / 'list', reuse=True)
    with pytest.raises(runforrest.NotKeyable, match='argument 1 of'):
        tasklist.schedule(runforrest.defer(print, 1, {'lock': threading.Lock()}))
    assert tasklist._names('todo') == []


def test_version_is_part_of_the_key(tmp_path):
    tasklist = TaskList(tmp_path / 'list', reuse=True)
    first = tasklist.schedule(runforrest.defer(pow, 2, 8), version='1')
    assert tasklist.schedule(runforrest.defer(pow, 2, 8), version='1') == first
    assert tasklist.schedule(runforrest.defer(pow, 2, 8), version='2') != first


def test_reuse_and_noschedule_if_exist_do_not_go_together(tmp_path):
    with pytest.raises(ValueError, match='choose one'):
        TaskList(tmp_path / 'list', reuse=True, noschedule_if_exist=True)


def test_show_tells_why_a_task_ran(project):
    project.run('[1]')
    project.edit('SCALE = 10', 'SCALE = 12')
    project.run('[1]')
    done = subprocess.run([sys.executable, '-m', 'runforrest', 'show', 'results/00000003'],
                          cwd=project.path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'PYTHONPATH': str(project.path)})
    assert 'ran, as   code of project.prepare changed' in done.stdout, done.stdout


def test_tasks_scheduled_from_the_loop_body_join_a_reuse_run(tmp_path):
    def run():
        tasklist = TaskList(tmp_path / 'list', reuse=True)
        tasklist.schedule(runforrest.defer(pow, 2, 1))
        seen = []
        for task in tasklist.run(nprocesses=1):
            seen.append((task.returnvalue, task.reused))
            if task.returnvalue < 8:
                tasklist.schedule(runforrest.defer(pow, 2, task.returnvalue.bit_length()))
        return seen
    assert run() == [(2, False), (4, False), (8, False)]
    assert run() == [(2, True), (4, True), (8, True)]


NO_PROCESS = '''
import resource, sys
from runforrest import TaskList, defer
tasklist = TaskList(sys.argv[1], reuse=True)
for exponent in range(3):
    tasklist.schedule(defer(pow, 2, exponent))
reused = [task.reused for task in tasklist.run(nprocesses=2)]
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(reused, children.ru_utime + children.ru_stime)
'''


def test_a_run_with_nothing_to_run_starts_no_process(tmp_path):
    script = tmp_path / 'script.py'
    script.write_text(NO_PROCESS)

    def run():
        done = subprocess.run([sys.executable, str(script), str(tmp_path / 'list')],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        reused, seconds = done.stdout.rsplit(' ', 1)
        return reused, float(seconds)

    assert run()[0] == '[False, False, False]'
    # A process would show here: even an interpreter that only starts takes CPU.
    assert run() == ('[True, True, True]', 0.0)


# The keys of a list's task files are recorded in .runforrest/keys, so that a
# script run again learns them with a stat per file instead of reading each.
# These tests prove that the record is used, and that it cannot stand for a
# file that it no longer describes.

KEYS_SCRIPT = '''
import json, sys
from runforrest import TaskList, defer
read = []  # the task files this script opens while it schedules
sys.addaudithook(lambda event, args: read.append(args[0]) if event == 'open' and
                 isinstance(args[0], str) and args[0].endswith('.pkl') else None)
tasklist = TaskList('results', reuse=True)
names = [tasklist.schedule(defer(pow, 2, exponent)) for exponent in json.loads(sys.argv[1])]
tasklist.flush()
opened = len(read)
results = [[task.taskname, task.reused, task.returnvalue]
           for task in tasklist.run(nprocesses=2)] if sys.argv[2:] == ['run'] else []
print(json.dumps({'names': names, 'opened': opened, 'results': sorted(results)}))
'''


def age(directory, seconds=60):
    """Make every task file of the list look written long ago: a file changed
    in the last two seconds is read each time, as its signature may not
    show the next change (see runforrest._settled)."""
    for state in STATES:
        for name in names(directory, state):
            then = time.time() - seconds
            os.utime(task_file(directory, state, name), (then, then))


def signature(path):
    """A file's signature, as the record holds it first in each entry."""
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


@pytest.fixture
def recorded(project):
    """A project whose list holds pow(2, 1), pow(2, 2) and pow(2, 3) in todo/,
    with their keys recorded; and the list's directory."""
    project.write('keys.py', KEYS_SCRIPT)
    results = str(project.path / 'results')
    [first] = project.run('[1, 2, 3]', script='keys.py')
    age(results)  # which changed every signature: the next script reads every file
    [second] = project.run('[1, 2, 3]', script='keys.py')
    assert second['names'] == first['names'] and second['opened'] == 3
    assert os.path.exists(keys_record(results))
    return project, results


def test_a_script_run_again_reads_no_task_file_once_their_keys_are_recorded(recorded):
    project, results = recorded
    [again] = project.run('[1, 2, 3]', script='keys.py')
    assert again['names'] == ['00000001-pow', '00000002-pow', '00000003-pow']
    assert again['opened'] == 0


def test_a_task_file_replaced_in_place_behind_the_records_back_is_read_again(recorded):
    project, results = recorded
    # 00000001 now holds pow(2, 2), with the same inode, size and modification
    # time as before: only its change time tells.
    first, second = task_file(results, 'todo', '00000001-pow'), task_file(results, 'todo', '00000002-pow')
    before = os.stat(first)
    assert os.path.getsize(second) == before.st_size
    with open(second, 'rb') as source, open(first, 'r+b') as target:
        target.write(source.read())
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(first).st_ino == before.st_ino
    [again] = project.run('[1, 2, 3]', 'run', script='keys.py')
    assert again['opened'] >= 1
    assert again['names'][1:] == ['00000002-pow', '00000003-pow']
    assert again['names'][0] not in ('00000001-pow', '00000002-pow')  # pow(2, 1) is scheduled anew
    assert {name: value for name, _, value in again['results']}[again['names'][0]] == 2


@pytest.mark.parametrize('damage', ['garbage', 'cut short', 'no record', 'wrong entries'])
def test_a_damaged_record_of_keys_is_ignored(recorded, damage):
    project, results = recorded
    path = keys_record(results)
    with open(path, 'rb') as file:
        data = file.read()
    data = {'garbage': b'\x80\x05garbage' * 100, 'cut short': data[:len(data) // 2],
            'no record': pickle.dumps([1, 2, 3]),
            'wrong entries': pickle.dumps({'format': 1, 'states': {'todo': {
                '00000001-pow': 7, '00000002-pow': 'not an entry',
                '00000003-pow': signature(task_file(results, 'todo', '00000003-pow'))}}}),
            }[damage]
    with open(path, 'wb') as file:
        file.write(data)
    [again] = project.run('[1, 2, 3]', script='keys.py')
    assert again['names'] == ['00000001-pow', '00000002-pow', '00000003-pow']
    assert again['opened'] >= 2  # read, at least those the record cannot vouch for
    [after] = project.run('[1, 2, 3]', script='keys.py')
    assert after['opened'] == 0  # recorded anew


def test_tasks_moved_from_todo_to_done_are_reused_from_done(recorded):
    project, results = recorded
    [ran] = project.run('[1, 2, 3]', 'run', script='keys.py')
    assert [reused for _, reused, _ in ran['results']] == [False] * 3
    assert names(results, 'done') == ran['names'] and names(results, 'todo') == []
    [again] = project.run('[1, 2, 3]', 'run', script='keys.py')
    assert again['names'] == ran['names']
    assert again['results'] == [[name, True, 2 ** (i + 1)] for i, name in enumerate(ran['names'])]


def test_a_task_file_that_another_machine_put_in_the_list_is_found(recorded, tmp_path):
    project, results = recorded
    # The other machine schedules pow(2, 4) on its copy of the list, and its
    # file appears in the shared todo/ with the time it was written there.
    other = tmp_path / 'other'
    shutil.copytree(results, other / 'results')
    machine = Project(other)
    machine.write('keys.py', KEYS_SCRIPT)
    [there] = machine.run('[1, 2, 3, 4]', script='keys.py')
    assert there['names'][3] == '00000004-pow'
    shutil.copy2(task_file(str(other / 'results'), 'todo', '00000004-pow'),
                 task_file(results, 'todo', '00000004-pow'))
    [again] = project.run('[1, 2, 3, 4]', script='keys.py')
    assert again['names'] == ['00000001-pow', '00000002-pow', '00000003-pow', '00000004-pow']
    assert again['opened'] == 1  # that file alone
