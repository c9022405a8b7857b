"""The core of runforrest: the task graph, the store, running, and running by hand."""

import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest

import runforrest
from runforrest import (NotATaskList, NotPicklable, TaskFileError, TaskList,
                        TaskListExists, TaskTimeout, defer, evaluate)

import tasks
from conftest import environment, names, run_all, running_marks, task_file


# -- the task graph ----------------------------------------------------------

def test_readme_graph_examples():
    task1 = defer(dict, value=42)
    assert evaluate(task1) == {'value': 42}
    assert evaluate(defer(lambda x: x['value'], task1)) == 42
    assert evaluate(defer(lambda x: x, task1['value'])) == 42
    assert evaluate(defer({'value': 42})['value']) == 42
    assert evaluate(defer(list, [23, 42])[1]) == 42
    error = defer(Exception, 'an error message')
    assert evaluate(error.args) == ('an error message',)
    assert evaluate(defer(lambda x: x, error.args[0])) == 'an error message'
    assert evaluate(defer(42)) == evaluate(defer(lambda x: x, 42)) == 42
    assert evaluate(defer(dict, alpha='a', beta='b')) == {'alpha': 'a', 'beta': 'b'}


def test_parts_nest_to_any_depth_and_calls_on_parts_are_deferred():
    task = defer(dict, a={'b': [1, {'c': 'deep'}]})
    assert evaluate(task['a']['b'][1]['c']) == 'deep'
    resampled = defer(tasks.load, 44100).resample(8000)
    assert isinstance(resampled, runforrest.Task)
    assert evaluate(resampled.rate) == 8000


def test_tasks_inside_lists_tuples_and_dicts_are_evaluated():
    one, two = defer(1), defer(2)
    assert evaluate(defer(sum, [one, two, 3])) == 6
    assert evaluate(defer(tuple, (one, (two,)))) == (1, (2,))
    assert evaluate(defer(dict, {'x': one, 'y': [two]})) == {'x': 1, 'y': [2]}


def test_a_shared_subtask_runs_once(tmp_path):
    counter = tmp_path / 'count'
    shared = defer(tasks.count_call, str(counter), 5)
    assert evaluate(defer(lambda a, b, c: a + b + c, shared, shared, [shared][0])) == 15
    assert counter.read_text() == 'x'


def test_deep_chains_meet_no_recursion_limit(tmp_path):
    task = defer(0)
    for _ in range(10_000):
        task = defer(tasks.add_one, task)
    assert evaluate(task) == 10_000
    tasklist = TaskList(tmp_path / 'deep')
    tasklist.schedule(task)
    [result] = tasklist.run(nprocesses=1)
    assert result.returnvalue == 10_000
    assert result == task


def test_a_task_is_not_iterable_and_keeps_private_names():
    task = defer(list, [1, 2])
    with pytest.raises(TypeError, match='index it instead'):
        list(task)
    with pytest.raises(AttributeError):
        task._anything
    assert task.returnvalue is None and task.metadata is None


def test_defer_explains_what_is_wrong():
    with pytest.raises(TypeError, match='not callable.*defer\\(data\\)'):
        defer(42, 1)
    generator = (x for x in range(3))
    with pytest.raises(NotPicklable, match='argument 0 of identity.*generator'):
        defer(tasks.identity, generator)
    with pytest.raises(NotPicklable, match='argument numbers= of identity'):
        defer(tasks.identity, numbers=(x for x in range(3)))
    # Beside a task in a list, too (the task's own graph is not checked again).
    with pytest.raises(NotPicklable, match='argument 0 of identity.*generator'):
        defer(tasks.identity, [defer(tasks.identity, 1), (x for x in range(3))])


def test_tasks_compare_equal_after_the_round_trip(tasklist):
    task = defer(tasks.identity, 3)
    tasklist.schedule(task)
    [stored] = tasklist.todo_tasks()
    assert stored == task and hash(stored) == hash(task)
    assert stored != defer(tasks.identity, 3)
    assert pickle.loads(pickle.dumps(task)) == task


# -- the store -----------------------------------------------------------------

