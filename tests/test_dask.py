"""Running a task list through a real Dask cluster (distributed.LocalCluster
with worker processes), as a concurrent.futures executor."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from runforrest import TaskCrashed, TaskList, TaskLost, TaskOutOfMemory, TaskTimeout, defer

import tasks
from conftest import (PROMPTLY, environment, is_alive, kill, names, running_marks,
                      session_members, stat_fields, wait_for, wait_gone)

distributed = pytest.importorskip('distributed', reason='dask[distributed] is not installed')
dask = pytest.importorskip('dask')


@pytest.fixture(scope='module')
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster


@pytest.fixture(scope='module')
def executor(cluster):
    with distributed.Client(cluster) as client:
        yield client.get_executor()


def started_processes(pidfile, count):
    """(pid, start time) of the first `count` task processes that wrote their
    pid to pidfile, once they have."""
    wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) >= count,
             f'{count} tasks to start on the workers')
    pids = [int(pid) for pid in pidfile.read_text().split()[:count]]
    return [(pid, int(stat_fields(pid)[19])) for pid in pids]


def test_a_list_runs_on_dask_with_the_same_results_and_store(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    for item in range(6):
        task = defer(tasks.prepare, item)
        tasklist.schedule(defer(tasks.dostuff, task[1], task['thing']), metadata=item)
    tasklist.schedule(defer(tasks.fail, 'on a worker'), metadata='bad')
    tasklist.schedule(defer(print, 'from a worker'), metadata='loud')
    results = {task.metadata: task for task in tasklist.run(nprocesses=2, executor=executor)}
    assert {item: results[item].returnvalue for item in range(6)} == {
        item: item + 1 + item * 10 for item in range(6)}
    assert str(results['bad'].errorvalue) == 'on a worker' and 'in fail' in results['bad'].traceback
    assert 'from a worker' in tasklist.output(results['loud'])
    assert len(names(tasklist.directory, 'done')) == 7
    assert len(names(tasklist.directory, 'fail')) == 1
    assert names(tasklist.directory, 'todo') == [] and running_marks(tasklist.directory) == []


def test_identical_tasks_are_never_merged(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    counter = tmp_path / 'count'
    for _ in range(4):
        tasklist.schedule(defer(tasks.count_call, str(counter), 1))
    assert [task.returnvalue for task in tasklist.run(nprocesses=2, executor=executor)] == [1] * 4
    assert counter.read_text() == 'xxxx'


def test_autokill_and_crashes_are_handled_on_the_worker(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks.hang))
    tasklist.schedule(defer(os.abort))
    tasklist.schedule(defer(tasks.identity, 'fine'))
    tasklist.schedule(defer(tasks.hold_memory, 400))
    results = {task.taskname: task for task in tasklist.run(
        nprocesses=2, autokill=10, memory_limit='150M', executor=executor)}
    assert isinstance(results['00000001-hang'].errorvalue, TaskTimeout)
    crash = results['00000002-abort'].errorvalue
    assert isinstance(crash, TaskCrashed) and crash.signal == 'SIGABRT'
    assert results['00000003-identity'].returnvalue == 'fine'
    assert isinstance(results['00000004-hold_memory'].errorvalue, TaskOutOfMemory)


def test_leaving_the_loop_stops_the_tasks_on_the_workers(tmp_path, executor):
    tasklist = TaskList(tmp_path / 'list')
    pidfile = tmp_path / 'pids'
    tasklist.schedule(defer(tasks.identity, 'quick'))
    for _ in range(2):
        tasklist.schedule(defer(tasks.record_pid_and_sleep, str(pidfile)))
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
    assert len(names(tasklist.directory, 'todo')) == 2
    assert len(names(tasklist.directory, 'done')) == 1


def test_errors_keep_their_type_after_dask_changed_how_exceptions_pickle(tmp_path, executor):
    """Dask installs tblib's pickling for every exception class, which breaks
    classes that also derive from MemoryError; runforrest's do not care."""
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks.hold_memory, 400))
    [task] = tasklist.run(nprocesses=1, memory_limit='150M')
    assert isinstance(task.errorvalue, TaskOutOfMemory), repr(task.errorvalue)


def test_a_pipeline_runs_on_dask_with_the_same_semantics(tmp_path, executor):
    import tasks_pipeline
    tasks_pipeline.check_pipeline(TaskList(tmp_path / 'list'), bad_item=1, executor=executor)


def test_a_worker_that_dies_leaves_its_task_lost(tmp_path):
    # Dask would hand the task of a dead worker to another one, up to
    # allowed-failures times; with none allowed, the worker's death is final.
    pidfile = tmp_path / 'pids'
    tasklist = TaskList(tmp_path / 'list')
    doomed = tasklist.schedule(defer(tasks.record_pid_and_sleep, str(pidfile)))
    after = tasklist.schedule(defer(tasks.identity, 'after the worker died'))
    results = {}
    with dask.config.set({'distributed.scheduler.allowed-failures': 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        driver = threading.Thread(target=lambda: results.update(
            (task.taskname, task)
            for task in tasklist.run(nprocesses=1, executor=client.get_executor())))
        driver.start()
        try:
            [task_process] = started_processes(pidfile, 1)
            worker = int(stat_fields(task_process[0])[1])  # the task's parent
            assert worker in client.run(os.getpid).values()
            kill(worker)
            wait_gone([task_process], 'the task of the dead worker')
        finally:
            driver.join(120)
    lost = results[doomed].errorvalue
    assert isinstance(lost, TaskLost) and lost.state == 'KilledWorker', repr(lost)
    assert results[after].returnvalue == 'after the worker died'
    assert (names(tasklist.directory, 'fail'), names(tasklist.directory, 'done')) == \
        ([doomed], [after])


KILLED_DRIVER = textwrap.dedent('''
    import sys, distributed, tasks
    from runforrest import TaskList, defer
    with distributed.Client(sys.argv[1]) as client:
        tasklist = TaskList(sys.argv[2])
        for _ in range(2):
            tasklist.schedule(defer(tasks.record_pid_and_sleep, sys.argv[3]))
        for task in tasklist.run(nprocesses=2, executor=client.get_executor()):
            print(task.taskname, task.errorvalue, flush=True)
''')


def test_the_tasks_of_a_killed_driver_stop_on_the_workers(tmp_path, cluster):
    pidfile = tmp_path / 'pids'
    driver = subprocess.Popen([sys.executable, '-c', KILLED_DRIVER, cluster.scheduler_address,
                               str(tmp_path / 'list'), str(pidfile)],
                              start_new_session=True, env=environment())
    processes = []
    try:
        processes = started_processes(pidfile, 2)
        driver.kill()
        driver.wait()
        wait_gone(processes, "the killed driver's tasks on the workers", timeout=PROMPTLY)
    finally:
        driver.kill()
        driver.wait()
        for pid in session_members(driver.pid):
            kill(pid)
        for pid, started in processes:
            if is_alive(pid, started):
                kill(pid)
