"""Fault tests: every way a task (or the driver) can fail, inflicted for real.

Each fault runs inside a batch of healthy tasks, and each test checks that
the healthy tasks' results come back and are stored in done/, that the
faulty task is yielded and filed in fail/ with an error that states the real
cause, that no process of the task is left running, and that the run goes on.
Task functions live in tests/faulty.py; tasks that must be watched write a
marker with their pids, and the tests poll (with deadlines) until those
processes are gone.

Covered:
- a task raises: the exception and a traceback naming the function; an
  exception that cannot be pickled (holds a socket; __init__ needs two
  arguments) arrives as UnpicklableException with type name, message and
  traceback; one that holds a lock keeps its type name.
- a task segfaults, aborts, SIGKILLs itself (TaskCrashed naming the signal),
  calls os._exit(3) (exit code 3), each with a child that must die too; closes its stdout and stderr (still done),
  writes junk to every descriptor it has (still done, the run goes on).
- a task hangs, alone, with a `sleep 1000` child, with a multiprocessing
  child: autokill kills the whole group, TaskTimeout says so.
- a task uses too much memory, alone or with children that each stay under
  the limit: memory_limit kills its group, TaskOutOfMemory.
- a task returns an unpicklable object (generator, socket): UnpicklableResult.
- a task returns 300 MB: it arrives intact, and the driver's peak memory
  grows by about one copy (driver in a subprocess).
- a task prints 20 MB, with and without a logfile: nothing blocks, the
  output is complete in output/NAME.log (and the logfile, or the driver's
  stdout), and the driver's memory does not grow with it.
- a task forks or starts threads until the system refuses (RLIMIT_NPROC, with
  the driver running as an unprivileged user): the healthy tasks still
  complete; and, deterministically, a task process that starts when there
  is room for it but not for its lifeline thread still runs once room comes.
  Tasks see OMP_NUM_THREADS=1 etc. unless the user set them.
- retries=1: a task that crashes once ends in done/, one that always
  crashes ends in fail/ after two attempts; retries repeat crashes, timeouts
  and memory kills, not a task's own exception or an unpicklable result.
- a SIGKILLed driver's task processes die with it (the lifeline); where
  exactly the driver may die, and what the next run then does, is
  test_crashpoints.py's business.
- Ctrl-C, an exception in the loop body, `break`: running tasks are killed
  at once and stay in todo/, results in done/ stay intact.
- a kill in the middle of writing a result leaves only a hidden .tmp file,
  which the next run removes.
- garbage, empty, truncated and unloadable files in todo/ fail that task
  alone with TaskFileError, their bytes kept in fail/; done_tasks()/fail_tasks() raise on, or skip with
  a warning, a damaged file.
- a second driver on the same list gets TaskListBusy.
- the disk fills up (a 2 MB tmpfs): a result that does not fit fails its task,
  and a disk too full to record even that stops the run.
"""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import runforrest
from runforrest import (TaskCrashed, TaskFileError, TaskList, TaskListBusy,
                        TaskOutOfMemory, TaskTimeout, UnpicklableException,
                        UnpicklableResult, defer)

import faulty
from conftest import (DEADLINE, PROMPTLY, children_of, collect_file, driver_is_gone,
                      environment, is_alive, kill, layout, names, session_members, stat_fields,
                      stray_files, task_file, wait_for, wait_gone)


START_METHODS = ['forkserver', 'spawn']
MiB = 1 << 20


# ---------------------------------------------------------------------------
# Helpers: markers, drivers in subprocesses
# ---------------------------------------------------------------------------

def read_marker(path):
    with open(path) as file:
        return json.load(file)


def wait_marker(path, what='the task to start'):
    wait_for(lambda: os.path.exists(path), f'{what} (marker {path})')
    return read_marker(path)


def marker_processes(path):
    return [tuple(process) for process in read_marker(path)['processes']]


class Processes:
    """What a test started that might outlive it: drivers in subprocesses
    (each in a session of its own) and task processes known by markers.
    Teardown kills what is left, so that a failing test leaves nothing."""

    def __init__(self):
        self.drivers = []
        self.markers = []

    def driver(self, command, output, **options):
        with open(output, 'wb') as out:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       env=environment(), **options)
        self.drivers.append(process)
        return process

    def watch(self, marker):
        self.markers.append(marker)
        return marker

    def cleanup(self):
        for driver in self.drivers:
            for pid in session_members(driver.pid):
                kill(pid)
            driver.kill()
            driver.wait()
        for marker in self.markers:
            if os.path.exists(marker):
                for pid, started in marker_processes(marker):
                    if is_alive(pid, started):
                        kill(pid)


def templates(pids, parent):
    """Those of pids that are forkserver templates started by parent; a
    process that ends meanwhile is none."""
    found = []
    for pid in pids:
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as file:
                command = file.read()
        except OSError:
            continue
        fields = stat_fields(pid)
        if fields and int(fields[1]) == parent and b'_serve_forks' in command:
            found.append(pid)
    return found


@pytest.fixture
def processes():
    tracker = Processes()
    yield tracker
    tracker.cleanup()


DRIVER_PRELUDE = '''\
import json, os, resource, sys, time
import faulty
from runforrest import TaskList, defer

def say(*words):
    print(*words, flush=True)

def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
'''


def write_driver(tmp_path, body, name='driver.py'):
    script = tmp_path / name
    script.write_text(DRIVER_PRELUDE + textwrap.dedent(body))
    return str(script)


def driver_lines(path):
    try:
        with open(path) as file:
            return file.read().splitlines()
    except FileNotFoundError:
        return []


def finish(driver, output, timeout=DEADLINE * 2):
    """Wait for a driver subprocess to end and return its output lines."""
    try:
        driver.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f'driver still running after {timeout} s; its output:\n'
                             + '\n'.join(driver_lines(output)[-30:])) from None
    return driver_lines(output)