def test_an_existing_directory_is_refused_unless_exist_ok(tmp_path):
    TaskList(tmp_path / 'list').schedule(defer(1))
    with pytest.raises(TaskListExists, match='exist_ok=True'):
        TaskList(tmp_path / 'list')
    kept = TaskList(tmp_path / 'list', exist_ok=True, pre_clean=False)
    assert len(list(kept.todo_tasks())) == 1
    emptied = TaskList(tmp_path / 'list', exist_ok=True)
    assert list(emptied.todo_tasks()) == []


def test_a_directory_that_is_not_a_task_list_is_never_touched(tmp_path):
    (tmp_path / 'thesis').mkdir()
    (tmp_path / 'thesis' / 'chapter1.tex').write_text('precious')
    with pytest.raises(NotATaskList, match='not a task list'):
        TaskList(tmp_path / 'thesis', exist_ok=True)
    with pytest.raises(NotATaskList):
        TaskList.open(tmp_path / 'thesis')
    assert (tmp_path / 'thesis' / 'chapter1.tex').read_text() == 'precious'


def test_post_clean_removes_the_list_when_discarded(tmp_path):
    with TaskList(tmp_path / 'a', post_clean=True) as tasklist:
        tasklist.schedule(defer(1))
    assert not (tmp_path / 'a').exists()
    tasklist = TaskList(tmp_path / 'b', post_clean=True)
    del tasklist
    assert not (tmp_path / 'b').exists()


def test_noschedule_if_exist_resumes_the_remaining_tasks(tmp_path):
    first = TaskList(tmp_path / 'list', noschedule_if_exist=True)
    for value in range(3):
        first.schedule(defer(tasks.identity, value))
    first.flush()  # scheduling finished; say the machine crashes now
    assert len(list(first.todo_tasks())) == 3
    again = TaskList(tmp_path / 'list', noschedule_if_exist=True)
    for value in range(3):
        assert again.schedule(defer(tasks.identity, value)) is None
    assert sorted(task.returnvalue for task in again.run(nprocesses=2)) == [0, 1, 2]


def test_names_sort_in_schedule_order_and_run_starts_in_that_order(tasklist):
    names = [tasklist.schedule(defer(tasks.timed, 0.01), metadata=n) for n in range(12)]
    assert names == sorted(names) and names[0] == '00000001-timed'
    assert [task.metadata for task in tasklist.run(nprocesses=1)] == list(range(12))


def test_schedule_takes_tasks_only(tasklist):
    with pytest.raises(TypeError, match='defer'):
        tasklist.schedule(tasks.identity)


SCHEDULE_TWICE = '''
import os, sys, tasks
from runforrest import TaskList, defer
assert os.path.isdir('/proc/self/fd') == (sys.argv[2] == 'with /proc')
first = TaskList(sys.argv[1])
second = TaskList.open(sys.argv[1])  # sees no task yet: its next name is taken by then
for value in range(3):
    for tasklist in (first, second):
        print(tasklist.schedule(defer(tasks.identity, (id(tasklist), value))))
'''


@pytest.mark.parametrize('proc', ['with /proc', 'without /proc'])
def test_two_schedulers_on_one_list_overwrite_nothing(tmp_path, proc):
    # Task files are written nameless and linked in through /proc/self/fd;
    # without /proc, through a temporary name. Hide it in a mount namespace.
    command = [sys.executable, '-c', SCHEDULE_TWICE, str(tmp_path / 'list'), proc]
    if proc == 'without /proc':
        if os.geteuid() != 0:
            pytest.skip('hiding /proc in a mount namespace needs root')
        command = ['unshare', '--mount', '--kill-child', 'sh', '-c',
                   'mount -t tmpfs none /proc && exec "$@"', 'sh', *command]
    scheduled = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=60)
    if proc == 'without /proc' and 'mount' in scheduled.stderr and scheduled.returncode:
        pytest.skip(f'cannot hide /proc here: {scheduled.stderr.strip()}')
    assert scheduled.returncode == 0, scheduled.stderr
    scheduled_names = scheduled.stdout.split()
    assert len(set(scheduled_names)) == len(scheduled_names) == 6, scheduled_names
    tasklist = TaskList.open(tmp_path / 'list')
    assert names(tmp_path / 'list', 'todo') == sorted(scheduled_names)
    values = [evaluate(task) for task in tasklist.todo_tasks()]
    assert sorted(value for _, value in values) == [0, 0, 1, 1, 2, 2]
    assert len({scheduler for scheduler, _ in values}) == 2


