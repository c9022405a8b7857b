"""The command line: `runforrest COMMAND ...` to look after a task list, and
`python -m runforrest TASKFILE RESULTFILE` to run one task by hand."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import runforrest
from runforrest import TaskList, defer

import faulty
import tasks
from conftest import TESTS, names, task_file


def cli(*arguments, cwd=TESTS, command=(sys.executable, '-m', 'runforrest')):
    """Run the command line tool; cwd=TESTS makes the task functions
    importable, as they are where a user runs it from their project."""
    return subprocess.run([*command, *map(str, arguments)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def console_script():
    """The installed `runforrest` command, next to this Python if possible."""
    script = (shutil.which('runforrest', path=os.path.dirname(sys.executable))
              or shutil.which('runforrest'))
    assert script, 'the runforrest console script is not installed'
    return [script]


@pytest.fixture
def mixed(tmp_path):
    """A list with 3 done, 3 failed (2 ValueError, 1 ZeroDivisionError), 1 todo."""
    tasklist = TaskList(tmp_path / 'tasklist')
    for x in range(3):
        tasklist.schedule(defer(tasks.square, x), metadata={'x': x})
    tasklist.schedule(defer(tasks.fail, 'one'), metadata={'x': 'a'})
    tasklist.schedule(defer(tasks.fail, 'two'))
    tasklist.schedule(defer(tasks.divide, 1, 0))
    assert len(list(tasklist.run(nprocesses=2))) == 6
    tasklist.schedule(defer(tasks.square, 9))
    return tasklist


# -- status ---------------------------------------------------------------

def test_status_counts_groups_failures_by_type_and_sums_runtime(mixed):
    done = cli('status', mixed.directory)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f'{mixed.directory}: 1 todo, 3 done, 3 fail, 0 running'
    assert lines[1] == 'failures:'
    assert lines[2].split()[:2] == ['2', 'ValueError']  # the bigger group first
    assert 'e.g. 00000004-fail: ValueError: one' in lines[2]
    assert lines[3].split()[:2] == ['1', 'ZeroDivisionError']
    assert lines[4].startswith('runtime: total ') and 'median' in lines[4]


def test_status_json(mixed):
    data = json.loads(cli('status', mixed.directory, '--json').stdout)
    assert (data['todo'], data['done'], data['fail'], data['running']) == (1, 3, 3, 0)
    assert data['driver'] is None
    assert data['failures']['ValueError']['tasks'] == ['00000004-fail', '00000005-fail']
    assert data['failures']['ZeroDivisionError']['count'] == 1
    assert data['runtime']['count'] == 6
    assert 0 < data['runtime']['max'] <= data['runtime']['total']


def test_the_console_script_and_python_m_are_the_same_tool(mixed, tmp_path):
    status = cli('status', mixed.directory, command=console_script())
    assert status.returncode == 0
    assert status.stdout == cli('status', mixed.directory).stdout
    taskfile = task_file(mixed.directory, 'todo', '00000007-square')
    assert cli(taskfile, tmp_path / 'out.pkl', command=console_script()).returncode == 0
    assert runforrest.read_task(tmp_path / 'out.pkl').returnvalue == 81


def test_status_while_a_driver_runs(tmp_path):
    signal = tmp_path / 'go'
    driver = subprocess.Popen([sys.executable, '-c', f"""
from runforrest import TaskList, defer
import tasks
tasklist = TaskList({str(tmp_path / 'tasklist')!r})
for x in range(2):
    tasklist.schedule(defer(tasks.step, x, wait={str(signal)!r}))
for task in tasklist.run(nprocesses=1):
    pass