def result_line(lines, tag):
    """The JSON a driver printed after `tag`."""
    found = [line[len(tag) + 1:] for line in lines if line.startswith(tag + ' ')]
    assert found, f'the driver printed no {tag!r} line; its output:\n' + '\n'.join(lines[-30:])
    return json.loads(found[-1])


# ---------------------------------------------------------------------------
# A faulty task in a batch of healthy ones
# ---------------------------------------------------------------------------

def run_batch(tasklist, faulty_task, start_method='forkserver', expect='fail', **options):
    """Schedule faulty_task between four healthy tasks, run them all, check
    the healthy ones and where the faulty one was filed; return the faulty
    task as yielded, and as stored."""
    healthy = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (1, 2)}
    bad = tasklist.schedule(faulty_task)
    healthy.update({tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (3, 4)})
    yielded = {}
    for task in tasklist.run(nprocesses=2, start_method=start_method, **options):
        assert task.taskname not in yielded, f'{task.taskname} was yielded twice'
        yielded[task.taskname] = task
    assert set(yielded) == set(healthy) | {bad}, 'the run did not yield every task'
    for name, value in healthy.items():
        assert yielded[name].errorvalue is None, f'healthy {name} failed: {yielded[name].errorvalue!r}'
        assert yielded[name].returnvalue == value
    done = sorted(healthy) + ([bad] if expect == 'done' else [])
    assert layout(tasklist.directory) == {
        'todo': [], 'done': sorted(done), 'fail': [bad] if expect == 'fail' else [],
        'collect': []}
    stored = {task.taskname: task for task in tasklist.done_tasks()}
    assert {name: stored[name].returnvalue for name in healthy} == healthy
    if expect == 'fail':
        [stored_bad] = tasklist.fail_tasks()
    else:
        stored_bad = stored[bad]
    assert stored_bad.taskname == bad
    assert stray_files(tasklist.directory) == []
    return yielded[bad], stored_bad


# -- raising ------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
def test_raising_task_keeps_its_exception_and_traceback(tasklist, start_method):
    task, stored = run_batch(tasklist, defer(faulty.raise_value_error, 'bad input 42'),
                             start_method)
    for version in (task, stored):
        assert type(version.errorvalue) is ValueError
        assert str(version.errorvalue) == 'bad input 42'
        assert 'raise_value_error' in version.traceback
        assert 'ValueError: bad input 42' in version.traceback
        assert version.returnvalue is None


@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('fun, args, type_name, message', [
    (faulty.raise_socket_holding_error, ('socket inside',), 'SocketHoldingError',
     'socket inside'),
    (faulty.raise_two_argument_error, (7, 'needs two'), 'TwoArgumentError',
     'code 7: needs two'),
], ids=['holds-socket', 'init-needs-two-args'])
def test_unpicklable_exception_keeps_type_message_and_traceback(
        tasklist, start_method, fun, args, type_name, message):
    task, stored = run_batch(tasklist, defer(fun, *args), start_method)
    for version in (task, stored):
        error = version.errorvalue
        assert isinstance(error, UnpicklableException), repr(error)
        assert error.type_name == type_name
        assert error.message == message
        assert type_name in str(error) and message in str(error)
        assert fun.__name__ in version.traceback
        assert f'{type_name}: {message}' in version.traceback


def test_exception_holding_a_lock_keeps_its_type(tasklist):
    # The C pickler refuses a lock; dill carries it. Either the exception
    # itself arrives, or a stand-in that names it: never a pickling error.
    task, _ = run_batch(tasklist, defer(faulty.raise_lock_holding_error, 'locked'))
    error = task.errorvalue
    type_name = getattr(error, 'type_name', type(error).__name__)
    assert type_name == 'LockHoldingError', repr(error)
    assert 'locked' in str(error)
    assert 'raise_lock_holding_error' in task.traceback


# -- crashing -----------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('fun, signal_name', [
    (faulty.segfault, 'SIGSEGV'),
    (faulty.abort, 'SIGABRT'),
    (faulty.kill_self, 'SIGKILL'),
])
def test_crash_by_signal_names_the_signal(tasklist, tmp_path, processes, start_method,
                                          fun, signal_name):
    marker = processes.watch(str(tmp_path / 'marker.json'))
    task, stored = run_batch(tasklist, defer(fun, marker), start_method)
    for version in (task, stored):
        assert isinstance(version.errorvalue, TaskCrashed), repr(version.errorvalue)
        assert version.errorvalue.signal == signal_name
        assert signal_name in str(version.errorvalue)
    tree = marker_processes(marker)
    assert len(tree) == 2, tree
    wait_gone(tree, 'the crashed task and its child')


@pytest.mark.parametrize('start_method', START_METHODS)
def test_exit_code_is_recorded(tasklist, tmp_path, processes, start_method):
    marker = processes.watch(str(tmp_path / 'marker.json'))
    task, stored = run_batch(tasklist, defer(faulty.exit_with, marker, 3), start_method)
    for version in (task, stored):
        assert isinstance(version.errorvalue, TaskCrashed), repr(version.errorvalue)
        assert version.errorvalue.exitcode == 3
        assert version.errorvalue.signal is None
        assert 'code 3' in str(version.errorvalue)
    tree = marker_processes(marker)
    assert len(tree) == 2, tree
    wait_gone(tree, 'the exited task and its child')


@pytest.mark.parametrize('start_method', START_METHODS)
def test_task_that_closes_stdout_and_stderr_still_succeeds(tasklist, start_method):
    task, stored = run_batch(tasklist, defer(faulty.close_stdio_and_return, 'fine'),
                             start_method, expect='done')
    assert task.errorvalue is None and task.returnvalue == 'fine'
    assert stored.returnvalue == 'fine'
    assert 'before closing' in tasklist.output(task)


