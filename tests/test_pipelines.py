"""Pipelines: tasks that use other tasks' results, each in a process of its own."""

import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import pytest

import runforrest
from runforrest import (DependencyFailed, TaskCrashed, TaskList, TaskListError,
                        TaskOutOfMemory, TaskTimeout, defer, evaluate)

import tasks_pipeline as tasks

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def tasklist(tmp_path):
    return TaskList(tmp_path / 'pipeline')


@pytest.fixture
def effects(tmp_path):
    path = tmp_path / 'effects'
    path.mkdir()
    return str(path)


def run_all(tasklist, **options):
    return {task.taskname: task for task in tasklist.run(**options)}


def schedule_two_stages(tasklist, items, effects=None):
    """The README's loop, with each stage a task of its own."""
    results = []
    for item in items:
        prepared = defer(tasks.prepare, item, effects)
        tasklist.schedule(prepared)
        result = defer(tasks.dostuff, prepared[1], prepared.thing, effects)
        tasklist.schedule(result)
        results.append(result)
    return results


def test_a_dependent_gets_its_dependencys_stored_result_in_a_process_of_its_own(
        tasklist, effects):
    results = schedule_two_stages(tasklist, [1, 2, 3], effects)
    total = defer(tasks.summarize, results)
    tasklist.schedule(total)
    finished = run_all(tasklist, nprocesses=2)
    assert len(finished) == 7
    values = {name: task.returnvalue for name, task in finished.items()}
    stages = sorted(name for name in values if name.endswith('dostuff'))
    assert [values[name]['value'] for name in stages] == [2 + 10, 3 + 20, 4 + 30]
    [summary] = [name for name in values if name.endswith('summarize')]
    assert values[summary] == 12 + 23 + 34
    # Every stage ran once, each in a process of its own.
    for item in (1, 2, 3):
        assert tasks.runs(effects, f'prepare-{item}') == 1
        assert tasks.runs(effects, f'dostuff-{item + 1}') == 1
    pids = [value.pid for value in values.values() if isinstance(value, tasks.Prepared)]
    pids += [value['pid'] for value in values.values() if isinstance(value, dict)]
    assert len(set(pids)) == 6
    # Yielded after their dependencies, and the dependencies are on record.
    order = list(finished)
    for name in stages:
        assert order.index(name) > order.index(f'{int(name[:8]) - 1:08d}-prepare')
    rows = {row['name']: row for row in tasklist.rows()}
    assert rows[stages[0]]['dependencies'] == [f'{int(stages[0][:8]) - 1:08d}-prepare']
    assert rows[summary]['dependencies'] == stages


def test_a_graph_that_was_never_scheduled_runs_inside_its_dependent(tasklist, effects):
    prepared = defer(tasks.prepare, 7, effects)  # not scheduled: part of the graph
    tasklist.schedule(defer(tasks.dostuff, prepared[1], prepared.thing, effects))
    [task] = tasklist.run(nprocesses=1)
    assert task.returnvalue['value'] == 8 + 70
    assert tasks.runs(effects, 'prepare-7') == 1
    [prepare_run] = [entry for entry in os.listdir(effects) if entry.startswith('prepare')]
    assert prepare_run.endswith(f'.{task.returnvalue["pid"]}')  # in the same process


def test_evaluate_still_runs_a_whole_pipeline_here(tasklist):
    results = schedule_two_stages(tasklist, [1, 2])
    total = defer(tasks.summarize, results)
    tasklist.schedule(total)
    assert evaluate(total) == 12 + 23


def test_after_orders_tasks_that_pass_no_data(tasklist, tmp_path):
    path = str(tmp_path / 'written')
    writer = defer(tasks.write, path, 'from the writer')
    tasklist.schedule(writer)
    by_task = tasklist.schedule(defer(tasks.read, path), after=[writer])
    writer_name = tasklist.schedule(defer(tasks.write, path + '2', 'again'))
    by_name = tasklist.schedule(defer(tasks.read, path + '2'), after=writer_name)
    # With room for all at once, the readers still wait for the writers.
    finished = run_all(tasklist, nprocesses=4)
    assert finished[by_task].returnvalue == 'from the writer'
    assert finished[by_name].returnvalue == 'again'


def test_a_diamond_runs_each_task_after_all_that_it_depends_on(tasklist):
    # One task with three dependents, each of them a dependency of the last.
    source = defer(tasks.prepare, 1)
    tasklist.schedule(source)
    middles = [defer(tasks.dostuff, source[1], defer(factor)) for factor in (1, 2, 3)]
    for middle in middles:
        tasklist.schedule(middle)
    last = tasklist.schedule(defer(tasks.summarize, middles))
    finished = run_all(tasklist, nprocesses=2)
    assert list(finished)[0].endswith('prepare') and list(finished)[-1] == last
    assert [finished[name].returnvalue['value'] for name in sorted(finished)
            if name.endswith('dostuff')] == [3, 4, 5]
    assert finished[last].returnvalue == 3 + 4 + 5