"""], cwd=TESTS)
    try:
        deadline = time.monotonic() + 30
        while True:
            done = cli('status', tmp_path / 'tasklist', '--json')
            data = done.returncode == 0 and json.loads(done.stdout)
            if data and data['running'] or time.monotonic() > deadline:
                break
        assert (data['todo'], data['running']) == (2, 1)
        assert data['driver']['pid'] == driver.pid
        assert f'driver: pid {driver.pid} on ' in cli('status', tmp_path / 'tasklist').stdout

        # Neither a second driver nor clean may touch the list meanwhile.
        for command in ('run', 'clean'):
            refused = cli(command, tmp_path / 'tasklist')
            assert refused.returncode == 2
            assert f'another driver (pid {driver.pid} ' in refused.stderr
    finally:
        signal.touch()
        assert driver.wait(timeout=30) == 0
    assert json.loads(cli('status', tmp_path / 'tasklist', '--json').stdout)['done'] == 2


# -- run ------------------------------------------------------------------

def test_run_resumes_a_list_made_by_a_script(tmp_path):
    tasklist = TaskList(tmp_path / 'tasklist')
    for x in range(4):
        tasklist.schedule(defer(tasks.square, x))
    tasklist.schedule(defer(tasks.hang))
    for task in tasklist.run(nprocesses=1):
        break  # the script stops after one task; the rest stays in todo/
    assert len(names(tasklist.directory, 'todo')) == 4

    started = time.monotonic()
    done = cli('run', tasklist.directory, '-n', 2, '--autokill', 2)
    assert time.monotonic() - started < 30
    assert done.returncode == 1  # one task failed
    assert done.stdout.splitlines()[-1] == \
        f'3 done, 1 failed; see: runforrest status {tasklist.directory}'
    assert sorted(task.returnvalue for task in tasklist.done_tasks()) == [0, 1, 4, 9]
    [hung] = tasklist.fail_tasks()
    assert isinstance(hung.errorvalue, runforrest.TaskTimeout)
    assert names(tasklist.directory, 'todo') == []


def test_every_option_of_run(tmp_path):
    tasklist = TaskList(tmp_path / 'tasklist')
    retried = tasklist.schedule(defer(faulty.crash_first_time, str(tmp_path / 'crashed')))
    greedy = tasklist.schedule(defer(faulty.allocate, 1 << 30, 10 << 20))
    preloaded = tasklist.schedule(defer(tasks.imported_in))
    loud = tasklist.schedule(defer(tasks.fail, 'loudly'))
    log = tmp_path / 'run.log'
    done = cli('run', tasklist.directory, '--nprocesses', 2, '--start-method', 'forkserver',
               '--retries', 1, '--memory-limit', '100M', '--preload', 'tasks',
               '--logfile', log, '--print-errors', '--progress', '--json')
    assert done.returncode == 1, done.stderr  # two tasks failed
    assert json.loads(done.stdout) == {'done': 2, 'fail': 2}
    results = {task.taskname: task for task in [*tasklist.done_tasks(), *tasklist.fail_tasks()]}
    assert results[retried].returnvalue == 'second attempt'  # --retries
    assert isinstance(results[greedy].errorvalue, runforrest.TaskOutOfMemory)  # --memory-limit
    assert results[greedy].errorvalue.limit == 100 << 20
    importer, pid = results[preloaded].returnvalue
    assert importer != pid  # --preload: the template imported tasks, not the task
    assert '4/4' in done.stderr and 'done 2, failed 2' in done.stderr  # --progress
    text = log.read_text()  # --logfile: the tasks' output, and what happened
    assert 'about to fail' in text and f'fail {loud}' in text and f'done {retried}' in text
    assert 'about to fail' not in done.stdout + done.stderr
    # --print-errors, to the logfile as everything else
    assert f'task {loud} failed:\nTraceback' in text and 'ValueError: loudly' in text


# -- retry ----------------------------------------------------------------

def test_retry_by_prefix_by_error_type_and_all(mixed):
    done = cli('retry', mixed.directory, '00000004')
    assert (done.returncode, done.stdout) == (0, '1 failed task moved back to todo/\n')
    assert names(mixed.directory, 'fail') == ['00000005-fail', '00000006-divide']

    done = cli('retry', mixed.directory, '--error', 'ZeroDivisionError', '--json')
    assert json.loads(done.stdout) == ['00000006-divide']

    assert cli('retry', mixed.directory).stdout == '1 failed task moved back to todo/\n'
    assert names(mixed.directory, 'fail') == []
    assert len(names(mixed.directory, 'todo')) == 4


def test_retry_by_full_name_and_several_at_once(mixed):
    done = cli('retry', mixed.directory, '00000004-fail', '00000006')
    assert done.stdout == '2 failed tasks moved back to todo/\n'
    assert names(mixed.directory, 'fail') == ['00000005-fail']


# -- show -----------------------------------------------------------------

def test_show_tells_everything_about_a_failed_task(mixed):
    by_file = cli('show', task_file(mixed.directory, 'fail', '00000004-fail'))
    by_prefix = cli('show', os.path.join(mixed.directory, '00000004'))
    assert by_file.returncode == by_prefix.returncode == 0
    assert by_file.stdout == by_prefix.stdout
    text = by_file.stdout
    assert text.startswith('task      00000004-fail (fail)\n')
    assert "call      fail('one')" in text
    assert "metadata  {'x': 'a'}" in text
    assert 'runtime   ' in text
    assert 'error     ValueError: one' in text
    traceback = text.split('traceback:\n', 1)[1]
    assert 'tasks.py' in traceback and 'raise ValueError(message)' in traceback
    assert text.rstrip().endswith('00000004-fail.log):\nabout to fail')


def test_show_json(mixed):
    data = json.loads(cli('show', os.path.join(mixed.directory, '00000002'), '--json').stdout)
    assert data['name'] == '00000002-square' and data['state'] == 'done'
    assert data['call'] == 'square(1)'
    assert data['metadata'] == {'x': 1}
    assert data['error'] is None and data['traceback'] is None
    assert data['runtime'] > 0
    assert data['output'] == ''


def test_show_lines_limits_the_output_to_its_last_lines(tmp_path):
    tasklist = TaskList(tmp_path / 'tasklist')
    name = tasklist.schedule(defer(tasks.print_lines, 'line', 10))
    list(tasklist.run(nprocesses=1))
    for lines, shown in [(3, range(7, 10)), (0, range(10)), (None, range(10))]:
        options = [] if lines is None else ['--lines', lines]  # default: 200
        done = cli('show', os.path.join(tasklist.directory, name), *options, '--json')
        assert json.loads(done.stdout)['output'] == '\n'.join(f'line {n}' for n in shown)


def test_show_finds_the_tasks_module_as_the_driver_did(tmp_path):
    """The usual setup: a script and its module side by side, and the
    console script run from there; its own sys.path lacks the script's
    directory, but the task file records the driver's."""
    (tmp_path / 'mymodule.py').write_text('def boom(x):\n    raise ValueError(x)\n')
    (tmp_path / 'script.py').write_text(
        'import mymodule\nfrom runforrest import TaskList, defer\n'
        "tasklist = TaskList('tasklist')\n"
        "tasklist.schedule(defer(mymodule.boom, 7), metadata='seven')\n"
        'for task in tasklist.run():\n    pass\n')
    subprocess.run([sys.executable, 'script.py'], cwd=tmp_path, check=True, timeout=60)
    done = cli('show', 'tasklist/00000001', cwd=tmp_path, command=console_script())
    assert 'unreadable' not in done.stdout
    assert 'call      boom(7)' in done.stdout
    assert "metadata  'seven'" in done.stdout


