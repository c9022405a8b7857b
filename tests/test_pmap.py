"""pmap: a parallel map, each call in a process of its own."""

import os
import tempfile

import pytest

import runforrest
from runforrest import pmap

import tasks

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def temporary_directory(tmp_path, monkeypatch):
    """Send pmap's temporary task lists to a directory of our own, to see
    whether they are removed afterwards."""
    directory = tmp_path / 'tmp'
    directory.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(directory))
    return directory


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
    (False, True, (1, {'j': 2}), ((1, 'extra'), {'k': 'fixed', 'j': 2})),
    (True, True, ((1, 2), {'j': 3}), ((1, 2, 'extra'), {'k': 'fixed', 'j': 3})),
])
def test_how_items_become_arguments(star, kwstar, item, called_with):
    # As in the table of pmap's docstring, with args and kwargs as extras.
    assert list(pmap(tasks.arguments, [item], star=star, kwstar=kwstar,
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


def test_return_yields_errors_in_place():
    results = list(pmap(tasks.divide, [(1, 1), (1, 0), (4, 2)], star=True,
                        errors='return'))
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ZeroDivisionError)


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
        list(pmap(abs, [1], errors='ignore'))


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
