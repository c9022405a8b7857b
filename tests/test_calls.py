"""Calls, as procs makes them: call() runs a list of procs at once;
background() starts one call and returns a Future; pmap_rows() splits an
array's rows over processes. Each call runs in a process of its own."""

import concurrent.futures
import os
import subprocess
import sys
import time

import pytest

import runforrest
from runforrest import background, call, pmap_rows, proc

import tasks

numpy = pytest.importorskip('numpy')

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures('temporary_directory')]


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def gone(pid):
    try:
        with open(f'/proc/{pid}/stat') as file:
            return file.read().rsplit(')', 1)[1].split()[0] == 'Z'  # a zombie is dead
    except FileNotFoundError:
        return True


# -- call

def test_results_come_in_the_order_given(tmp_path, temporary_directory):
    # The first call waits until the last one has finished, so it ends last.
    signal = tmp_path / 'last-done'
    first, second, last = call([proc(tasks.step, 'first', wait=signal),
                                proc(tasks.step, 'second'),
                                proc(tasks.step, 'last', create=signal)], nprocesses=3)
    assert (first, second, last) == ('first', 'second', 'last')
    assert os.listdir(temporary_directory) == []


def test_each_result_comes_when_it_and_those_before_are_ready(tmp_path):
    signal = tmp_path / 'go'
    results = call([proc(tasks.step, 'first'), proc(tasks.step, 'last', wait=signal)],
                   nprocesses=2)
    assert next(results) == 'first'
    signal.touch()
    assert list(results) == ['last']


def test_each_call_runs_in_a_process_of_its_own():
    results = list(call([proc(tasks.where, n) for n in range(3)], nprocesses=3))
    pids = {pid for _, pid, _ in results}
    assert len(pids) == 3 and os.getpid() not in pids


def test_a_raised_error_tells_which_call_failed():
    with pytest.raises(ZeroDivisionError) as raised:
        list(call([proc(tasks.divide, 1, 1), proc(tasks.divide, 1, 0)]))
    assert raised.value.item_index == 1
    assert raised.value.__notes__ == ['(raised by call item 1)']
    assert 'in divide' in str(raised.value.__cause__)


def test_errors_can_be_returned_and_a_crash_fails_only_its_call():
    results = list(call([proc(tasks.crash), proc(tasks.square, 3)], errors='return'))
    assert isinstance(results[0], runforrest.TaskCrashed)
    assert results[0].item_index == 0
    assert results[1] == 9


def test_run_options_apply_to_every_call():
    late, fine = call([proc(tasks.hang), proc(tasks.square, 2)], autokill=2,
                      errors='return')
    assert isinstance(late, runforrest.TaskTimeout) and fine == 4


def test_calls_on_threads():
    results = list(call([proc(tasks.where, n) for n in range(3)], threads=True))
    assert [value for value, _, _ in results] == [0, 1, 2]
    assert {pid for _, pid, _ in results} == {os.getpid()}


def test_proc_refuses_what_is_not_callable():
    with pytest.raises(TypeError, match=r'proc\(\) calls its first argument, but an int 42 '
                                        r'is not callable'):
        proc(42, 1)


def test_call_refuses_what_is_not_a_proc():
    with pytest.raises(TypeError, match=r'call\(\) takes procs, but item 1 is a tuple '
                                        r"\(<built-in function abs>, -1\); make each call "
                                        r'with proc\(fun, \*args, \*\*kwargs\)'):
        list(call([proc(abs, -1), (abs, -1)]))
    with pytest.raises(TypeError, match=r'call\(\) takes an iterable of items, not a Call'):
        call(proc(abs, -1))


# -- background

def test_background_returns_a_future_of_the_result(temporary_directory):
    future = background(tasks.divide, 9, 3)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == 3
    assert future.join() == 3
    assert future.done() and not future.running()
    wait_for(lambda: os.listdir(temporary_directory) == [])


def test_background_calls_run_at_once_side_by_side(tmp_path):
    signal = tmp_path / 'second-started'
    first = background(tasks.step, 'first', wait=signal)
    second = background(tasks.step, 'second', create=signal)
    assert (first.join(), second.join()) == ('first', 'second')


def test_background_raises_the_calls_error_with_its_traceback():
    future = background(tasks.divide, 1, 0)
    with pytest.raises(ZeroDivisionError) as raised:
        future.result(timeout=30)
    assert 'in divide' in str(raised.value.__cause__)
    assert isinstance(future.exception(), ZeroDivisionError)


def test_background_run_options_come_with_a_proc():
    # The keywords of background(proc(...)) are run options; those of a
    # plain background(fun, ...) are fun's, whatever their names.
    future = background(proc(tasks.hang), autokill=1)
    with pytest.raises(runforrest.TaskTimeout):
        future.result(timeout=30)
    assert background(tasks.arguments, autokill=1).result(timeout=30) == ((), {'autokill': 1})