def test_a_waiting_task_holds_no_process(tasklist, tmp_path):
    # The first task waits for the third; the second depends on the first. If
    # the waiting second task held one of the two processes, the third could
    # never start, and the first would never end.
    go = str(tmp_path / 'go')
    first = defer(tasks.wait_for_file, go, 30)
    tasklist.schedule(first)
    tasklist.schedule(defer(tasks.read, first))
    tasklist.schedule(defer(tasks.write, go, 'go'))
    finished = run_all(tasklist, nprocesses=2)
    assert [task.errorvalue for task in finished.values()] == [None] * 3
    assert list(finished)[-1].endswith('read')


@pytest.mark.parametrize('kind, error_type', [
    ('raise', ValueError), ('segfault', TaskCrashed), ('hang', TaskTimeout),
    ('memory', TaskOutOfMemory)])
def test_a_failed_dependency_fails_its_dependents_transitively_unrun(
        tasklist, effects, kind, error_type):
    faulty = defer(tasks.fault, kind)
    faulty_name = tasklist.schedule(faulty)
    middle = defer(tasks.dostuff, faulty, 1, effects)
    middle_name = tasklist.schedule(middle)
    last_name = tasklist.schedule(defer(tasks.summarize, [middle]))
    independent = tasklist.schedule(defer(tasks.prepare, 5, effects))
    finished = run_all(tasklist, nprocesses=2, autokill=5, memory_limit='200M')
    assert isinstance(finished[faulty_name].errorvalue, error_type)
    error = finished[middle_name].errorvalue
    assert isinstance(error, DependencyFailed) and isinstance(error, runforrest.TaskFailure)
    assert error.dependency == faulty_name and error.error_type == error_type.__name__
    assert faulty_name in str(error)
    last = finished[last_name].errorvalue
    assert isinstance(last, DependencyFailed) and last.dependency == middle_name
    assert os.listdir(effects) == [f'prepare-5.{finished[independent].returnvalue.pid}']
    assert sorted(tasklist._names('fail')) == sorted([faulty_name, middle_name, last_name])


def test_retrying_a_failed_dependency_brings_back_its_dependents(tasklist, tmp_path):
    flag = str(tmp_path / 'fixed')
    first = defer(tasks.read, flag)  # fails until the file exists
    first_name = tasklist.schedule(first)
    second_name = tasklist.schedule(defer(str.upper, first))
    third_name = tasklist.schedule(defer(len, defer(str.upper, first)), after=[second_name])
    other = tasklist.schedule(defer(tasks.read, flag + '-other'))
    run_all(tasklist, nprocesses=2)
    assert sorted(tasklist._names('fail')) == sorted([first_name, second_name, third_name, other])
    tasks.write(flag, 'fixed')
    assert tasklist.retry([first_name]) == [first_name, second_name, third_name]
    finished = run_all(tasklist, nprocesses=2)
    assert finished[second_name].returnvalue == 'FIXED' and finished[third_name].returnvalue == 5
    assert tasklist._names('fail') == [other]


def test_retry_by_error_type_dependency_failed(tasklist, tmp_path):
    flag = str(tmp_path / 'fixed')
    first_name = tasklist.schedule(first := defer(tasks.read, flag))
    second_name = tasklist.schedule(defer(str.upper, first))
    run_all(tasklist, nprocesses=1)
    assert tasklist.retry(error_type='DependencyFailed') == [second_name]
    # Its dependency still failed: it fails again, unrun, and says why.
    [again] = tasklist.run(nprocesses=1)
    assert again.taskname == second_name and isinstance(again.errorvalue, DependencyFailed)
    tasks.write(flag, 'now')
    assert tasklist.retry(error_type='ValueError') == []
    assert tasklist.retry(error_type='FileNotFoundError') == [first_name, second_name]
    assert [task.returnvalue for task in tasklist.run(nprocesses=1)] == ['now', 'NOW']


def test_a_dependent_runs_by_hand_with_its_dependencys_result(tasklist, tmp_path):
    prepared = defer(tasks.prepare, 4)
    tasklist.schedule(prepared)
    run_all(tasklist, nprocesses=1)
    name = tasklist.schedule(defer(tasks.dostuff, prepared[1], prepared.thing))
    result = tmp_path / 'result.pkl'
    done = subprocess.run([sys.executable, '-m', 'runforrest',
                           tasklist._path('todo', name), str(result), '-r'],
                          capture_output=True, text=True, timeout=60, cwd=HERE,
                          env={**os.environ, 'PYTHONPATH': HERE})
    assert done.returncode == 0, done.stderr
    assert runforrest.read_task(result).returnvalue['value'] == 5 + 40


