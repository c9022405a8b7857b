"""What the tests share: no silent skips in CI, waiting, processes, the
environment of the processes they start, and the one place that knows how a
task list lies on disk beyond the documented DIR/todo|done|fail/NAME.pkl.

Test modules import these helpers (`from conftest import wait_for`): pytest
puts tests/ on sys.path, and so does `environment()` for every process a
test starts, so that task functions in tasks.py and faulty.py are found.
"""

import fcntl
import os
import signal
import tempfile
import time

import pytest

from runforrest import TaskList

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')

DEADLINE = 30   # seconds: the longest any single wait may take
PROMPTLY = 10   # seconds: "at once", with room for a busy machine


# -- under CI=true, a skip is a failure ------------------------------------------
# A skipped test proves nothing, and in CI nobody reads the skip reasons: so
# there, a test that cannot run fails, with the reason it gave for skipping.

def _fail_instead_of_skip(report):
    if IN_CI and report.skipped and not hasattr(report, 'wasxfail'):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = 'failed'
        report.longrepr = f'skipped, and CI=true allows no skips: {reason}'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_instead_of_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_instead_of_skip(outcome.get_result())


# -- waiting -----------------------------------------------------------------------

def wait_for(condition, what, timeout=DEADLINE, interval=0.02):
    """Poll condition() until it returns something true, and return that;
    fail with a message naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)


# -- processes ---------------------------------------------------------------------

def environment(**variables):
    """os.environ for a process a test starts: it imports runforrest, tasks
    and faulty as the tests do."""
    path = os.pathsep.join(filter(None, [TESTS, os.environ.get('PYTHONPATH')]))
    return dict(os.environ, PYTHONPATH=path, **variables)


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name, or None."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as file:
            return file.read().rpartition(b')')[2].split()
    except OSError:
        return None


def is_alive(pid, started=None):
    """Whether the process runs; a zombie is dead, and so is a process whose
    start time differs from `started` (its pid was reused)."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == b'Z':
        return False
    return started is None or int(fields[19]) == started


def session_members(sid):
    """Live processes of the session sid (a process started with
    start_new_session=True, and all its descendants that are left)."""
    members = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            fields = stat_fields(entry)
            if fields and fields[0] != b'Z' and int(fields[3]) == sid:
                members.append(int(entry))
    return members


def children_of(parent):
    return [int(entry) for entry in os.listdir('/proc') if entry.isdigit()
            and (fields := stat_fields(entry)) and fields[0] != b'Z'
            and int(fields[1]) == parent]


def wait_gone(processes, what, timeout=PROMPTLY):
    """Wait until none of these (pid, start time) pairs runs any more."""
    processes = list(processes)
    wait_for(lambda: not any(is_alive(pid, started) for pid, started in processes),
             f'{what} to end (still alive: '
             f'{[pid for pid, started in processes if is_alive(pid, started)]})',
             timeout=timeout)


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- task lists ----------------------------------------------------------------------

@pytest.fixture
def tasklist(tmp_path):
    return TaskList(tmp_path / 'tasklist')


@pytest.fixture
def temporary_directory(tmp_path, monkeypatch):
    """Send the temporary task lists of maps to a directory of our own, to
    see whether they are removed afterwards."""
    directory = tmp_path / 'tmp'
    directory.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(directory))
    return directory


def run_all(tasklist, **options):
    """Run a list; its tasks as yielded, by name."""
    return {task.taskname: task for task in tasklist.run(**options)}


# -- the layout on disk: the one place that knows it ------------------------------
# The README documents DIR/todo/, done/ and fail/, a file NAME.pkl per task;
# everything else (where results wait to be filed, the marks of tasks in flight
# on a cluster, the names of temporary files) is runforrest's own business, and
# only these helpers know it.

STATES = ('todo', 'done', 'fail')


def task_file(directory, state, name):
    """The file of the task `name` in todo/, done/ or fail/."""
    return os.path.join(directory, state, f'{name}.pkl')


def _collect_directory(directory):
    return os.path.join(directory, '.runforrest', 'collect')


def _running_directory(directory):
    return os.path.join(directory, '.runforrest', 'running')


def keys_record(directory):
    """Where a reuse list records the keys of its task files (see runforrest._Ledger)."""
    return os.path.join(directory, '.runforrest', 'keys')


def collect_file(directory, name):
    """Where a finished task's result waits to be filed."""
    return os.path.join(_collect_directory(directory), f'{name}.pkl')


def names(directory, state):
    """The task names in todo, done or fail, or with a result in 'collect',
    sorted; only visible, finished files count."""
    path = _collect_directory(directory) if state == 'collect' else os.path.join(directory, state)
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(entry[:-len('.pkl')] for entry in entries
                  if entry.endswith('.pkl') and not entry.startswith('.'))


def layout(directory):
    """Which tasks are where: {todo, done, fail, collect: [names]}."""
    return {state: names(directory, state) for state in STATES + ('collect',)}


def running_marks(directory):
    """The names of the tasks a driver has in flight on a cluster or an executor."""
    try:
        return sorted(entry for entry in os.listdir(_running_directory(directory))
                      if not entry.startswith('.'))
    except FileNotFoundError:
        return []


def running_mark(directory, name):
    """What the mark of a task in flight says: where it runs (e.g. 'slurm JOB_ELEMENT')."""
    with open(os.path.join(_running_directory(directory), name)) as file:
        return file.read()


def stray_files(directory):
    """Temporary files left anywhere in the list: none may outlive a run."""
    return sorted(os.path.relpath(os.path.join(parent, entry), directory)
                  for parent, _, entries in os.walk(directory)
                  for entry in entries if entry.startswith('.'))


def driver_is_gone(directory):
    """Whether no driver holds the list's lock, which the kernel frees when
    the driver ends, however it ends."""
    with open(os.path.join(directory, '.runforrest', 'driver.lock')) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(lock, fcntl.LOCK_UN)
        return True
