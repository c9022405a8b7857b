"""pmap: a parallel map, each call in a process of its own (or, asked
for, on a thread), taking its input lazily."""

import itertools
import os
import signal
import subprocess
import sys
import threading
import traceback

import pytest

import runforrest
from runforrest import pmap

import tasks
from conftest import session_members, wait_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures('temporary_directory')]


def test_results_keep_the_order_of_the_items(tmp_path):
    # The first item waits until the last one has finished, so it ends last.
    signal = tmp_path / 'last-done'
    items = [('first', {'wait': signal}), ('second', {}), ('last', {'create': signal})]
    assert list(pmap(tasks.step, items, nprocesses=3, kwstar=True)) == \
        ['first', 'second', 'last']


def test_results_come_as_soon_as_they_and_those_before_are_ready(tmp_path):
    # The last item waits for us; we get the others before we let it go.
    signal = tmp_path / 'go'
    items = [('first', {}), ('second', {}), ('last', {'wait': signal})]
    results = pmap(tasks.step, items, nprocesses=3, kwstar=True)
    assert next(results) == 'first'
    assert next(results) == 'second'
    signal.touch()
    assert list(results) == ['last']


def test_lambdas_and_closures():
    offset = 10
    assert list(pmap(lambda x: x + offset, [1, 2], nprocesses=2)) == [11, 12]

    def scale(factor):
        return lambda x: x * factor
    assert list(pmap(scale(3), [1, 2], nprocesses=2)) == [3, 6]


@pytest.mark.parametrize('star, kwstar, item, called_with', [
    (False, False, 1, ((1, 'extra'), {'k': 'fixed'})),
    (True, False, (1, 2), ((1, 2, 'extra'), {'k': 'fixed'})),
    (None, False, 'unused', (('extra',), {'k': 'fixed'})),
    (None, True, {'j': 2}, (('extra',), {'k': 'fixed', 'j': 2})),
    (False, True, (1, {'j': 2}), ((1, 'extra'), {'k': 'fixed', 'j': 2})),
    (True, True, ((1, 2), {'j': 3}), ((1, 2, 'extra'), {'k': 'fixed', 'j': 3})),
    # The item's keywords win over the fixed ones.
    (False, True, (1, {'k': 'mine'}), ((1, 'extra'), {'k': 'mine'})),
])
@pytest.mark.parametrize('threads', [False, True])
def test_how_items_become_arguments(star, kwstar, item, called_with, threads):
    # As in the table of pmap's docstring, with args and kwargs as extras.
    assert list(pmap(tasks.arguments, [item], star=star, kwstar=kwstar, threads=threads,
                     args=('extra',), kwargs={'k': 'fixed'})) == [called_with]


def test_raise_raises_the_first_error_in_input_order(tmp_path):
    # The second item fails first, yet the first item's error is raised.
    signal = tmp_path / 'second-failed'
    items = [(ValueError('first'), {'wait': signal}),
             (KeyError('second'), {'create': signal})]
    with pytest.raises(ValueError, match='first') as raised:
        list(pmap(tasks.step, items, nprocesses=2, kwstar=True))
    cause = str(raised.value.__cause__)
    assert 'Traceback (most recent call last)' in cause
    assert 'tasks.py' in cause and 'raise result' in cause
    assert raised.value.item_index == 0
    assert raised.value.__notes__ == ['(raised by pmap item 0)']


@pytest.mark.parametrize('threads', [False, True])
def test_a_raised_error_tells_which_item_failed(threads):
    with pytest.raises(ZeroDivisionError) as raised:
        list(pmap(tasks.divide, [(1, 1), (4, 2), (1, 0), (3, 1)], star=True,
                  threads=threads))
    assert raised.value.item_index == 2
    assert '(raised by pmap item 2)' in ''.join(traceback.format_exception(raised.value))


@pytest.mark.parametrize('threads', [False, True])
def test_return_yields_errors_in_place(threads):
    results = list(pmap(tasks.divide, [(1, 1), (1, 0), (4, 2)], star=True,
                        errors='return', threads=threads))
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ZeroDivisionError)
    assert results[1].item_index == 1
    assert results[1].__notes__ == ['(raised by pmap item 1)']


def test_a_crash_fails_only_its_own_item():
    results = list(pmap(lambda crash: tasks.crash() if crash else 'fine',
                        [False, True, False], nprocesses=2, errors='return'))
    assert results[0] == results[2] == 'fine'
    assert isinstance(results[1], runforrest.TaskCrashed)
    assert results[1].signal == 'SIGSEGV'


def test_autokill_stops_an_item_that_hangs():
    results = list(pmap(lambda hang: tasks.hang() if hang else 'fine', [True, False],
                        nprocesses=2, autokill=2, errors='return'))
    assert isinstance(results[0], runforrest.TaskTimeout)
    assert results[1] == 'fine'


def test_unknown_errors_mode_is_refused():
    with pytest.raises(ValueError, match='errors must be'):
        pmap(abs, [1], errors='ignore')  # at the call, before any result