def test_a_dependency_on_another_list_or_an_unscheduled_task_is_refused(tasklist, tmp_path):
    other = TaskList(tmp_path / 'other')
    foreign = defer(tasks.prepare, 1)
    other.schedule(foreign)
    with pytest.raises(TaskListError, match='scheduled on another task list'):
        tasklist.schedule(defer(tasks.dostuff, foreign[1], 2))
    with pytest.raises(TaskListError, match='never scheduled'):
        tasklist.schedule(defer(print), after=[defer(tasks.prepare, 2)])
    with pytest.raises(TaskListError, match='no task of'):
        tasklist.schedule(defer(print), after=['00000099-nothing'])
    assert tasklist._names('todo') == []


def test_a_removed_dependency_is_a_clear_error_when_the_run_reaches_it(tasklist):
    prepared = defer(tasks.prepare, 1)
    tasklist.schedule(prepared)
    run_all(tasklist, nprocesses=1)
    name = tasklist.schedule(defer(tasks.dostuff, prepared[1], prepared.thing))
    tasklist.clean(clean_todo=False, clean_done=True, clean_fail=False)
    [task] = tasklist.run(nprocesses=1)
    assert task.taskname == name and isinstance(task.errorvalue, DependencyFailed)
    assert 'its file was removed' in str(task.errorvalue)


def test_a_task_read_back_from_the_list_is_a_dependency(tasklist, effects):
    tasklist.schedule(defer(tasks.prepare, 3, effects))
    run_all(tasklist, nprocesses=1)
    [prepared] = tasklist.done_tasks()
    name = tasklist.schedule(defer(tasks.dostuff, prepared[0], prepared.thing))
    [task] = tasklist.run(nprocesses=1)
    assert task.taskname == name and task.returnvalue['value'] == 3 + 30
    assert tasks.runs(effects, 'prepare-3') == 1  # its stored result, not run again


def test_status_and_show_tell_waiting_tasks_dependencies_and_dependents(tasklist):
    results = schedule_two_stages(tasklist, [1])
    tasklist.schedule(defer(tasks.summarize, results))
    tasklist.flush()
    env = {**os.environ, 'PYTHONPATH': HERE}

    def cli(*args):
        done = subprocess.run([sys.executable, '-m', 'runforrest', *args, '--json'],
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        import json
        return json.loads(done.stdout)

    status = cli('status', tasklist.directory)
    assert (status['todo'], status['waiting']) == (3, 2)
    shown = cli('show', os.path.join(tasklist.directory, '00000002'))
    assert shown['dependencies'] == ['00000001-prepare']
    assert shown['dependents'] == ['00000003-summarize']
    assert '<result of 00000001-prepare>' in shown['call']
    run_all(tasklist, nprocesses=1)
    assert cli('status', tasklist.directory)['waiting'] == 0


PIPELINE_DRIVER = '''
import os, sys
from runforrest import TaskList, defer
import tasks_pipeline as tasks
directory, effects, go = sys.argv[1:4]
tasklist = TaskList(directory, noschedule_if_exist=True)
results = []
for item in range(4):
    prepared = defer(tasks.prepare, item, effects)
    tasklist.schedule(prepared)
    result = defer(tasks.dostuff, prepared[1], prepared.thing, effects)
    tasklist.schedule(result)
    results.append(result)
gate = defer(tasks.wait_for_file, go)
tasklist.schedule(gate)
tasklist.schedule(defer(tasks.summarize, results), after=[gate])
for task in tasklist.run(nprocesses=2):
    print('yielded', task.taskname, flush=True)
print('finished', flush=True)
'''


def test_a_driver_killed_mid_pipeline_loses_nothing_and_repeats_nothing(tmp_path, effects):
    script = tmp_path / 'driver.py'
    script.write_text(textwrap.dedent(PIPELINE_DRIVER))
    directory, go = str(tmp_path / 'list'), str(tmp_path / 'go')
    env = {**os.environ, 'PYTHONPATH': HERE}
    command = [sys.executable, str(script), directory, effects, go]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        # Kill it while the summary waits for the gate, with every stage done.
        yielded = []
        while len(yielded) < 8:
            line = driver.stdout.readline()
            assert line, 'the driver ended early'
            yielded.append(line.split()[1])
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert tasks.runs(effects, 'prepare-0') == 1
    with open(go, 'w'):
        pass
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.split('\n')
    assert lines[-2] == 'finished'
    assert sorted(line.split()[1] for line in lines if line.startswith('yielded')) == \
        ['00000009-wait_for_file', '00000010-summarize']
    tasklist = TaskList.open(directory)
    [summary] = [task for task in tasklist.done_tasks() if task.taskname.endswith('summarize')]
    assert summary.returnvalue == sum(item + 1 + item * 10 for item in range(4))
    for item in range(4):
        assert tasks.runs(effects, f'prepare-{item}') == 1
        assert tasks.runs(effects, f'dostuff-{item + 1}') == 1


BIG_INTERMEDIATE = '''
import resource, sys
from runforrest import TaskList, defer
import tasks_pipeline as tasks
tasklist = TaskList(sys.argv[1])
big = defer(tasks.big_bytes, 200)
tasklist.schedule(big)
tasklist.schedule(defer(len, big))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths = [task.returnvalue for task in tasklist.run(nprocesses=1) if task.taskname.endswith('len')]
print(lengths[0], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)
'''


def run_driver(tmp_path, script):
    """Run script as a driver of the list tmp_path/list; return the length
    and the growth of its peak memory in MiB that it prints."""
    path = tmp_path / 'driver.py'
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path), str(tmp_path / 'list')],
                          env={**os.environ, 'PYTHONPATH': HERE}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return map(int, done.stdout.split())


