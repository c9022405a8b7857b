"""Crash points: the driver dies at every step of the store's write protocol,
deterministically, and the next run loses nothing and files each result once.

A small driver script schedules three tasks, runs them with retries=1 (one
task crashes on its first run), retries the task that failed (it raises
until a flag file exists), and schedules a fourth task only to clean it
away: scheduling, collecting and filing, retries, retry() and clean(). It
runs under strace, which SIGKILLs it on its N-th call of one system call
that moves, links, removes or syncs a file, for N = 1, 2, ... until a run
gets through (the way the ALICE study of crash consistency took
applications apart, and no hook in runforrest needed). strace counts calls
per thread, so a second sweep counts the renames and unlinks of each task
file, by whichever thread makes them: the one that removes task files after
a sync too. After each kill, the same script runs again, untraced, and must
finish the list: every scheduled task done, none in two places, no
temporary file left, and no task that had a result before the kill run
again (each task appends a line to a file of its own whenever it runs, so
that runs can be counted).

Power cuts are simulated too: a result file that did not reach the disk
whole (truncated, empty, zeroed, or not there) next to its todo/ file makes
the task run again.
"""

import os
import shutil
import subprocess
import sys

import pytest

from runforrest import TaskFileError, TaskList, defer, read_task

import faulty
from conftest import (collect_file, environment, layout, session_members,
                      stray_files, task_file, wait_for)

STRACE = shutil.which('strace')
SYSCALLS = {'rename': ('rename', 'renameat', 'renameat2'), 'link': ('link', 'linkat'),
            'unlink': ('unlink', 'unlinkat'),
            'sync': ('fsync', 'fdatasync', 'syncfs', 'sync')}

DRIVER = '''\
import os, sys
import faulty
from runforrest import TaskList, defer

directory, effects = sys.argv[1], sys.argv[2]

def effect(index):
    return os.path.join(effects, str(index))

def say(*words):
    print(*words, flush=True)

tasklist = TaskList(directory, noschedule_if_exist=True)
tasklist.schedule(defer(faulty.append_effect, effect(0), 0, 0), metadata=0)
tasklist.schedule(defer(faulty.crash_on_first_run, effect(1), 1), metadata=1)
tasklist.schedule(defer(faulty.fail_until_exists, effect('fixed'), effect(2), 2), metadata=2)
for task in tasklist.run(nprocesses=2, retries=1):
    say('yielded', task.taskname, type(task.errorvalue).__name__)
open(effect('fixed'), 'w').close()
tasklist.retry()
for task in tasklist.run(nprocesses=2):
    say('yielded', task.taskname, type(task.errorvalue).__name__)
tasklist.schedule(defer(faulty.append_effect, effect(3), 3, 0), metadata=3)
tasklist.clean(clean_done=False, clean_fail=False)
say('finished')
'''
SCHEDULED = 3  # tasks that must end in done/; the fourth is cleaned away, or ran


def drive(tmp_path, directory, effects, strace=()):
    """Run the driver script (under strace, with these options) to its end
    or its death, and wait until every process it started is gone; return
    its exit status and the lines it printed."""
    script = tmp_path / 'driver.py'
    if not script.exists():
        script.write_text(DRIVER)
    os.makedirs(effects, exist_ok=True)
    output = tmp_path / 'driver.out'
    with open(output, 'wb') as out:
        driver = subprocess.Popen([*strace, sys.executable, str(script), directory, effects],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, env=environment())
    try:
        driver.wait(timeout=120)
    finally:
        driver.kill()
        driver.wait()
    # The task processes die with the driver (their lifeline); once they are
    # gone, no task can still add to the effects or the list.
    wait_for(lambda: not session_members(driver.pid), "the driver's processes to end")
    return driver.returncode, output.read_text().splitlines()


def inject_kill(syscall, nth, path=None):
    """strace, to SIGKILL the traced process on its nth call of syscall (on
    path, if given). strace counts calls per thread."""
    return [STRACE, '-f', '-qq', '-o', '/dev/null', *(['-P', path] if path else []),
            '-e', f'trace={syscall}', '-e', f'inject={syscall}:signal=KILL:when={nth}']


def runs(effects):
    """How often each task ran, by its metadata (0-3)."""
    counts = {}
    for index in range(4):
        try:
            with open(os.path.join(effects, str(index))) as file:
                counts[index] = len(file.readlines())
        except FileNotFoundError:
            counts[index] = 0
    return counts