@pytest.mark.parametrize('start_method', START_METHODS)
def test_task_that_writes_junk_to_its_descriptors_harms_only_itself(tasklist, start_method):
    task, stored = run_batch(tasklist, defer(faulty.scribble_on_descriptors, 'fine'),
                             start_method, expect='done')
    assert task.returnvalue == stored.returnvalue == 'fine'


# -- hanging ------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('fun', [faulty.hang, faulty.hang_with_subprocess,
                                 faulty.hang_with_multiprocessing],
                         ids=['alone', 'sleep-child', 'multiprocessing-child'])
def test_hanging_task_is_killed_with_its_children(tasklist, tmp_path, processes,
                                                  start_method, fun):
    marker = processes.watch(str(tmp_path / 'marker.json'))
    started = time.monotonic()
    task, stored = run_batch(tasklist, defer(fun, marker), start_method, autokill=3)
    assert time.monotonic() - started < DEADLINE
    for version in (task, stored):
        assert isinstance(version.errorvalue, TaskTimeout), repr(version.errorvalue)
        assert version.errorvalue.seconds == 3
        assert 'autokill' in str(version.errorvalue)
        assert 'process group' in str(version.errorvalue)
        assert version.runtime >= 3
    # The task and every child it made (same process group) are gone.
    tree = marker_processes(marker)
    assert len(tree) == (1 if fun is faulty.hang else 2)
    wait_gone(tree, 'the hanging task and its children')


# -- memory -------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
def test_task_over_the_memory_limit_is_killed(tasklist, start_method):
    # 1 GiB in 10 MiB steps of 10 ms: the watchdog (5 times a second) sees it
    # pass 200 MiB long before the end; bounded, so the machine is safe anyway.
    task, stored = run_batch(tasklist, defer(faulty.allocate, 1 << 30, 10 * MiB),
                             start_method, memory_limit='200M')
    for version in (task, stored):
        error = version.errorvalue
        assert isinstance(error, TaskOutOfMemory), repr(error)
        assert error.limit == 200 * MiB
        assert 200 * MiB < error.used < (1 << 30) + 200 * MiB
        assert 'memory_limit' in str(error)
        assert version.returnvalue is None


def test_the_memory_limit_counts_the_whole_process_group(tasklist, tmp_path, processes):
    # Three children of 100 MiB each: none is over the limit of 200 MiB, together they are.
    marker = processes.watch(str(tmp_path / 'marker.json'))
    task, stored = run_batch(tasklist, defer(faulty.allocate_in_children, marker, 3, 100 * MiB),
                             memory_limit='200M')
    for version in (task, stored):
        error = version.errorvalue
        assert isinstance(error, TaskOutOfMemory), repr(error)
        assert 200 * MiB < error.used, error
    tree = marker_processes(marker)
    assert len(tree) == 4, tree
    wait_gone(tree, 'the task and its children over the limit')


# -- results ------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('fun, type_name', [(faulty.return_generator, 'generator'),
                                            (faulty.return_socket, 'socket')])
def test_unpicklable_result_names_its_type(tasklist, start_method, fun, type_name):
    task, stored = run_batch(tasklist, defer(fun), start_method)
    for version in (task, stored):
        assert isinstance(version.errorvalue, UnpicklableResult), repr(version.errorvalue)
        assert version.errorvalue.type_name == type_name
        assert type_name in str(version.errorvalue)


def test_huge_result_arrives_intact_with_one_copy_in_memory(tmp_path, processes):
    size = 300 * MiB
    digest_file = tmp_path / 'digest'
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        import hashlib
        tasklist = TaskList(sys.argv[1])
        small = tasklist.schedule(defer(faulty.double, 21))
        big = tasklist.schedule(defer(faulty.big_result, int(sys.argv[2]), 7, sys.argv[3]))
        before = peak_rss()
        seen = {}
        for task in tasklist.run(nprocesses=2):
            value = task.returnvalue
            if task.taskname == big:
                seen[big] = [value is not None and len(value),
                             value is not None and hashlib.sha256(value).hexdigest(),
                             repr(task.errorvalue)]
            else:
                seen[task.taskname] = [value, None, repr(task.errorvalue)]
            del task, value
        say('result', json.dumps({'seen': seen, 'big': big, 'small': small,
                                  'growth': peak_rss() - before}))
    ''')
    driver = processes.driver([sys.executable, script, str(tmp_path / 'tasks'), str(size),
                               str(digest_file)], output)
    lines = finish(driver, output)
    assert driver.returncode == 0, '\n'.join(lines[-30:])
    report = result_line(lines, 'result')
    big, small = report['big'], report['small']
    assert report['seen'][small] == [42, None, 'None']
    assert report['seen'][big] == [size, digest_file.read_text(), 'None']
    assert names(tmp_path / 'tasks', 'done') == sorted([small, big])
    assert os.path.getsize(tmp_path / 'tasks' / 'done' / f'{big}.pkl') > size
    print(f'driver peak memory grew by {report["growth"] / MiB:.0f} MiB '
          f'for a {size / MiB:.0f} MiB result')
    # One copy of the result in the driver, with room for the pickle machinery.
    assert report['growth'] < 2.5 * size, f'driver grew by {report["growth"] / MiB:.0f} MiB'


@pytest.mark.parametrize('with_logfile', [False, True], ids=['terminal', 'logfile'])
def test_megabytes_of_output_neither_block_nor_pile_up(tmp_path, processes, with_logfile):
    lines_printed = 200_000  # 100 bytes each: 20 MB
    output = tmp_path / 'driver.out'
    logfile = tmp_path / 'run.log'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1], logfile=sys.argv[3] if sys.argv[3] != '-' else None)
        names = [tasklist.schedule(defer(faulty.flood, int(sys.argv[2]))),
                 tasklist.schedule(defer(faulty.double, 5))]
        before = peak_rss()
        results = {task.taskname: task.returnvalue for task in tasklist.run(nprocesses=2)}
        say('result', json.dumps({'names': names, 'results': results,
                                  'growth': peak_rss() - before}))
    ''')
    driver = processes.driver([sys.executable, script, str(tmp_path / 'tasks'),
                               str(lines_printed), str(logfile) if with_logfile else '-'],
                              output)
    lines = finish(driver, output)
    assert driver.returncode == 0, '\n'.join(lines[-30:])
    report = result_line(lines, 'result')
    flood, double = report['names']
    assert report['results'] == {flood: lines_printed * 100, double: 10}
    # The task's output, whole, in output/NAME.log ...
    log = (tmp_path / 'tasks' / 'output' / f'{flood}.log').read_text().splitlines()
    flood_lines = [line for line in log if line.startswith('line ')]
    assert len(flood_lines) == lines_printed
    assert flood_lines[-1].startswith(f'line {lines_printed - 1:09d} ')
    assert 'flood finished' in log
    # ... and echoed where the run reports: the logfile, or the terminal.
    echoed = logfile.read_text().splitlines() if with_logfile else lines
    assert sum(line.startswith('line ') for line in echoed) == lines_printed
    assert 'flood finished' in echoed
    print(f'driver peak memory grew by {report["growth"] / MiB:.1f} MiB for 20 MB of output')
    # The driver copies the output piece by piece rather than holding it.
    assert report['growth'] < 8 * MiB, f'driver grew by {report["growth"] / MiB:.1f} MiB'