def test_logfile_takes_output_and_diagnostics(tmp_path, capfd):
    log = tmp_path / 'log.txt'
    tasklist = TaskList(tmp_path / 'list', logfile=str(log))
    tasklist.schedule(defer(print, 'hello from the task'))
    tasklist.schedule(defer(tasks.fail, 'boom'))
    run_all(tasklist, nprocesses=2)
    text = log.read_text()
    assert 'hello from the task' in text
    assert 'schedule 00000001-print' in text
    assert 'start 00000001-print' in text and 'done 00000001-print' in text
    assert 'fail 00000002-fail' in text and 'ValueError: boom' in text
    assert 'hello from the task' not in capfd.readouterr().out


def test_without_logfile_task_output_reaches_the_terminal(tasklist, capfd):
    tasklist.schedule(defer(print, 'visible'))
    run_all(tasklist, nprocesses=1)
    assert 'visible' in capfd.readouterr().out


# -- running -------------------------------------------------------------------

def test_readme_loop_yields_every_task_with_its_outcome(tasklist):
    for item in range(4):
        task = defer(tasks.prepare, item)
        task = defer(tasks.dostuff, task[1], task['thing'])
        tasklist.schedule(task, metadata={'item': item})
    tasklist.schedule(defer(tasks.fail, 'bad item'), metadata={'item': 'bad'})
    run = tasklist.run(nprocesses=2)
    assert len(run) == 5
    results = {task.metadata['item']: task for task in run}
    assert {item: results[item].returnvalue for item in range(4)} == {0: 1, 1: 12, 2: 23, 3: 34}
    failed = results['bad']
    assert isinstance(failed.errorvalue, ValueError) and str(failed.errorvalue) == 'bad item'
    assert 'in fail' in failed.traceback and failed.runtime > 0
    assert sorted(t.metadata['item'] for t in tasklist.done_tasks()) == [0, 1, 2, 3]
    assert [t.errorvalue.args for t in tasklist.fail_tasks()] == [('bad item',)]
    assert list(tasklist.todo_tasks()) == []


@pytest.mark.parametrize('start_method', ['forkserver', 'spawn'])
def test_each_task_gets_a_fresh_process_in_its_own_group(tasklist, start_method):
    for _ in range(4):
        tasklist.schedule(defer(tasks.timed, 0.2))
    results = [task.returnvalue for task in tasklist.run(nprocesses=2, start_method=start_method)]
    pids = {result['pid'] for result in results}
    assert len(pids) == 4 and os.getpid() not in pids
    assert all(result['pgid'] == result['pid'] for result in results)
    intervals = sorted((r['start'], r['end']) for r in results)
    overlapping = max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals)
    assert overlapping <= 2


@pytest.mark.parametrize('start_method', ['forkserver', 'spawn'])
def test_the_next_task_starts_while_the_loop_body_holds_a_result(tasklist, tmp_path,
                                                                 start_method):
    marker = tmp_path / 'second-ran'
    tasklist.schedule(defer(tasks.identity, 1))
    tasklist.schedule(defer(tasks.count_call, str(marker), 2))
    seen = []
    for task in tasklist.run(nprocesses=1, start_method=start_method):
        if not seen:  # the one slot is free: the second task runs meanwhile
            deadline = time.monotonic() + 60
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert marker.exists(), 'the second task did not start while the first was held'
        seen.append(task.returnvalue)
    assert seen == [1, 2]


def test_state_of_one_task_is_not_seen_by_the_next(tasklist):
    tasklist.schedule(defer(setattr, tasks, 'leaked', 'yes'))
    tasklist.schedule(defer(getattr, tasks, 'leaked', 'no'))
    assert [task.returnvalue for task in tasklist.run(nprocesses=1)] == [None, 'no']