def test_background_result_can_time_out_and_cancel_kills_the_call_and_its_children(
        tmp_path, temporary_directory):
    pidfile = tmp_path / 'pids'
    future = background(tasks.hang_with_child, str(pidfile))
    wait_for(pidfile.exists)
    pids = [int(pid) for pid in pidfile.read_text().split()]
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.1)
    assert future.running() and not any(gone(pid) for pid in pids)
    assert future.cancel()
    assert future.cancelled()
    wait_for(lambda: all(gone(pid) for pid in pids))
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()
    assert os.listdir(temporary_directory) == []


def test_cancelled_futures_wake_those_who_wait_for_them():
    futures = [background(tasks.hang) for _ in range(2)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(concurrent.futures.wait, futures)
        for future in futures:
            assert future.cancel()
        done, not_done = waiting.result(timeout=30)
    assert done == set(futures) and not not_done


def test_cancel_after_the_end_changes_nothing():
    future = background(abs, -2)
    assert future.result(timeout=30) == 2
    assert not future.cancel()
    assert future.result() == 2


def test_background_refuses_bad_input():
    with pytest.raises(TypeError, match=r'background\(\) calls its first argument, but '
                                        r'a str .* is not callable'):
        background('abs', -1)
    with pytest.raises(TypeError, match='takes the arguments of the call inside proc'):
        background(proc(abs), -1)
    with pytest.raises(TypeError, match='takes no nprocesses'):
        background(proc(abs, -1), nprocesses=2)
    with pytest.raises(ValueError, match='autokill must be'):
        background(proc(abs, -1), autokill=0)


# -- pmap_rows

def test_pmap_rows_equals_the_function_on_the_whole_array():
    X = numpy.arange(30.0).reshape(10, 3)

    def rowwise(X):
        return numpy.sqrt(X) + X.sum(axis=1, keepdims=True)

    assert numpy.array_equal(pmap_rows(rowwise, X, nprocesses=3), rowwise(X))


def test_pmap_rows_runs_one_chunk_per_process():
    X = numpy.arange(14.0).reshape(7, 2)
    result = pmap_rows(tasks.rows_with_pid, X, nprocesses=3)
    assert numpy.array_equal(result[:, :2], X * 2)
    pids = result[:, 2]
    assert len(set(pids)) == 3 and os.getpid() not in set(pids)
    assert list(pids[:3]) == [pids[0]] * 3  # array_split: chunks of 3, 2 and 2 rows


def test_pmap_rows_of_fewer_rows_than_processes_and_of_none():
    assert numpy.array_equal(pmap_rows(numpy.negative, numpy.array([1, 2]), nprocesses=4),
                             [-1, -2])
    assert pmap_rows(numpy.negative, numpy.zeros((0, 3))).shape == (0, 3)


def test_pmap_rows_names_the_rows_of_a_failure():
    def fail_on_negative(X):
        if (X < 0).any():
            raise ValueError('negative')
        return X

    with pytest.raises(ValueError, match='negative') as raised:
        pmap_rows(fail_on_negative, numpy.array([1, 2, -3, 4]), nprocesses=2)
    assert raised.value.__notes__ == ['(raised by pmap_rows chunk 1, rows 2 to 3)']


def test_pmap_rows_refuses_what_is_not_an_array():
    with pytest.raises(TypeError, match=r'pmap_rows splits a NumPy array along its first '
                                        r'axis, not a list \[\[1, 2\]\]; make one with '
                                        r'numpy.asarray\(X\)'):
        pmap_rows(numpy.negative, [[1, 2]])
    with pytest.raises(TypeError, match=r'array\(5\) has no rows: it has no axis at all'):
        pmap_rows(numpy.negative, numpy.array(5))
    with pytest.raises(TypeError, match=r'pmap_rows\(\) calls its first argument'):
        pmap_rows(None, numpy.array([1]))


def test_pmap_rows_refuses_results_that_are_not_arrays():
    with pytest.raises(TypeError, match='pmap_rows joins the arrays that fun returns for each '
                                        'chunk of rows, but for pmap_rows chunk 0, rows 0 to 1 '
                                        'it returned a float'):
        pmap_rows(numpy.sum, numpy.array([1.0, 2.0, 3.0]), nprocesses=2)


def test_pmap_rows_without_numpy_says_what_to_install():
    hide_numpy = ("import sys; sys.modules['numpy'] = None\n"
                  "import runforrest\n"
                  "runforrest.pmap_rows(abs, [1])\n")
    done = subprocess.run([sys.executable, '-c', hide_numpy], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert 'ImportError: pmap_rows needs NumPy: pip install numpy' in done.stderr