# -- process and thread limits ------------------------------------------------

NOBODY = 65534
# Root ignores RLIMIT_NPROC, so these tests run the driver as 'nobody',
# with a small limit on its processes and threads. It keeps the capabilities
# to read and write files (the venv and tmp_path are in root-only
# directories), not the ones (CAP_SYS_RESOURCE, CAP_SYS_ADMIN) that lift the
# limit.
AS_NOBODY = ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups',
             '--inh-caps=+dac_override,+dac_read_search',
             '--ambient-caps=+dac_override,+dac_read_search', '--']
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason='needs root, to run the driver as an unprivileged user '
    'whose process limit (RLIMIT_NPROC) is enforced')
needs_setpriv = pytest.mark.skipif(shutil.which('setpriv') is None,
                                   reason='needs setpriv (util-linux)')


def processes_of(uid):
    """Processes and threads of a user, zombies included: all of them count
    against the user's RLIMIT_NPROC."""
    count = 0
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/status') as file:
                    status = dict(line.split(':', 1) for line in file if ':' in line)
                if int(status['Uid'].split()[0]) == uid:
                    count += int(status['Threads'])
            except (OSError, KeyError, ValueError):
                pass
    return count


@pytest.fixture
def nobody_limited(processes):
    """Start commands as 'nobody' with RLIMIT_NPROC = limit, in a clean
    slate: no process of nobody's (a zombie of an earlier test, say) may
    take part of the limit, before or after."""
    wait_for(lambda: processes_of(NOBODY) == 0, 'earlier processes of nobody to go')

    def start(command, output, limit):
        return processes.driver(
            AS_NOBODY + command, output,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit)))

    yield start
    processes.cleanup()
    wait_for(lambda: processes_of(NOBODY) == 0, 'the processes of nobody to go')


@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('bomb', ['fork_bomb', 'thread_bomb'])
@needs_root
@needs_setpriv
def test_process_and_thread_bombs_leave_the_others_running(tmp_path, nobody_limited,
                                                            start_method, bomb):
    limit = 40
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1])
        healthy = {tasklist.schedule(defer(faulty.slow_double, x, 0.3)): 2 * x for x in (1,)}
        bomb = tasklist.schedule(defer(getattr(faulty, sys.argv[3]), 200, 1.5))
        healthy.update({tasklist.schedule(defer(faulty.slow_double, x, 0.3)): 2 * x
                        for x in range(2, 8)})
        results = {}
        for task in tasklist.run(nprocesses=3, start_method=sys.argv[2]):
            error = task.errorvalue
            results[task.taskname] = [task.returnvalue, None if error is None
                                      else f'{type(error).__name__}: {error}']
        say('result', json.dumps({'healthy': healthy, 'bomb': bomb, 'results': results}))
    ''')
    driver = nobody_limited([sys.executable, script, str(tmp_path / 'tasks'), start_method,
                             bomb], output, limit)
    lines = finish(driver, output)
    assert driver.returncode == 0, '\n'.join(lines[-30:])
    report = result_line(lines, 'result')
    results = report['results']
    failures = {name: result for name, result in results.items() if result[1] is not None}
    assert list(failures) == [report['bomb']], f'only the bomb may fail: {failures}'
    value, error = results[report['bomb']]
    print(f'{bomb} ({start_method}): {error}')
    # The bomb really hit the limit (it stopped before its own bound of 200).
    assert 'RuntimeError' in error and ('Resource temporarily unavailable' in error
                                        or "can't start new thread" in error), error
    for name, expected in report['healthy'].items():
        assert results[name] == [expected, None]
    assert names(tmp_path / 'tasks', 'done') == sorted(report['healthy'])


@pytest.mark.parametrize('start_method', START_METHODS)
@needs_root
@needs_setpriv
def test_task_process_with_no_room_for_a_thread_waits_for_room(tmp_path, nobody_limited,
                                                              start_method):
    # The system has room for exactly one more process: the task's process
    # starts, but the thread it needs to watch its driver (the lifeline)
    # cannot, until the hog that fills the process table leaves. A healthy
    # task must not fail for that: the limit is passing, like a refused fork.
    hog_ready = tmp_path / 'hog-ready'
    go = tmp_path / 'go'
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1])
        name = tasklist.schedule(defer(faulty.slow_double, 21, 0.1))
        while not os.path.exists(sys.argv[3]):  # the test says when
            time.sleep(0.01)
        for task in tasklist.run(nprocesses=1, start_method=sys.argv[2]):
            say('result', json.dumps([task.taskname, task.returnvalue,
                                      None if task.errorvalue is None
                                      else f'{type(task.errorvalue).__name__}: {task.errorvalue}']))
    ''')
    driver = nobody_limited([sys.executable, script, str(tmp_path / 'tasks'), start_method,
                             str(go)], output, 30)
    # The driver waits with one process; forkserver adds its template process.
    leave_free = 1 + (start_method == 'forkserver')
    nobody_limited([sys.executable, faulty.__file__, str(hog_ready), str(leave_free), '2'],
                   tmp_path / 'hog.out', 30)
    wait_for(lambda: hog_ready.exists() and hog_ready.read_text(), 'the hog to fill the limit')
    go.touch()
    lines = finish(driver, output)
    assert driver.returncode == 0, '\n'.join(lines[-30:])
    name, value, error = result_line(lines, 'result')
    log = TaskList.open(tmp_path / 'tasks').output(name)
    assert (value, error) == (42, None), f'the task failed: {error}; its output:\n{log}'