@pytest.mark.parametrize('call, message', [
    (lambda: pmap(42, [1]), r'pmap\(\) calls its first argument, but an int 42 is not callable'),
    (lambda: pmap(abs, 42), r'pmap\(\) takes an iterable of items, not an int 42'),
    (lambda: pmap(abs, [1], star='yes'), 'star must be False, True or None'),
    (lambda: pmap(abs, [1], lookahead=0), 'lookahead must be a whole number of at least 1'),
    (lambda: pmap(abs, [1], nprocesses=0), 'nprocesses must be a whole number'),
    (lambda: pmap(abs, [1], autokill=-1), 'autokill must be a number of seconds above 0'),
    (lambda: pmap(abs, [1], threads=True, autokill=5),
     'threads=True runs the calls on threads of this process, which cannot be killed '
     'or limited: autokill need processes'),
])
def test_bad_arguments_are_refused_at_the_call(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call()


@pytest.mark.parametrize('threads', [False, True])
@pytest.mark.parametrize('star, kwstar, items, message', [
    (True, False, [(1, 2), 5], 'with star=True, each item is unpacked into arguments, but '
     'item 1 is an int 5, which is not iterable; pass star=False'),
    (False, True, [(1, {}), 7], r'with kwstar=True, each item is a pair \(value, keywords\), '
     'but item 1 is an int 7'),
    (False, True, [(1, 'j')],
     "with kwstar=True, item 0 must supply a dict of keywords, not a str 'j'"),
    (None, True, [{}, [1]],
     r'with kwstar=True, item 1 must supply a dict of keywords, not a list \[1\]'),
])
def test_an_item_that_does_not_fit_the_mode_is_named(star, kwstar, items, message, threads):
    with pytest.raises(TypeError, match=message):
        list(pmap(tasks.arguments, items, star=star, kwstar=kwstar, threads=threads))


def test_an_existing_directory_is_refused(tmp_path):
    (tmp_path / 'kept').mkdir()
    (tmp_path / 'kept' / 'precious').touch()
    with pytest.raises(runforrest.TaskListExists,
                       match='a map keeps its tasks in a new directory'):
        pmap(abs, [1], directory=tmp_path / 'kept')
    assert os.listdir(tmp_path / 'kept') == ['precious']


def test_the_temporary_task_list_is_removed(temporary_directory):
    assert list(pmap(abs, [-1, -2])) == [1, 2]
    assert os.listdir(temporary_directory) == []


def test_the_temporary_task_list_is_removed_after_an_error(temporary_directory):
    with pytest.raises(ZeroDivisionError):
        list(pmap(tasks.divide, [(1, 0), (1, 1)], star=True))
    assert os.listdir(temporary_directory) == []


def test_the_temporary_task_list_is_removed_when_we_stop_early(temporary_directory):
    results = pmap(abs, [-1, -2, -3], nprocesses=1)
    assert next(results) == 1
    results.close()
    assert os.listdir(temporary_directory) == []


def test_a_given_directory_is_kept(tmp_path, temporary_directory):
    directory = tmp_path / 'kept'
    assert list(pmap(abs, [-1, -2], directory=directory)) == [1, 2]
    tasklist = runforrest.TaskList.open(directory)
    assert sorted((task.metadata, task.returnvalue) for task in tasklist.done_tasks()) == \
        [(0, 1), (1, 2)]
    assert os.listdir(temporary_directory) == []


# -- streaming: the input is taken lazily, a bounded look-ahead at a time

def counted(items, taken):
    """items, counting in taken[0] how many were taken."""
    for item in items:
        taken[0] += 1
        yield item


@pytest.mark.parametrize('threads', [False, True])
def test_items_are_taken_a_lookahead_ahead_of_the_results(threads):
    # One worker finishes the items in order: after k results, exactly k +
    # lookahead items have been taken.
    taken = [0]
    results = pmap(tasks.square, counted(range(100), taken), nprocesses=1, lookahead=3,
                   threads=threads)
    for k in range(1, 11):
        assert next(results) == (k - 1) ** 2
        assert taken[0] == k + 3
    results.close()
    assert taken[0] == 13


def test_an_endless_generator_yields_at_once():
    squares = pmap(tasks.square, itertools.count(), nprocesses=2)
    assert list(itertools.islice(squares, 30)) == [n * n for n in range(30)]


def test_a_pipeline_overlaps_loading_with_computing():
    # parmapper's chain map(post, pmap(expensive, map(pre, loader()))): items
    # are loaded while earlier ones are being computed and post-processed.
    events = []

    def loader():
        for n in range(40):
            events.append(f'load {n}')
            yield n

    def post(result):
        events.append(f'post {result}')
        return result

    results = list(map(post, pmap(tasks.square, map(abs, loader()), nprocesses=2)))
    assert results == [n * n for n in range(40)]
    # The look-ahead of 8 bounds what is loaded, also when results that came
    # early (10 and 11 before 9, say) move it on together.
    assert events.index('post 0') < events.index('load 19')
    assert events.index('post 81') < events.index('load 27')


def files_under(directory):
    return sum(len(files) for _, _, files in os.walk(directory))


def test_finished_tasks_files_go_as_results_are_yielded(temporary_directory):
    # The temporary list holds a few look-aheads of files (tasks to run,
    # results not yet handed out, todo files waiting for a sync), however
    # many results were yielded.
    squares = pmap(tasks.square, itertools.count(), nprocesses=2, lookahead=8)
    most = 0
    for n, result in enumerate(squares):
        assert result == n * n
        most = max(most, files_under(temporary_directory))
        if n == 600:
            break
    squares.close()
    assert 0 < most <= 100
    assert os.listdir(temporary_directory) == []


def test_a_given_directory_keeps_every_task_of_a_stream(tmp_path):
    directory = tmp_path / 'kept'
    squares = pmap(tasks.square, itertools.count(), nprocesses=2, directory=directory)
    assert list(itertools.islice(squares, 50)) == [n * n for n in range(50)]
    squares.close()
    done = runforrest.TaskList.open(directory).done_tasks()
    assert sorted(task.metadata for task in done)[:50] == list(range(50))


def test_len_of_the_items_is_the_progress_total(capsys):
    assert list(pmap(tasks.square, range(5), nprocesses=2, progress=True)) == \
        [0, 1, 4, 9, 16]
    assert '5/5' in capsys.readouterr().err


def test_progress_of_a_generator_counts_without_a_total(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tqdm.auto', None)  # the built-in view
    naps = pmap(tasks.nap, (0.3 for _ in range(6)), nprocesses=1, progress=True)
    assert list(naps) == [0.3] * 6
    lines = capsys.readouterr().err.splitlines()
    assert lines and all('/? done' in line for line in lines), lines


# -- temporary lists of maps whose process died

STREAM = '''
import itertools, sys
sys.path.insert(0, sys.argv[1])
from runforrest import pmap
import tasks
for result in pmap(tasks.square, itertools.count(), nprocesses=2):
    print(result, flush=True)
'''


def test_a_map_killed_by_sigterm_leaves_little_and_the_next_map_removes_it(
        temporary_directory):
    tests = os.path.dirname(os.path.abspath(__file__))
    stream = subprocess.Popen([sys.executable, '-c', STREAM, tests], stdout=subprocess.PIPE,
                              env={**os.environ, 'TMPDIR': str(temporary_directory)},
                              text=True, start_new_session=True)
    try:
        for n in range(100):
            assert stream.stdout.readline() == f'{n * n}\n'
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(timeout=30) == -signal.SIGTERM
    finally:
        stream.kill()
        stream.wait()
        stream.stdout.close()
    # Its template kills its tasks when it sees the map gone; until then, a
    # task may still write a result into the list.
    wait_for(lambda: not session_members(stream.pid), "the dead map's processes to end")
    [left] = os.listdir(temporary_directory)
    assert left.startswith('runforrest-pmap-')
    assert files_under(temporary_directory) <= 100
    assert list(pmap(abs, [-1])) == [1]
    assert os.listdir(temporary_directory) == []


def test_a_map_that_is_alive_keeps_its_list(temporary_directory):
    first = pmap(tasks.square, range(10), nprocesses=1)
    assert next(first) == 0
    [mine] = os.listdir(temporary_directory)
    assert list(pmap(abs, [-1])) == [1]
    assert os.listdir(temporary_directory) == [mine]
    assert list(first) == [n * n for n in range(1, 10)]
    assert os.listdir(temporary_directory) == []


# -- threads

def test_threads_run_in_this_process_and_processes_do_not():
    on_threads = list(pmap(tasks.where, range(4), nprocesses=2, threads=True))
    assert [value for value, _, _ in on_threads] == [0, 1, 2, 3]
    assert {pid for _, pid, _ in on_threads} == {os.getpid()}
    assert threading.get_ident() not in {thread for _, _, thread in on_threads}
    in_processes = list(pmap(tasks.where, range(4), nprocesses=2))
    assert os.getpid() not in {pid for _, pid, _ in in_processes}
    assert len({pid for _, pid, _ in in_processes}) == 4


def test_threads_keep_the_order_of_the_items(tmp_path):
    signal_file = tmp_path / 'last-done'
    items = [('first', {'wait': signal_file}), ('second', {}),
             ('last', {'create': signal_file})]
    assert list(pmap(tasks.step, items, nprocesses=3, kwstar=True, threads=True)) == \
        ['first', 'second', 'last']


def test_threads_take_what_cannot_be_pickled():
    # A generator cannot travel to a process, but a thread shares it.
    assert list(pmap(next, [(n for n in 'ab')], threads=True)) == ['a']
    with pytest.raises(runforrest.NotPicklable):
        list(pmap(next, [(n for n in 'ab')]))


def test_an_item_that_cannot_be_pickled_is_named():
    with pytest.raises(runforrest.NotPicklable) as raised:
        list(pmap(next, [iter('ab'), (n for n in 'ab')]))
    assert raised.value.__notes__ == ['(in pmap item 1)']