# -- clean ----------------------------------------------------------------

def test_clean_only_the_failed_tasks(mixed):
    failed = names(mixed.directory, 'fail')
    outputs = os.path.join(mixed.directory, 'output')
    for name in names(mixed.directory, 'done'):  # as if they had printed
        with open(os.path.join(outputs, f'{name}.log'), 'w') as file:
            file.write('done\n')
    assert {f'{name}.log' for name in failed} & set(os.listdir(outputs))
    done = cli('clean', mixed.directory, '--fail')
    assert (done.returncode, done.stdout) == (0, f'removed fail tasks of {mixed.directory}\n')
    assert names(mixed.directory, 'fail') == []
    assert len(names(mixed.directory, 'done')) == 3 and len(names(mixed.directory, 'todo')) == 1
    assert sorted(os.listdir(outputs)) == \
        ['00000001-square.log', '00000002-square.log', '00000003-square.log']


def test_clean_the_todo_then_the_done_tasks(mixed):
    failed = names(mixed.directory, 'fail')
    done = cli('clean', mixed.directory, '--todo')
    assert (done.returncode, done.stdout) == (0, f'removed todo tasks of {mixed.directory}\n')
    assert names(mixed.directory, 'todo') == [] and len(names(mixed.directory, 'done')) == 3
    done = cli('clean', mixed.directory, '--done')
    assert (done.returncode, done.stdout) == (0, f'removed done tasks of {mixed.directory}\n')
    assert names(mixed.directory, 'done') == [] and names(mixed.directory, 'fail') == failed


def test_clean_everything_removes_the_directory(mixed):
    done = cli('clean', mixed.directory)
    assert done.stdout == f'removed todo, done, fail tasks of {mixed.directory}\n'
    assert not os.path.exists(mixed.directory)


# -- errors in use ----------------------------------------------------------

@pytest.mark.parametrize('case', ['not a task list', 'unknown task', 'ambiguous prefix'])
def test_mistakes_get_one_clear_line_and_a_failing_status(mixed, tmp_path, case):
    (tmp_path / 'notes').mkdir()
    command, expected = {
        'not a task list': (['status', tmp_path / 'notes'], 'is not a task list'),
        'unknown task': (['show', os.path.join(mixed.directory, 'nosuchtask')],
                         'no task named nosuchtask'),
        'ambiguous prefix': (['show', os.path.join(mixed.directory, '0000000')],
                             '0000000 fits 7 tasks'),
    }[case]
    done = cli(*command)
    assert done.returncode != 0
    assert done.stdout == ''
    [line] = done.stderr.splitlines()
    assert line.startswith(f'runforrest {command[0]}: ') and expected in line


def test_retry_of_an_unknown_task_is_refused(mixed):
    done = cli('retry', mixed.directory, '00000001')  # done, not failed
    assert done.returncode != 0
    assert 'no task named 00000001' in done.stderr
    assert names(mixed.directory, 'done')[0] == '00000001-square'


# -- one task file, by hand -------------------------------------------------