def test_default_nprocesses_is_the_cpus_we_may_use(tasklist):
    assert tasklist.run().nprocesses == len(os.sched_getaffinity(0))


def test_impossible_options_are_refused(tasklist):
    for options, message in [({'nprocesses': 0}, 'nprocesses'), ({'autokill': -1}, 'autokill'),
                             ({'memory_limit': 'lots'}, 'memory_limit'),
                             ({'start_method': 'teleport'}, 'start_method'),
                             ({'retries': -1}, 'retries'),
                             ({'preload': ['numpy'], 'start_method': 'spawn'}, 'preload'),
                             ({'executor': 'cluster'}, 'executor')]:
        with pytest.raises((ValueError, TypeError), match=message):
            tasklist.run(**options)


def test_autokill_fails_the_task_and_says_why(tasklist):
    tasklist.schedule(defer(tasks.hang))
    tasklist.schedule(defer(tasks.identity, 'fine'))
    results = run_all(tasklist, nprocesses=2, autokill=1)
    killed = results['00000001-hang'].errorvalue
    assert isinstance(killed, TaskTimeout) and 'killed after 1 s' in str(killed)
    assert results['00000002-identity'].returnvalue == 'fine'
    assert [t.taskname for t in tasklist.fail_tasks()] == ['00000001-hang']