@pytest.mark.parametrize('start_method', START_METHODS)
def test_tasks_get_one_thread_per_library_unless_the_user_says(tasklist, monkeypatch,
                                                               start_method):
    for name in faulty.thread_variables():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    tasklist.schedule(defer(faulty.thread_variables))
    [task] = tasklist.run(start_method=start_method)
    expected = dict.fromkeys(faulty.thread_variables(), '1')
    expected['OMP_NUM_THREADS'] = '3'
    assert task.returnvalue == expected


# -- retries ------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
def test_retries_rerun_crashed_tasks(tasklist, tmp_path, start_method):
    attempts = tmp_path / 'attempts'
    healthy = tasklist.schedule(defer(faulty.double, 1))
    once = tasklist.schedule(defer(faulty.crash_first_time, str(tmp_path / 'crashed-once')))
    always = tasklist.schedule(defer(faulty.always_crash, str(attempts)))
    results = {task.taskname: task for task in
               tasklist.run(nprocesses=2, retries=1, start_method=start_method)}
    assert sorted(results) == sorted([healthy, once, always]), 'each task is yielded once'
    assert results[healthy].returnvalue == 2
    assert results[once].errorvalue is None
    assert results[once].returnvalue == 'second attempt'
    assert isinstance(results[always].errorvalue, TaskCrashed)
    assert results[always].errorvalue.signal == 'SIGABRT'
    assert len(attempts.read_text().split()) == 2, 'one run and one retry'
    assert layout(tasklist.directory) == {'todo': [], 'done': sorted([healthy, once]),
                                          'fail': [always], 'collect': []}


@pytest.mark.parametrize('how, options, error_type, runs', [
    ('raise', {}, ValueError, 1),  # the task's own exception: it would raise again
    ('unpicklable', {}, UnpicklableResult, 1),  # so would its result
    ('crash', {}, TaskCrashed, 3),
    ('hang', {'autokill': 2}, TaskTimeout, 3),
    ('allocate', {'memory_limit': '100M'}, TaskOutOfMemory, 3),
])
def test_retries_repeat_crashes_and_kills_not_a_tasks_own_errors(tasklist, tmp_path, how,
                                                                 options, error_type, runs):
    effects = tmp_path / 'runs'
    name = tasklist.schedule(defer(faulty.misbehave, str(effects), how))
    [task] = tasklist.run(nprocesses=1, retries=2, **options)
    assert (task.taskname, type(task.errorvalue)) == (name, error_type), repr(task.errorvalue)
    assert len(effects.read_text().splitlines()) == runs
    assert layout(tasklist.directory) == {'todo': [], 'done': [], 'fail': [name],
                                          'collect': []}


# ---------------------------------------------------------------------------
# The driver dies, or leaves early
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('start_method', START_METHODS)
def test_task_processes_die_with_a_killed_driver(tmp_path, processes, start_method):
    marker = processes.watch(str(tmp_path / 'marker.json'))
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1])
        tasklist.schedule(defer(faulty.hang_with_subprocess, sys.argv[2]))
        for task in tasklist.run(start_method=sys.argv[3]):
            say('yielded', task.taskname)
    ''')
    driver = processes.driver([sys.executable, script, str(tmp_path / 'tasks'), marker,
                               start_method], output)
    wait_marker(marker)
    tree = marker_processes(marker)
    assert all(is_alive(*process) for process in tree)
    driver.kill()
    driver.wait()
    wait_gone(tree, 'the task and its child after the driver was SIGKILLed')
    wait_for(lambda: not session_members(driver.pid),
             'every process of the killed driver to end', timeout=PROMPTLY)


def test_task_processes_die_with_a_killed_forkserver_template(tmp_path, processes):
    marker = processes.watch(str(tmp_path / 'marker.json'))
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        import runforrest
        tasklist = TaskList(sys.argv[1])
        tasklist.schedule(defer(faulty.hang_with_subprocess, sys.argv[2]))
        try:
            for task in tasklist.run(start_method='forkserver'):
                say('yielded', task.taskname)
        except runforrest.RunforrestError as error:
            say('error', error)
    ''')
    driver = processes.driver([sys.executable, script, str(tmp_path / 'tasks'), marker], output)
    wait_marker(marker)
    tree = marker_processes(marker)
    [template] = templates(session_members(driver.pid), driver.pid)
    os.kill(template, signal.SIGKILL)
    lines = finish(driver, output)
    assert any(line.startswith('error the forkserver template process died') for line in lines), \
        '\n'.join(lines)
    wait_gone(tree, 'the task and its child after the template was SIGKILLed')
    assert layout(tmp_path / 'tasks') == {'todo': ['00000001-hang_with_subprocess'],
                                          'done': [], 'fail': [], 'collect': []}
    wait_for(lambda: not session_members(driver.pid),
             "every process of the run, the template's standbys too, to end", timeout=PROMPTLY)