def succeeded(directory, state, name):
    """Whether a whole, successful result of the task is in this state."""
    path = collect_file(directory, name) if state == 'collect' else \
        task_file(directory, state, name)
    try:
        return read_task(path).errorvalue is None
    except TaskFileError:
        return False


def metadata_of(name):
    return int(name.partition('-')[0]) - 1


def check_recovery(tmp_path, directory, effects, killed_lines, context):
    """After a kill: run the script again, untraced, and check that the list
    is finished, with nothing lost and nothing run or filed twice."""
    before = layout(directory)
    for first, second in [('done', 'fail'), ('done', 'collect'), ('fail', 'collect')]:
        both = set(before[first]) & set(before[second])
        assert not both, f'{both} in {first}/ and {second}/ at once ({context})'
    had_result = {name for state in ('done', 'collect') for name in before[state]
                  if succeeded(directory, state, name)}
    runs_before = runs(effects)

    status, lines = drive(tmp_path, directory, effects)
    context = f'{context}; the run after it printed {lines}'
    assert status == 0 and 'finished' in lines, context
    after = layout(directory)
    assert after['todo'] == after['fail'] == after['collect'] == [], (after, context)
    done = {metadata_of(name): name for name in after['done']}
    assert set(done) in ({0, 1, 2}, {0, 1, 2, 3}), (after, context)
    assert stray_files(directory) == [], context
    stored = {task.metadata: task.returnvalue for task in TaskList.open(directory).done_tasks()}
    assert stored == {index: index for index in done}, context

    runs_after = runs(effects)
    for name in had_result:
        index = metadata_of(name)
        assert runs_after[index] == runs_before[index], \
            f'{name} had its result before the kill and ran again ({context})'
    assert min(runs_after[index] for index in range(SCHEDULED)) >= 1, context
    first = [name for name in after['done'] if metadata_of(name) == 0]
    assert runs_after[0] == runs_before[0] + (first[0] not in had_result), \
        f'{first[0]} ran again, or not at all ({context})'  # unless it was in flight
    assert runs_after[1] >= 2, context  # it crashed once, then succeeded
    assert runs_after[3] == (3 in done), context  # ran once if not cleaned away first
    successes = [line.split()[1] for line in killed_lines + lines
                 if line.startswith('yielded') and line.endswith('NoneType')]
    assert len(successes) == len(set(successes)), f'a success yielded twice ({context})'


@pytest.fixture(scope='module')
def driver_calls(tmp_path_factory):
    """How often the driver's own process (its main thread) makes each of
    the system calls that SYSCALLS names, in a whole run."""
    tmp_path = tmp_path_factory.mktemp('count')
    every = ','.join(call for calls in SYSCALLS.values() for call in calls)
    trace = tmp_path / 'trace'
    status, lines = drive(tmp_path, str(tmp_path / 'list'), str(tmp_path / 'effects'),
                          [STRACE, '-f', '--seccomp-bpf', '-qq', '-o', str(trace),
                           '-e', f'trace={every}'])
    assert status == 0 and 'finished' in lines, lines
    records = trace.read_text().splitlines()
    driver = records[0].split()[0]
    calls = {}
    for record in records:
        pid, _, call = record.partition(' ')
        call = call.lstrip().partition('(')[0]
        if pid == driver and not call.startswith('<'):
            calls[call] = calls.get(call, 0) + 1
    return calls


def sweep(tmp_path, syscall, tag, limit, path_of=None):
    """Kill the driver at its 1st, 2nd, ... call of syscall (on the file
    path_of(directory)) until a run gets through; check the recovery after
    each kill. Returns how many kills there were."""
    for nth in range(1, limit + 1):
        directory = str(tmp_path / f'{tag}-{nth}')
        effects = str(tmp_path / f'{tag}-{nth}-effects')
        status, lines = drive(tmp_path, directory, effects,
                              inject_kill(syscall, nth, path_of and path_of(directory)))
        context = f'killed at {syscall} number {nth} ({tag}), after printing {lines}'
        if status == 0 and 'finished' in lines:
            return nth - 1  # the run makes fewer calls than that: each one was a crash point
        assert status == -9, context
        if not os.path.exists(directory):
            assert runs(effects) == dict.fromkeys(range(4), 0), context
            continue
        check_recovery(tmp_path, directory, effects, lines, context)
    raise AssertionError(f'the driver was still killed at {syscall} number {limit} ({tag})')