def test_autokill_counts_from_the_task_s_start_not_from_the_wait_for_a_process(
        tasklist, tmp_path, monkeypatch):
    # The template imports slow_to_load for 3 s before it forks a process
    # for the first task: a wait longer than autokill.
    (tmp_path / 'slow_to_load.py').write_text(textwrap.dedent(f'''
        import os, time
        if os.getpid() != {os.getpid()}:  # not in the driver
            time.sleep(3)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    tasklist.schedule(defer(tasks.identity, 'in time'))
    [task] = tasklist.run(nprocesses=1, autokill=2, preload=['slow_to_load'])
    assert task.returnvalue == 'in time', task.errorvalue


def test_preloaded_modules_are_imported_once_for_all_tasks(tmp_path):
    # tasks.imported_in() says which process imported its module first.
    runs = {}
    for preload in ([], ['tasks']):
        tasklist = TaskList(tmp_path / f'preload-{preload}')
        for _ in range(3):
            tasklist.schedule(defer(tasks.imported_in))
        runs[bool(preload)] = [task.returnvalue for task in
                               tasklist.run(nprocesses=2, preload=preload)]
    assert all(importer == pid for importer, pid in runs[False]), runs
    importers = {importer for importer, _ in runs[True]}
    assert len(importers) == 1 and importers.isdisjoint(pid for _, pid in runs[True]), runs
    assert importers != {os.getpid()}, 'the driver imported it, not the template'


def test_the_next_task_imports_its_function_while_the_last_slot_is_busy(
        tasklist, tmp_path, monkeypatch):
    # ahead.py marks each process that imports it. The first task ends only
    # once a process other than the driver has imported it: the second
    # task's own, staged while the first runs.
    (tmp_path / 'ahead.py').write_text(textwrap.dedent(f'''
        import os, time
        open(os.path.join({str(tmp_path)!r}, f'imported-{{os.getpid()}}'), 'w').close()

        def called():
            return os.getpid(), time.time()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import ahead
    tasklist.schedule(defer(tasks.wait_for_files, str(tmp_path), 'imported-*', 2))
    tasklist.schedule(defer(ahead.called))
    first, second = tasklist.run(nprocesses=1)
    assert first.returnvalue is not None, 'the second task was not imported ahead'
    pid, called = second.returnvalue
    assert (tmp_path / f'imported-{pid}').exists()  # in its own process
    assert called > first.returnvalue  # and none of it ran before its turn


def test_the_next_task_reads_the_results_it_takes_while_the_last_slot_is_busy(
        tasklist, tmp_path):
    # Unpickling the first task's result leaves loaded-PID. In a second run,
    # the task that runs first ends once a process other than the driver has
    # loaded it: that of the task that takes it, staged meanwhile.
    marked = defer(tasks.LoadedMark, str(tmp_path), os.getpid())
    tasklist.schedule(marked)
    [done] = tasklist.run(nprocesses=1)
    assert done.errorvalue is None, done.traceback
    tasklist.schedule(defer(tasks.wait_for_files, str(tmp_path), 'loaded-*', 1))
    taker = tasklist.schedule(defer(tasks.where, marked))
    first, second = tasklist.run(nprocesses=1)
    assert first.returnvalue is not None, 'the result was not read ahead'
    assert second.taskname == taker and second.errorvalue is None, second.traceback
    value, pid, _ = second.returnvalue
    assert isinstance(value, tasks.LoadedMark)
    assert [path.name for path in tmp_path.glob('loaded-*')] == [f'loaded-{pid}']


def test_a_task_that_waits_for_the_running_one_imports_ahead_or_is_let_go(
        tasklist, tmp_path, monkeypatch):
    # Each task that takes the result of the one running imports its module
    # ahead, which ends that one: the first fails, and so the task staged for
    # it never runs; its standby makes way for the next, scheduled meanwhile.
    for name in ('first_ahead', 'second_ahead'):
        (tmp_path / f'{name}.py').write_text(textwrap.dedent(f'''
            import os
            if os.getpid() != {os.getpid()}:  # not in the driver
                open(os.path.join({str(tmp_path)!r}, '{name}-imported'), 'w').close()

            def called(value):
                return value
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    first_ahead, second_ahead = __import__('first_ahead'), __import__('second_ahead')
    failing = defer(tasks.step, RuntimeError('on purpose'),
                    wait=str(tmp_path / 'first_ahead-imported'))
    first = tasklist.schedule(failing)
    unrun = tasklist.schedule(defer(first_ahead.called, failing))
    results = {}
    for task in tasklist.run(nprocesses=1):
        results[task.taskname] = task
        if task.taskname == first:
            succeeding = defer(tasks.step, 'second', wait=str(tmp_path / 'second_ahead-imported'))
            second = tasklist.schedule(succeeding)
            last = tasklist.schedule(defer(second_ahead.called, succeeding))
    assert str(results[first].errorvalue) == 'on purpose', 'its dependent was not staged'
    assert isinstance(results[unrun].errorvalue, runforrest.DependencyFailed)
    assert results[second].returnvalue == 'second', 'the next was not staged'
    assert results[last].returnvalue == 'second'


def test_a_task_that_waits_only_for_running_tasks_imports_ahead(tasklist, tmp_path, monkeypatch):
    # Both tasks it takes end only once its module was imported in a
    # process other than the driver's: its own, staged while they both run.
    (tmp_path / 'summary_ahead.py').write_text(textwrap.dedent(f'''
        import os
        if os.getpid() != {os.getpid()}:  # not in the driver
            open(os.path.join({str(tmp_path)!r}, 'summary_ahead-imported'), 'w').close()

        def called(*values):
            return values
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    summary_ahead = __import__('summary_ahead')
    items = [defer(tasks.wait_for_files, str(tmp_path), 'summary_ahead-imported', 1)
             for _ in range(2)]
    for item in items:
        tasklist.schedule(item)
    summary = tasklist.schedule(defer(summary_ahead.called, *items))
    results = run_all(tasklist, nprocesses=2)
    assert None not in results[summary].returnvalue, 'it was not staged while they ran'


def broken_at_import(directory, fault, monkeypatch):
    """A module whose import in a process other than this one leaves a file
    imported-PID in directory, then raises or segfaults."""
    module = f'broken_{directory.name}'  # a new one for each test
    (directory / f'{module}.py').write_text(textwrap.dedent(f'''
        import os, signal
        if os.getpid() != {os.getpid()}:  # not in the driver
            open(os.path.join({str(directory)!r}, f'imported-{{os.getpid()}}'), 'w').close()
            if {fault!r} == 'raise':
                raise RuntimeError('broken at import')
            os.kill(os.getpid(), signal.SIGSEGV)

        def never():
            return 'ran'
    '''))
    monkeypatch.syspath_prepend(str(directory))
    return __import__(module)


@pytest.mark.parametrize('fault, imports', [('raise', 1), ('segfault', 2)])
def test_a_task_whose_import_fails_ahead_fails_in_its_turn(tasklist, tmp_path, monkeypatch,
                                                           fault, imports):
    # Its standby records the error when the task starts; a task whose
    # import kills its standby is not staged again while the task before it
    # runs on (it would only die again), and dies in its turn, unstaged.
    broken = broken_at_import(tmp_path, fault, monkeypatch)
    # A run looks for the next task after each end and each yield; the
    # first task makes it look while `never` is staged.
    tasklist.schedule(defer(tasks.identity, 'first'))
    tasklist.schedule(defer(tasks.count_files_later, str(tmp_path), 'imported-*', 1, 1.0))
    tasklist.schedule(defer(broken.never))
    tasklist.schedule(defer(tasks.identity, 'after'))
    results = run_all(tasklist, nprocesses=1)
    assert results['00000002-count_files_later'].returnvalue == 1, 'not staged once, ahead'
    error = results['00000003-never'].errorvalue
    if fault == 'raise':
        assert isinstance(error, TaskFileError) and 'broken at import' in str(error)
    else:
        assert isinstance(error, runforrest.TaskCrashed), error
    assert results['00000004-identity'].returnvalue == 'after'
    assert 1 <= len(list(tmp_path.glob('imported-*'))) <= imports  # 1: it died on its go


def test_print_errors_prints_the_traceback_as_it_happens(tasklist, capfd):
    tasklist.schedule(defer(tasks.fail, 'loudly'))
    run_all(tasklist, nprocesses=1, print_errors=True)
    err = capfd.readouterr().err
    assert 'Traceback' in err and 'ValueError: loudly' in err and 'in fail' in err


def test_a_failed_task_moved_back_to_todo_runs_again(tasklist):
    tasklist.schedule(defer(tasks.fail, 'once'))
    run_all(tasklist, nprocesses=1)
    [name] = [t.taskname for t in tasklist.fail_tasks()]
    os.rename(task_file(tasklist.directory, 'fail', name),
              task_file(tasklist.directory, 'todo', name))  # as the README says
    [again] = tasklist.run(nprocesses=1)
    assert again.taskname == name and str(again.errorvalue) == 'once'


def test_clean_removes_selectively_and_leaves_the_list_usable(tasklist):
    tasklist.schedule(defer(tasks.identity, 1))
    tasklist.schedule(defer(tasks.fail, 'x'))
    run_all(tasklist, nprocesses=2)
    tasklist.schedule(defer(tasks.identity, 2))
    tasklist.clean(clean_todo=False, clean_done=False)
    assert [len(names(tasklist.directory, s)) for s in ('todo', 'done', 'fail')] == [1, 1, 0]
    tasklist.clean()
    assert not os.path.exists(tasklist.directory)
    tasklist.schedule(defer(tasks.identity, 3))
    assert [task.returnvalue for task in tasklist.run(nprocesses=1)] == [3]


def test_tasks_run_with_the_drivers_directory_and_import_path(tmp_path):
    """A function in a module next to the driver script, reading a file
    relative to the driver's working directory."""
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'helpers.py').write_text('def shout(text):\n    return text.upper()\n')
    (project / 'data.txt').write_text('from the working directory')
    (project / 'driver.py').write_text(textwrap.dedent('''
        import helpers, os, tasks
        from runforrest import TaskList, defer
        tasklist = TaskList('list')
        tasklist.schedule(defer(helpers.shout, 'next to the script'))
        tasklist.schedule(defer(tasks.read_relative, 'data.txt'))
        for method in ('forkserver', 'spawn'):
            for task in tasklist.run(nprocesses=2, start_method=method):
                print(task.returnvalue, task.errorvalue)
            tasklist.retry()
            for task in tasklist.done_tasks():  # back to todo/, to run again
                os.replace(f'list/done/{task.taskname}.pkl', f'list/todo/{task.taskname}.pkl')
    '''))
    done = subprocess.run([sys.executable, str(project / 'driver.py')], cwd=project,
                          env=environment(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('NEXT TO THE SCRIPT None') == 2
    assert done.stdout.count('from the working directory None') == 2


def test_save_session_gives_tasks_the_drivers_main_globals(tmp_path):
    script = tmp_path / 'driver.py'
    script.write_text(textwrap.dedent('''
        import tasks
        from runforrest import TaskList, defer
        SETTING = 'from the session'
        tasklist = TaskList('list')
        tasklist.schedule(defer(tasks.main_global, 'SETTING'))
        [without] = tasklist.run(nprocesses=1)
        tasklist.retry()
        [with_session] = tasklist.run(nprocesses=1, save_session=True)
        print(type(without.errorvalue).__name__, with_session.returnvalue)
    '''))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=environment(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split('\n')[-2] == 'AttributeError from the session'


# -- running by hand -------------------------------------------------------------

def run_by_hand(*args):
    return subprocess.run([sys.executable, '-m', 'runforrest', *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_a_task_file_runs_by_hand(tasklist, tmp_path):
    good, bad = (task_file(tasklist.directory, 'todo', tasklist.schedule(task))
                 for task in (defer(tasks.dostuff, 1, 2), defer(tasks.fail, 'by hand')))
    done = run_by_hand(good, tmp_path / 'good.pkl')
    assert done.returncode == 0
    assert runforrest.read_task(tmp_path / 'good.pkl').returnvalue == 3
    failed = run_by_hand(bad, tmp_path / 'bad.pkl', '-p')
    assert failed.returncode == 1 and 'ValueError: by hand' in failed.stderr
    raised = run_by_hand(bad, tmp_path / 'bad.pkl', '--do_raise')
    assert raised.returncode == 1 and 'in fail' in raised.stderr and 'raise ValueError' in raised.stderr
    assert os.path.exists(bad)  # running by hand moves nothing


def test_a_missing_task_file_is_named(tmp_path):
    done = run_by_hand(tmp_path / 'nothing.pkl', tmp_path / 'out.pkl')
    assert done.returncode == 2 and 'nothing.pkl does not exist' in done.stderr
    with pytest.raises(TaskFileError, match='nothing.pkl does not exist'):
        runforrest.read_task(tmp_path / 'nothing.pkl')
    (tmp_path / 'junk.pkl').write_bytes(b'not a pickle at all')
    with pytest.raises(TaskFileError, match='junk.pkl is not a runforrest task file'):
        runforrest.read_task(tmp_path / 'junk.pkl')


def test_a_traceback_starts_at_the_tasks_own_code(tasklist):
    tasklist.schedule(defer(tasks.fail, 'where'))
    [task] = tasklist.run(nprocesses=1)
    assert 'runforrest.py' not in task.traceback
    assert 'in fail' in task.traceback and 'ValueError: where' in task.traceback


def test_an_empty_directory_is_as_good_as_none(tmp_path):
    (tmp_path / 'empty').mkdir()
    tasklist = TaskList(tmp_path / 'empty')
    tasklist.schedule(defer(tasks.identity, 1))
    assert [task.returnvalue for task in tasklist.run(nprocesses=1)] == [1]


def test_pmap_never_reuses_an_existing_list(tmp_path):
    TaskList(tmp_path / 'list').schedule(defer(1))
    with pytest.raises(TaskListExists):
        list(runforrest.pmap(tasks.identity, [1], directory=tmp_path / 'list'))
    assert len(list(TaskList.open(tmp_path / 'list').todo_tasks())) == 1


def test_breaking_out_leaves_no_marks_of_running_tasks(tasklist):
    tasklist.schedule(defer(tasks.identity, 1))
    tasklist.schedule(defer(tasks.hang))
    for task in tasklist.run(nprocesses=2):
        break
    assert running_marks(tasklist.directory) == []
    assert names(tasklist.directory, 'todo') == ['00000002-hang']


def test_a_task_scheduled_from_the_loop_body_joins_the_run(tasklist):
    tasklist.schedule(defer(pow, 2, 1))
    seen = []
    for task in tasklist.run(nprocesses=1):
        seen.append(task.returnvalue)
        if task.returnvalue < 8:
            tasklist.schedule(defer(pow, 2, len(seen) + 1))
    assert seen == [2, 4, 8]
    assert list(tasklist.todo_tasks()) == []
