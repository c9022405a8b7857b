"""Watching a run: progress views, each task's output, results as a table."""

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import pytest
from tqdm import tqdm

from runforrest import defer

import tasks
from conftest import TESTS

pytestmark = pytest.mark.timeout(60)

# A driver that runs three tasks, one of which fails, with progress=True;
# with `block_tqdm`, as if tqdm was not installed.
DRIVER = '''
import sys
if {block_tqdm}:
    sys.modules['tqdm'] = None  # `import tqdm` now raises ImportError
from runforrest import TaskList, defer
import tasks
tasklist = TaskList({directory!r})
for x in range(3):
    tasklist.schedule(defer(tasks.divide, 1, x))
for task in tasklist.run(nprocesses=2, progress=True):
    pass
'''


# A map whose calls print, with progress=True and without tqdm.
MAP_DRIVER = '''
import sys
sys.modules['tqdm'] = None
import runforrest, tasks
assert list(runforrest.pmap(tasks.print_lines, 'abc', nprocesses=2, args=(2,),
                            progress=True)) == ['a', 'b', 'c']
'''


def drive(tmp_path, block_tqdm, stderr=subprocess.PIPE, code=DRIVER, stdout=subprocess.PIPE):
    code = code.format(block_tqdm=block_tqdm, directory=str(tmp_path / 'tasklist'))
    return subprocess.Popen([sys.executable, '-c', code], cwd=TESTS,
                            stdout=stdout, stderr=stderr, text=True)


def test_progress_through_tqdm(tasklist, capsys):
    for x in range(3):
        tasklist.schedule(defer(tasks.divide, 1, x))
    assert len(list(tasklist.run(nprocesses=2, progress=True))) == 3
    shown = capsys.readouterr().err
    assert '3/3' in shown and 'task/s' in shown
    assert 'done 2, failed 1, running 0' in shown


def test_without_tqdm_and_terminal_a_line_at_a_time(tmp_path):
    driver = drive(tmp_path, block_tqdm=True)
    _, shown = driver.communicate(timeout=60)
    assert driver.returncode == 0, shown
    assert '\r' not in shown and '\x1b' not in shown
    last = shown.splitlines()[-1]
    assert last.startswith('3/3 done 2, failed 1, running 0, ')
    assert 'tasks/s, ETA ' in last


def read_terminal(tmp_path, block_tqdm, code=DRIVER, stdout=subprocess.PIPE):
    """Everything the driver showed on a terminal of its own (its stdout
    too, if stdout is None)."""
    main, terminal = pty.openpty()
    # A new pty is 0 columns wide, and tqdm would show nothing on it.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))
    driver = drive(tmp_path, block_tqdm, stderr=terminal, code=code,
                   stdout=terminal if stdout is None else stdout)
    os.close(terminal)
    shown = b''
    while True:
        try:
            data = os.read(main, 1 << 16)
        except OSError:  # EIO: the driver closed the terminal, by ending
            break
        if not data:
            break
        shown += data
    os.close(main)
    assert driver.wait(timeout=60) == 0
    return shown.decode()


def test_without_tqdm_on_a_terminal_a_bar(tmp_path):
    shown = read_terminal(tmp_path, block_tqdm=True)
    frames = [frame.replace('\x1b[K', '') for frame in shown.split('\r') if frame.strip()]
    assert any('running 2' in frame for frame in frames)  # while both run
    last = frames[-1].strip()
    assert last.startswith('[####################] 3/3 done 2, failed 1, running 0, ')
    assert 'tasks/s, ETA ' in last


def test_a_maps_bar_makes_way_for_what_its_calls_print(tmp_path):
    shown = read_terminal(tmp_path, block_tqdm=True, code=MAP_DRIVER, stdout=None)
    for tag in 'abc':
        for number in range(2):
            # On a line of its own: the bar was wiped before, and comes back after.
            assert f'\r\x1b[K{tag} {number}\r\n' in shown or \
                f'\n{tag} {number}\r\n' in shown, repr(shown)
    assert '3/3 done 3, failed 0' in shown.split('\r')[-2], repr(shown)


def test_tqdm_on_a_terminal(tmp_path):
    shown = read_terminal(tmp_path, block_tqdm=False)
    assert 'running 2]' in shown  # while both run
    assert '3/3' in shown and 'done 2, failed 1, running 0]' in shown


def test_tqdm_around_run_knows_the_length(tasklist):
    for x in range(4):
        tasklist.schedule(defer(tasks.square, x))
    run = tasklist.run(nprocesses=2)
    assert len(run) == 4
    bar = tqdm(run, file=io.StringIO())
    assert sorted(task.returnvalue for task in bar) == [0, 1, 4, 9]
    assert bar.total == bar.n == 4