def test_standbys_killed_from_outside_do_not_stall_a_run(tasklist):
    for x in range(4):
        tasklist.schedule(defer(faulty.slow_double, x, 0.5))
    killed = []
    for task in tasklist.run(nprocesses=1, retries=1, start_method='forkserver'):
        if not killed:
            [template] = templates(children_of(os.getpid()), os.getpid())
            # The next task's process, and a standby that waits for the one
            # after; the task runs again (retries).
            killed = wait_for(lambda: len(children_of(template)) >= 2 and children_of(template),
                              "the template's standby and the next task")
            for pid in killed:
                kill(pid)
    assert sorted(task.returnvalue for task in tasklist.done_tasks()) == [0, 2, 4, 6]
    assert layout(tasklist.directory)['todo'] == []


def _schedule_quick_and_hanging(tasklist, tmp_path, processes):
    quick = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (1, 2)}
    markers = [processes.watch(str(tmp_path / f'hang{i}.json')) for i in range(2)]
    hanging = [tasklist.schedule(defer(faulty.hang, marker)) for marker in markers]
    return quick, markers, hanging


def _check_left_early(directory, quick, markers, hanging):
    """After a run was left while two tasks hang: they were killed at once
    and stay in todo/; the finished results are intact; the lock is free."""
    for marker in markers:
        wait_gone(marker_processes(marker), 'a running task after the run was left')
    assert layout(directory) == {'todo': sorted(hanging), 'done': sorted(quick),
                                 'fail': [], 'collect': []}
    stored = {task.taskname: task.returnvalue for task in TaskList.open(directory).done_tasks()}
    assert stored == quick
    assert stray_files(directory) == []
    assert driver_is_gone(directory)


@pytest.mark.parametrize('start_method', START_METHODS)
def test_ctrl_c_kills_running_tasks_and_keeps_them_todo(tmp_path, processes, start_method):
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        import signal
        # As in a terminal, even if the tests run where SIGINT is ignored
        # (a shell's background job), which the driver would inherit.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tasklist = TaskList(sys.argv[1])
        for x in (1, 2):
            tasklist.schedule(defer(faulty.double, x))
        for marker in sys.argv[3:]:
            tasklist.schedule(defer(faulty.hang, marker))
        try:
            for task in tasklist.run(nprocesses=4, start_method=sys.argv[2]):
                say('yielded', task.taskname)
        except KeyboardInterrupt:
            say('interrupted')
            sys.exit(130)
    ''')
    directory = tmp_path / 'tasks'
    markers = [processes.watch(str(tmp_path / f'hang{i}.json')) for i in range(2)]
    driver = processes.driver([sys.executable, script, str(directory), start_method,
                               *markers], output)
    for marker in markers:
        wait_marker(marker)
    wait_for(lambda: sum(line.startswith('yielded') for line in driver_lines(output)) == 2,
             'the quick tasks to finish')
    # Ctrl-C in a terminal signals the driver's whole process group.
    os.killpg(driver.pid, signal.SIGINT)
    lines = finish(driver, output, timeout=PROMPTLY)
    assert driver.returncode == 130 and 'interrupted' in lines, '\n'.join(lines)
    quick = {name: 2 * (index + 1) for index, name in enumerate(names(directory, 'done'))}
    hanging = sorted(set(names(directory, 'todo')))
    assert len(quick) == 2 and len(hanging) == 2, layout(directory)
    _check_left_early(directory, quick, markers, hanging)
    wait_for(lambda: not session_members(driver.pid), 'the driver\'s processes to end',
             timeout=PROMPTLY)


@pytest.mark.parametrize('start_method', START_METHODS)
@pytest.mark.parametrize('how', ['exception', 'break'])
def test_leaving_the_loop_kills_running_tasks_and_keeps_them_todo(
        tasklist, tmp_path, processes, start_method, how):
    quick, markers, hanging = _schedule_quick_and_hanging(tasklist, tmp_path, processes)
    seen = []

    def loop():
        for task in tasklist.run(nprocesses=4, start_method=start_method):
            seen.append(task.taskname)
            if len(seen) == len(quick):
                for marker in markers:
                    wait_marker(marker)
                if how == 'break':
                    break
                raise KeyError('the loop body failed')

    if how == 'exception':
        with pytest.raises(KeyError, match='the loop body failed'):
            loop()
    else:
        loop()
    assert sorted(seen) == sorted(quick)
    _check_left_early(tasklist.directory, quick, markers, hanging)


# ---------------------------------------------------------------------------
# Files: atomic, damaged, locked, out of space
# ---------------------------------------------------------------------------

def assert_visible_files_readable(directory):
    """Every visible file of the list loads whole."""
    for state in ('todo', 'done', 'fail', 'collect'):
        for name in names(directory, state):
            runforrest.read_task(collect_file(directory, name) if state == 'collect'
                                 else task_file(directory, state, name))


@pytest.mark.parametrize('victim', ['driver', 'task'])
def test_kill_while_writing_a_result_leaves_only_a_hidden_temporary(tmp_path, processes,
                                                                    victim):
    directory = tmp_path / 'tasks'
    flag = tmp_path / 'block-pickling'
    flag.touch()
    marker = processes.watch(str(tmp_path / 'writing.json'))
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1])
        tasklist.schedule(defer(faulty.double, 1))
        slow = tasklist.schedule(defer(faulty.return_slowly_pickled, sys.argv[2],
                                       sys.argv[3], 'payload', 20 * 2**20))
        tasklist.schedule(defer(faulty.double, 2))
        say('slow', slow)
        for task in tasklist.run(nprocesses=3):
            say('yielded', task.taskname, repr(task.errorvalue))
        say('finished')
    ''')
    driver = processes.driver([sys.executable, script, str(directory), str(flag), marker],
                              output)
    wait_marker(marker, 'the slow task to be writing its result')
    wait_for(lambda: len(names(directory, 'done')) == 2, 'the healthy tasks to finish')
    [slow] = [line.split()[1] for line in driver_lines(output) if line.startswith('slow ')]
    # Mid-write: the result exists only as a hidden temporary file.
    temporaries = [os.path.join(directory, path) for path in stray_files(directory)
                   if slow in path]
    assert len(temporaries) == 1 and os.path.getsize(temporaries[0]) > 20 * MiB
    assert names(directory, 'collect') == [] and slow in names(directory, 'todo')
    assert slow not in names(directory, 'done') + names(directory, 'fail')
    assert_visible_files_readable(directory)

    if victim == 'driver':
        driver.kill()
        driver.wait()
        wait_gone(marker_processes(marker), 'the writing task after the driver died')
        wait_for(lambda: not session_members(driver.pid), 'the driver\'s processes to end',
                 timeout=PROMPTLY)
        assert os.path.exists(temporaries[0]), 'the task died mid-write'
        assert names(directory, 'collect') == [] and slow in names(directory, 'todo')
        flag.unlink()  # the next attempt writes its result at once
        [task] = TaskList.open(directory).run()
        assert task.taskname == slow and task.errorvalue is None
        assert task.returnvalue == [b'p' * 20 * MiB, faulty.SlowPickle(None, None, 'payload')]
        assert slow in names(directory, 'done')
    else:
        # The kernel's OOM killer, say, kills the task group mid-write.
        os.killpg(read_marker(marker)['pgid'], signal.SIGKILL)
        lines = finish(driver, output)
        assert 'finished' in lines, '\n'.join(lines)
        [line] = [line for line in lines if line.startswith(f'yielded {slow}')]
        assert 'TaskCrashed' in line and 'SIGKILL' in line, line
        assert names(directory, 'fail') == [slow]
        assert_visible_files_readable(directory)
        # Nothing left to run, but the next run tidies the stale temporary away.
        assert list(TaskList.open(directory).run()) == []
    assert stray_files(directory) == []
    assert len(names(directory, 'done')) == (3 if victim == 'driver' else 2)