@pytest.fixture
def taskfile(tmp_path):
    """A function that schedules a task and returns its task file."""
    tasklist = TaskList(tmp_path / 'tasklist')

    def make(fun, *args):
        return task_file(tasklist.directory, 'todo', tasklist.schedule(defer(fun, *args)))
    return make


def test_a_task_file_that_succeeds(taskfile, tmp_path):
    done = cli(taskfile(tasks.square, 5), tmp_path / 'out.pkl')
    assert (done.returncode, done.stderr) == (0, '')
    assert runforrest.read_task(tmp_path / 'out.pkl').returnvalue == 25


def test_a_task_file_that_fails(taskfile, tmp_path):
    done = cli(taskfile(tasks.fail, 'oops'), tmp_path / 'out.pkl')
    assert done.returncode == 1
    assert done.stdout == 'about to fail\n' and done.stderr == ''
    result = runforrest.read_task(tmp_path / 'out.pkl')
    assert isinstance(result.errorvalue, ValueError)
    assert 'raise ValueError(message)' in result.traceback


@pytest.mark.parametrize('flag', ['-p', '--do_print'])
def test_print_shows_the_traceback(taskfile, tmp_path, flag):
    done = cli(taskfile(tasks.fail, 'oops'), tmp_path / 'out.pkl', flag)
    assert done.returncode == 1
    assert done.stderr.startswith('Traceback (most recent call last):')
    assert done.stderr.rstrip().endswith('ValueError: oops')


@pytest.mark.parametrize('flag', ['-r', '--do_raise'])
def test_raise_reraises_with_the_real_traceback(taskfile, tmp_path, flag):
    done = cli(taskfile(tasks.fail, 'oops'), tmp_path / 'out.pkl', flag)
    assert done.returncode == 1
    # The task function's own frame is there, for a debugger to stop in.
    assert 'tasks.py", line' in done.stderr and ', in fail\n' in done.stderr
    assert done.stderr.rstrip().endswith('ValueError: oops')
    assert os.path.exists(tmp_path / 'out.pkl')  # written before raising


@pytest.mark.parametrize('flag', ['-s', '--sessionfile'])
def test_a_session_file_provides_the_drivers_globals(taskfile, tmp_path, flag):
    session = tmp_path / 'session.pkl'
    subprocess.run([sys.executable, '-c', "import dill; GREETING = 'hello'; "
                    f'dill.dump_module({str(session)!r})'], check=True, timeout=60)
    done = cli(taskfile(tasks.main_global, 'GREETING'), tmp_path / 'out.pkl', flag, session)
    assert done.returncode == 0, done.stderr
    assert runforrest.read_task(tmp_path / 'out.pkl').returnvalue == 'hello'


def test_relative_paths_are_relative_to_where_the_command_runs(taskfile, tmp_path):
    # The task runs in the driver's directory, yet the files named on
    # the command line are where the user is.
    todo = os.path.relpath(taskfile(tasks.main_global, 'GREETING'), tmp_path)
    subprocess.run([sys.executable, '-c', "import dill; GREETING = 'hello'; "
                    "dill.dump_module('session.pkl')"], cwd=tmp_path, check=True, timeout=60)
    done = cli(todo, 'out.pkl', '-s', 'session.pkl', '-p', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert os.path.exists(tmp_path / 'out.pkl')


def test_a_missing_task_file_is_a_usage_error(tmp_path):
    done = cli(tmp_path / 'nosuch.pkl', tmp_path / 'out.pkl')
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert 'nosuch.pkl does not exist' in line
    assert not os.path.exists(tmp_path / 'out.pkl')


def test_a_result_file_that_cannot_be_written_is_a_usage_error(taskfile, tmp_path):
    done = cli(taskfile(tasks.square, 2), tmp_path / 'nosuchdir' / 'out.pkl')
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith('runforrest: ') and 'nosuchdir' in line


def test_autokill_stops_a_hanging_task_and_records_why(taskfile, tmp_path):
    started = time.monotonic()
    done = cli(taskfile(tasks.hang), tmp_path / 'out.pkl', '--autokill', 0.5)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    error = runforrest.read_task(tmp_path / 'out.pkl').errorvalue
    assert isinstance(error, runforrest.TaskTimeout) and error.seconds == 0.5


def test_memory_limit_and_output_by_hand(taskfile, tmp_path):
    log = tmp_path / 'task.log'
    done = cli(taskfile(tasks.hold_memory, 400), tmp_path / 'out.pkl', '--memory-limit', '100M',
               '--output', log)
    assert done.returncode == 1, done.stderr
    error = runforrest.read_task(tmp_path / 'out.pkl').errorvalue
    assert isinstance(error, runforrest.TaskOutOfMemory) and error.limit == 100 << 20
    done = cli(taskfile(tasks.fail, 'oops'), tmp_path / 'out.pkl', '--output', log)
    assert done.returncode == 1 and done.stdout == ''
    assert log.read_text() == 'about to fail\n'