needs_strace = pytest.mark.skipif(STRACE is None, reason='the crash-point tests need strace')


@needs_strace
@pytest.mark.parametrize('kind', list(SYSCALLS))
def test_the_driver_killed_at_every_call_that_changes_files_loses_nothing(
        tmp_path, driver_calls, kind):
    swept = [call for call in SYSCALLS[kind] if driver_calls.get(call)]
    assert swept, f'the driver made none of {SYSCALLS[kind]} ({driver_calls}): ' \
                  f'which calls does the store use now?'
    for syscall in swept:
        kills = sweep(tmp_path, syscall, syscall, driver_calls[syscall] + 10)
        print(f'{syscall}: killed at each of {kills} calls')
        assert kills, f'the driver makes {syscall} calls, yet no kill happened'


TASK_NAMES = ['00000001-append_effect', '00000002-crash_on_first_run',
              '00000003-fail_until_exists']


@needs_strace
@pytest.mark.parametrize('name', TASK_NAMES)
def test_the_driver_killed_at_every_move_or_removal_of_a_task_file_loses_nothing(
        tmp_path, name):
    # The sweep above counts the calls of the driver's main thread only (strace
    # counts per thread): this one reaches the thread that removes task files
    # once their results are synced, too, by counting the calls on one file.
    # Now and then (more often on 3.12 and 3.13; not understood yet),
    # a whole run makes no call on the file that strace sees: sweep again.
    for attempt in range(10):
        (tmp_path / str(attempt)).mkdir()
        kills = {syscall: sweep(tmp_path / str(attempt), syscall, f'{name}-{syscall}', 20,
                                lambda directory: task_file(directory, 'todo', name))
                 for syscall in ('rename', 'unlink')}
        print(f'{name}: killed at each of {kills} calls')
        if sum(kills.values()):
            break
    assert sum(kills.values()), f'no kill at a rename or unlink of {name}, ten times'


# -- power cuts ------------------------------------------------------------------

def damage(path, how):
    if how == 'missing':
        os.unlink(path)
        return
    with open(path, 'rb') as file:
        data = file.read()
    with open(path, 'wb') as file:
        file.write({'truncated': data[:len(data) // 2], 'empty': b'',
                    'zeroed': bytes(len(data))}[how])


@pytest.mark.parametrize('where, how', [
    ('done', 'truncated'), ('done', 'empty'), ('done', 'zeroed'), ('done', 'missing'),
    ('fail', 'truncated'), ('fail', 'zeroed'),
    ('collect', 'truncated'), ('collect', 'empty'), ('collect', 'zeroed'),
])
def test_a_result_that_a_power_cut_caught_runs_its_task_again(tmp_path, where, how):
    """The todo file goes only once its result is on disk; a power cut before
    that leaves the todo file, next to a result that did not reach the disk
    whole (or at all)."""
    tasklist = TaskList(tmp_path / 'tasklist')
    effects = tmp_path / 'effects'
    if where == 'fail':
        task = defer(faulty.fail_until_exists, str(tmp_path / 'never'), str(effects), 7)
    else:
        task = defer(faulty.append_effect, str(effects), 7, 0)
    name = tasklist.schedule(task)
    todo = task_file(tasklist.directory, 'todo', name)
    with open(todo, 'rb') as file:
        todo_bytes = file.read()
    other = tasklist.schedule(defer(faulty.double, 21))
    assert len(list(tasklist.run(nprocesses=2))) == 2
    state = 'fail' if where == 'fail' else 'done'
    result = task_file(tasklist.directory, state, name)
    if where == 'collect':  # the power cut came before the result was filed
        os.replace(result, collect_file(tasklist.directory, name))
        result = collect_file(tasklist.directory, name)
    with open(todo, 'wb') as file:
        file.write(todo_bytes)
    damage(result, how)

    [again] = tasklist.run(nprocesses=2)
    assert again.taskname == name
    assert (again.returnvalue, type(again.errorvalue)) == \
        ((None, ValueError) if where == 'fail' else (7, type(None)))
    with open(effects) as file:
        assert len(file.readlines()) == 2, 'the task did not run again'
    assert layout(tasklist.directory) == {
        'todo': [], 'collect': [], 'done': sorted([other] + [name] * (state == 'done')),
        'fail': [name] * (state == 'fail')}
    assert read_task(task_file(tasklist.directory, state, name)).taskname == name
    assert stray_files(tasklist.directory) == []