def _damage_records(tasklist):
    """Schedule healthy tasks and write four kinds of damaged task files;
    return (healthy {name: value}, damaged {name: kind})."""
    directory = tasklist.directory
    healthy = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (1, 2)}
    damaged = {}
    # A file that is not a pickle at all.
    name = '00000010-garbage'
    with open(task_file(directory, 'todo', name), 'wb') as file:
        file.write(b'this is not a task file\n' * 20)
    damaged[name] = 'garbage'
    # An empty file.
    name = '00000011-empty'
    open(task_file(directory, 'todo', name), 'wb').close()
    damaged[name] = 'empty'
    # A good task file cut short, as a crash while copying it would.
    name = tasklist.schedule(defer(faulty.double, 5))
    path = task_file(directory, 'todo', name)
    os.truncate(path, os.path.getsize(path) - 20)
    damaged[name] = 'truncated'
    # A good task file whose function's module no longer exists.
    name = tasklist.schedule(defer(faulty.double, 6))
    path = task_file(directory, 'todo', name)
    with open(path, 'rb') as file:
        data = file.read()
    module = faulty.__name__.encode()
    missing = b'z' * len(module)  # same length: the pickle's sizes stay right
    assert data.count(module) >= 1
    with open(path, 'wb') as file:
        file.write(data.replace(module, missing))
    damaged[name] = 'unloadable'
    healthy.update({tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (3, 4)})
    return healthy, damaged


@pytest.mark.parametrize('start_method', START_METHODS)
def test_damaged_todo_files_fail_alone_with_task_file_error(tasklist, start_method):
    healthy, damaged = _damage_records(tasklist)
    damaged_bytes = {}
    for name in damaged:
        with open(task_file(tasklist.directory, 'todo', name), 'rb') as file:
            damaged_bytes[name] = file.read()
    results = {task.taskname: task for task in
               tasklist.run(nprocesses=2, start_method=start_method)}
    assert sorted(results) == sorted([*healthy, *damaged])
    for name, value in healthy.items():
        assert results[name].returnvalue == value, results[name].errorvalue
    for name, kind in damaged.items():
        error = results[name].errorvalue
        assert isinstance(error, TaskFileError), (kind, repr(error))
        assert name in error.path and name in str(error), (kind, str(error))
        assert error.reason, kind
    assert 'truncated' in str(results[[n for n, k in damaged.items()
                                       if k == 'truncated'][0]].errorvalue)
    assert 'ModuleNotFoundError' in str(results[[n for n, k in damaged.items()
                                                 if k == 'unloadable'][0]].errorvalue)
    assert layout(tasklist.directory) == {'todo': [], 'done': sorted(healthy),
                                          'fail': sorted(damaged), 'collect': []}
    # The failures are on record, as failures, for later inspection.
    failed = {task.taskname: task.errorvalue for task in tasklist.fail_tasks()}
    assert sorted(failed) == sorted(damaged)
    assert all(isinstance(error, TaskFileError) for error in failed.values()), failed
    # ... with the damaged bytes, as they were, for a human to look at: the
    # whole file if it is no task file, else the task that cannot be loaded.
    for name, data in damaged_bytes.items():
        if damaged[name] == 'unloadable':
            data = data[data.index(b'z' * len(faulty.__name__)):][:20]  # inside the record
        with open(task_file(tasklist.directory, 'fail', name), 'rb') as file:
            assert data in file.read(), f'the bytes of the {damaged[name]} file are gone'