def test_each_tasks_output_is_kept_apart(tasklist, tmp_path, capfd):
    # Both tasks print at the same time: each waits for the other halfway.
    lines = 2000
    first = tasklist.schedule(defer(tasks.print_lines, 'a', lines,
                                    create=tmp_path / 'a', wait=tmp_path / 'b'))
    second = tasklist.schedule(defer(tasks.print_lines, 'b', lines,
                                     create=tmp_path / 'b', wait=tmp_path / 'a'))
    finished = list(tasklist.run(nprocesses=2))
    assert sorted(task.returnvalue for task in finished) == ['a', 'b']

    for name, tag in ((first, 'a'), (second, 'b')):
        expected = ''.join(f'{tag} {number}\n' for number in range(lines))
        with open(os.path.join(tasklist.directory, 'output', name + '.log')) as file:
            assert file.read() == expected
        assert tasklist.output(name) == expected
    assert tasklist.output(finished[0]) == tasklist.output(finished[0].taskname)

    # The driver echoes each task's output in one piece, when it finishes.
    echoed = capfd.readouterr().out.splitlines()
    assert len(echoed) == 2 * lines
    assert [line.split()[0] for line in echoed] == \
        [echoed[0][0]] * lines + [echoed[-1][0]] * lines


def test_output_of_a_task_that_has_not_run_is_none(tasklist):
    name = tasklist.schedule(defer(tasks.square, 1))
    assert tasklist.output(name) is None


def test_rows_and_dataframe(tasklist):
    tasklist.schedule(defer(tasks.square, 3), metadata={'x': 3, 'kind': 'square'})
    tasklist.schedule(defer(tasks.fail, 'no'), metadata={'x': 0, 'kind': 'fail'})
    list(tasklist.run(nprocesses=2))

    rows = tasklist.rows()
    assert [(row['name'], row['state'], row['metadata'], row['returnvalue'])
            for row in rows] == [
        ('00000001-square', 'done', {'x': 3, 'kind': 'square'}, 9),
        ('00000002-fail', 'fail', {'x': 0, 'kind': 'fail'}, None)]
    assert rows[0]['errorvalue'] is None and isinstance(rows[1]['errorvalue'], ValueError)
    assert all(row['runtime'] > 0 for row in rows)

    frame = tasklist.dataframe()
    assert list(frame['x']) == [3, 0] and list(frame['kind']) == ['square', 'fail']
    assert {'name', 'state', 'returnvalue', 'errorvalue', 'runtime'} <= set(frame.columns)
    assert 'metadata' not in frame.columns
    assert list(frame['state']) == ['done', 'fail']


def test_progress_and_output_work_in_a_jupyter_kernel(tmp_path):
    """A real IPython kernel runs the cell, as in a notebook."""
    nbformat = pytest.importorskip('nbformat')
    nbclient = pytest.importorskip('nbclient')
    pytest.importorskip('ipykernel')
    cell = ('from runforrest import TaskList, defer\n'
            "tasklist = TaskList('list')\n"
            'for number in range(4):\n'
            "    tasklist.schedule(defer(print, 'task says', number))\n"
            'for task in tasklist.run(nprocesses=2, progress=True):\n'
            '    pass\n'
            "print('finished', len(list(tasklist.done_tasks())))\n")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name='python3',
                            resources={'metadata': {'path': str(tmp_path)}}).execute()
    outputs = notebook.cells[0].outputs
    assert not [output for output in outputs if output.output_type == 'error']
    text = ''.join(output.get('text', '') for output in outputs)
    data = ''.join(str(output.get('data', '')) for output in outputs)
    assert 'finished 4' in text
    assert all(f'task says {number}' in text for number in range(4))
    assert '4/4' in text + data  # the progress view reached the end


@pytest.mark.parametrize('start_method', ['forkserver', 'spawn'])
def test_output_grows_while_the_task_runs_and_stays_only_if_printed(tasklist, tmp_path,
                                                                    start_method):
    import threading
    quiet = tasklist.schedule(defer(tasks.square, 2))
    loud = tasklist.schedule(defer(tasks.print_lines, 'x', 2, create=tmp_path / 'halfway',
                                   wait=tmp_path / 'go'))
    finished = []
    driver = threading.Thread(target=lambda: finished.extend(
        tasklist.run(nprocesses=2, start_method=start_method)))
    driver.start()
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / 'halfway').exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tasklist.output(loud) == 'x 0\n'  # printed so far, while it waits
    finally:
        (tmp_path / 'go').touch()
        driver.join(60)
    assert sorted(task.returnvalue for task in finished if task.returnvalue != 'x') == [4]
    assert os.listdir(os.path.join(tasklist.directory, 'output')) == [f'{loud}.log']
    assert tasklist.output(loud) == 'x 0\nx 1\n'
    assert tasklist.output(quiet) == ''  # it ran, and printed nothing


def test_an_output_file_is_recycled_only_if_it_is_still_its_tasks(tmp_path):
    from runforrest import _OutputFiles
    outputs, log = _OutputFiles(), tmp_path / 'task.log'
    first = outputs.open(str(log))
    second = outputs.open(str(log))  # the next attempt, before the first one is gone
    outputs.release(first, str(log))  # silent, but no longer at that path
    os.write(second, b'from the next attempt\n')
    assert log.read_text() == 'from the next attempt\n'
    outputs.release(second, str(log))  # it printed: it stays
    outputs.close()
    assert os.listdir(tmp_path) == ['task.log']
