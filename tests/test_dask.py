"""Running a task list through a real Dask cluster (distributed.LocalCluster
with worker processes), as a concurrent.futures executor."""

import os
import time

import pytest

from runforrest import (DependencyFailed, TaskCrashed, TaskList, TaskOutOfMemory,
                        TaskTimeout, defer)

import tasks_core

distributed = pytest.importorskip('distributed', reason='dask[distributed] is not installed')


@pytest.fixture(scope='module')
def executor():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client.get_executor()


def test_a_list_runs_on_dask_with_the_same_results_and_store(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    for item in range(6):
        task = defer(tasks_core.prepare, item)
        tasklist.schedule(defer(tasks_core.dostuff, task[1], task['thing']), metadata=item)
    tasklist.schedule(defer(tasks_core.fail, 'on a worker'), metadata='bad')
    tasklist.schedule(defer(print, 'from a worker'), metadata='loud')
    results = {task.metadata: task for task in tasklist.run(nprocesses=2, executor=executor)}
    assert {item: results[item].returnvalue for item in range(6)} == {
        item: item + 1 + item * 10 for item in range(6)}
    assert str(results['bad'].errorvalue) == 'on a worker' and 'in fail' in results['bad'].traceback
    assert 'from a worker' in tasklist.output(results['loud'])
    assert len(tasklist._names('done')) == 7 and len(tasklist._names('fail')) == 1
    assert tasklist._names('todo') == [] and tasklist._names('running') == []


def test_identical_tasks_are_never_merged(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    counter = tmp_path / 'count'
    for _ in range(4):
        tasklist.schedule(defer(tasks_core.count_call, str(counter), 1))
    assert [task.returnvalue for task in tasklist.run(nprocesses=2, executor=executor)] == [1] * 4
    assert counter.read_text() == 'xxxx'


def test_autokill_and_crashes_are_handled_on_the_worker(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks_core.sleep_forever))
    tasklist.schedule(defer(os.abort))
    tasklist.schedule(defer(tasks_core.identity, 'fine'))
    tasklist.schedule(defer(tasks_core.hold_memory, 400))
    results = {task.taskname: task for task in tasklist.run(
        nprocesses=2, autokill=10, memory_limit='150M', executor=executor)}
    assert isinstance(results['00000001-sleep_forever'].errorvalue, TaskTimeout)
    crash = results['00000002-abort'].errorvalue
    assert isinstance(crash, TaskCrashed) and crash.signal == 'SIGABRT'
    assert results['00000003-identity'].returnvalue == 'fine'
    assert isinstance(results['00000004-hold_memory'].errorvalue, TaskOutOfMemory)


def test_leaving_the_loop_stops_the_tasks_on_the_workers(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    pidfile = tmp_path / 'pids'
    tasklist.schedule(defer(tasks_core.identity, 'quick'))
    for _ in range(2):
        tasklist.schedule(defer(tasks_core.record_pid_and_sleep, str(pidfile)))
    for task in tasklist.run(nprocesses=3, executor=executor):
        assert task.returnvalue == 'quick'
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and len(pidfile.read_text().split()) == 2):
            assert time.monotonic() < deadline, 'the sleeping tasks never started'
            time.sleep(0.05)
        break
    pids = [int(pid) for pid in pidfile.read_text().split()]
    deadline = time.monotonic() + 30
    while any(os.path.exists(f'/proc/{pid}') for pid in pids):
        assert time.monotonic() < deadline, 'tasks outlived the driver loop'
        time.sleep(0.05)
    assert len(tasklist._names('todo')) == 2 and len(tasklist._names('done')) == 1


def test_errors_keep_their_type_after_dask_changed_how_exceptions_pickle(tmp_path, executor):
    """Dask installs tblib's pickling for every exception class, which breaks
    classes that also derive from MemoryError; runforrest's do not care."""
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks_core.hold_memory, 400))
    [task] = tasklist.run(nprocesses=1, memory_limit='150M')
    assert isinstance(task.errorvalue, TaskOutOfMemory), repr(task.errorvalue)


def test_a_pipeline_runs_on_dask_with_the_same_semantics(tmp_path, executor):
    import tasks_pipeline
    tasklist = TaskList(tmp_path / 'list')
    summary, blocked = tasks_pipeline.schedule_pipeline(tasklist, range(4), bad_item=1)
    results = {task.taskname: task for task in tasklist.run(nprocesses=2, executor=executor)}
    assert results[summary].returnvalue == sum(item + 1 + item * 10 for item in (0, 2, 3))
    assert isinstance(results[blocked].errorvalue, DependencyFailed)
    assert len(results) == 9