@pytest.mark.parametrize('state', ['done', 'fail'])
def test_reading_a_damaged_result_file_names_it_or_skips_it(tasklist, state):
    good = tasklist.schedule(defer(faulty.double, 1))
    bad = tasklist.schedule(defer(faulty.raise_value_error, 'no'))
    list(tasklist.run(nprocesses=2))
    # Copies of a real result file, cut short at a quarter, half and three
    # quarters of its length, as a copy interrupted by a crash would be.
    with open(task_file(tasklist.directory, state, good if state == 'done' else bad),
              'rb') as file:
        data = file.read()
    broken = task_file(tasklist.directory, state, '00000009-broken')
    read = tasklist.done_tasks if state == 'done' else tasklist.fail_tasks
    for quarters in (1, 2, 3):
        with open(broken, 'wb') as file:
            file.write(data[:len(data) * quarters // 4])
        with pytest.raises(TaskFileError) as info:
            list(read())
        assert info.value.path == broken and '00000009-broken' in str(info.value), quarters
        with pytest.warns(UserWarning, match='00000009-broken'):
            tasks = list(read(skip_damaged=True))
        assert [task.taskname for task in tasks] == [good if state == 'done' else bad]


def test_second_driver_on_the_same_list_is_refused(tmp_path, processes):
    directory = tmp_path / 'tasks'
    marker = processes.watch(str(tmp_path / 'marker.json'))
    output = tmp_path / 'driver.out'
    script = write_driver(tmp_path, '''
        tasklist = TaskList(sys.argv[1])
        tasklist.schedule(defer(faulty.hang, sys.argv[2]))
        for task in tasklist.run():
            say('yielded', task.taskname)
    ''')
    driver = processes.driver([sys.executable, script, str(directory), marker], output)
    wait_marker(marker)
    second = TaskList.open(directory)
    second.schedule(defer(faulty.double, 1))
    with pytest.raises(TaskListBusy) as info:
        list(second.run())
    message = str(info.value)
    assert f'pid {driver.pid}' in message and 'another driver' in message, message
    # The refused driver disturbed nothing: the first one's task still runs.
    assert all(is_alive(*process) for process in marker_processes(marker))
    assert len(names(directory, 'todo')) == 2 and names(directory, 'done') == []
    driver.kill()
    driver.wait()
    wait_gone(marker_processes(marker), 'the first driver\'s task')


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted inside tmp_path (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs to fill up needs root')
    mountpoint = tmp_path / 'disk'
    mountpoint.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs',
                              str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
    try:
        yield mountpoint
    finally:
        if subprocess.run(['umount', str(mountpoint)]).returncode != 0:
            subprocess.run(['umount', '-l', str(mountpoint)])


def test_a_result_that_does_not_fit_on_the_disk_fails_its_task_and_the_run_goes_on(
        small_disk, tmp_path):
    tasklist = TaskList(small_disk / 'tasks')
    first = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (1, 2)}
    big = tasklist.schedule(defer(faulty.big_result, 5 * MiB, 3, str(tmp_path / 'digest')))
    rest = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (3, 4)}
    results = {task.taskname: task for task in tasklist.run(nprocesses=1)}
    # As the README says: the task fails with an OSError that says so, and names the file.
    error = results[big].errorvalue
    assert type(error) is OSError and error.errno == errno.ENOSPC, repr(error)
    assert 'No space left on device' in str(error) and big in str(error), str(error)
    assert {name: results[name].returnvalue for name in [*first, *rest]} == {**first, **rest}
    assert layout(tasklist.directory) == {'todo': [], 'done': sorted([*first, *rest]),
                                          'fail': [big], 'collect': []}
    assert stray_files(tasklist.directory) == []


def test_a_disk_too_full_to_record_anything_stops_the_run_and_keeps_the_tasks(small_disk):
    tasklist = TaskList(small_disk / 'tasks')
    first = {tasklist.schedule(defer(faulty.double, x)): 2 * x for x in (1, 2)}
    assert len(list(tasklist.run(nprocesses=1))) == 2
    todo = [tasklist.schedule(defer(faulty.double, x)) for x in (3, 4)]
    tasklist.flush()
    ballast = os.open(small_disk / 'ballast', os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as filling:
        while True:
            os.write(ballast, b'x' * 4096)
    os.close(ballast)
    assert filling.value.errno == errno.ENOSPC
    # As the README says: the run stops with an OSError that says so ...
    with pytest.raises(OSError) as stopped:
        list(tasklist.run(nprocesses=1))
    assert stopped.value.errno == errno.ENOSPC, repr(stopped.value)
    assert 'No space left on device' in str(stopped.value)
    # ... and everything stored before stays as it was; the tasks wait in todo/.
    assert layout(tasklist.directory) == {'todo': sorted(todo), 'done': sorted(first),
                                          'fail': [], 'collect': []}
    assert {task.taskname: task.returnvalue for task in tasklist.done_tasks()} == first
    os.unlink(small_disk / 'ballast')
    assert sorted(task.returnvalue for task in tasklist.run(nprocesses=1)) == [6, 8]
    assert stray_files(tasklist.directory) == []