def test_a_large_intermediate_result_is_never_held_by_the_driver(tmp_path):
    length, grown = run_driver(tmp_path, BIG_INTERMEDIATE)
    assert length == 200 << 20
    assert grown < 50, f'the driver grew by {grown} MiB'


BIG_RESULT = '''
import resource, sys
from runforrest import TaskList, defer
import tasks_pipeline as tasks
tasklist = TaskList(sys.argv[1])
tasklist.schedule(defer(tasks.big_bytes, 200))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
[length] = [len(task.returnvalue) for task in tasklist.run(nprocesses=1)]
print(length, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10)
'''


def test_the_driver_reads_a_large_result_in_one_copy(tmp_path):
    # The outcome is read alone, and pickle reads its bytes straight into place.
    length, grown = run_driver(tmp_path, BIG_RESULT)
    assert length == 200 << 20
    assert grown < 300, f'the driver grew by {grown} MiB'


PARTS = 5000  # items of one result: a graph of thousands of tasks, behind one dependency


def schedule_a_large_graph(tasklist, last):
    """A task whose graph holds PARTS tasks, each an item of one scheduled
    task's result, and last(their sum)."""
    numbers = defer(list, range(PARTS))
    tasklist.schedule(numbers)
    task = defer(last, defer(sum, [numbers[index] for index in range(PARTS)]))
    tasklist.schedule(task, metadata='large')
    return task


def test_scheduling_a_task_that_takes_thousands_of_results_copies_little(tasklist):
    sources = [defer(tasks.pid) for _ in range(PARTS)]
    tracemalloc.start()
    try:
        for source in sources:
            tasklist.schedule(source)
        kept = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        name = tasklist.schedule(defer(sum, sources))
        peak = tracemalloc.get_traced_memory()[1] - kept
    finally:
        tracemalloc.stop()
    assert len(runforrest.read_task(tasklist._path('todo', name)).__dict__['_after'].split()) == PARTS
    # What a scheduled task keeps, its name on the list, takes some 170 bytes;
    # in a dict, and the task's __dict__, it took 310.
    assert kept < PARTS * 250, f'{kept // PARTS} bytes per scheduled task'
    # The file of the task that takes their results takes some 50 bytes per
    # dependency, pickling them some 250 to 450; building its graph again, or
    # copying its pickle, took 850 and more.
    assert peak < PARTS * 600, f'{peak // PARTS} bytes per dependency'


def test_yielding_a_task_of_a_large_graph_builds_none_of_it_in_the_driver(tasklist):
    total = schedule_a_large_graph(tasklist, int)
    tracemalloc.start()
    try:
        for task in tasklist.run(nprocesses=1):
            if task != total:  # from here on: filing it, running total, yielding it
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                continue
            assert (task.returnvalue, task.metadata) == (sum(range(PARTS)), 'large')
            grown = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # Built, its graph would take some 600 bytes per task.
    assert grown < PARTS * 100, f'the driver allocated {grown >> 10} KiB to yield it'


def test_a_large_task_read_back_reads_its_call_when_used_wherever_its_file_went(tasklist):
    ratio = schedule_a_large_graph(tasklist, lambda total: total / 0)
    [failed] = [task for task in tasklist.run(nprocesses=1) if task.errorvalue is not None]
    assert failed == ratio and isinstance(failed.errorvalue, ZeroDivisionError)
    tasklist.retry()  # its file moves back to todo/, where its call is read from
    [total] = failed._args
    assert total._fun is sum and len(total._args[0]._args) == 1 + PARTS
    again = runforrest.read_task(tasklist._path('todo', failed.taskname))
    assert (again, again.metadata) == (ratio, 'large')
    tasklist.clean()
    with pytest.raises(runforrest.TaskFileError, match='does not exist'):
        again._args
