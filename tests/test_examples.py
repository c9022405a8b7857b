"""Each example runs, as a user would run it, and says what it promises."""

import os
import subprocess
import sys

from conftest import ROOT


def run_example(name, tmp_path):
    """Run examples/name from the repository's root, with its temporary
    files in tmp_path, which it must leave empty."""
    done = subprocess.run([sys.executable, os.path.join('examples', name)], cwd=ROOT,
                          env={**os.environ, 'TMPDIR': str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path) == []
    return done.stdout


def test_quickstart(tmp_path):
    output = run_example('quickstart.py', tmp_path)
    assert 'item 2 -> thing-2: 4' in output
    assert 'item 5 -> thing-5: 25' in output
    assert 'item 3 failed: ValueError: thing-3 is unlucky' in output
    assert 'task list removed: True' in output


def test_resume(tmp_path):
    output = run_example('resume.py', tmp_path)
    assert 'first driver killed after 3 of 8 tasks' in output
    assert 'todo: 0 done: 8' in output
    assert 'every task finished exactly once: True' in output


def test_debug_failed_task(tmp_path):
    output = run_example('debug_failed_task.py', tmp_path)
    assert "failed: 00000003-count_words FileNotFoundError(2, 'No such file or directory')" in output
    assert 'its output: counting the words of three.txt' in output
    show = output.split('$ runforrest show', 1)[1]
    assert "call      count_words('" in show
    assert 'in count_words\n    with open(path) as file:' in show
    assert 'exit status: 1' in output
    assert '1 failed task moved back to todo/' in output
    assert '00000003-count_words done, with 4 words' in output
    assert 'failed tasks left: 0' in output


def test_map(tmp_path):
    output = run_example('map.py', tmp_path)
    for line in ('squares: [0, 1, 4, 9, 16]', 'shifted: [101, 102, 103]', 'star: [8, 9]',
                 'kwstar: [1024, 27]', 'extras: [2, 2, 4]',
                 "reciprocal: ZeroDivisionError('division by zero')",
                 "autokill: ['NoneType', 'TaskTimeout'] after ", 'endless: 64',
                 'failing item: 2', 'call: 6 8', 'background: True', 'cancelled: True',
                 'pmap_rows: True', 'threads: [1, 2, 3]'):
        assert line in output



def test_pipeline(tmp_path):
    output = run_example('pipeline.py', tmp_path)
    assert '00000002-dostuff: thing-0: 0' in output
    assert '00000007-prepare: ValueError: item 3 cannot be prepared yet' in output
    assert ('00000008-dostuff: DependencyFailed: not run, because its dependency '
            '00000007-prepare failed: ValueError') in output
    assert '00000011-summarize: DependencyFailed: not run' in output
    assert 'retried: 00000007-prepare, 00000008-dostuff, 00000011-summarize' in output
    assert output.count(' again: done') == 3
    assert 'summary: thing-0: 0; thing-1: 1; thing-2: 4; thing-3: 9; thing-4: 16' in output


def test_rerun(tmp_path):
    output = run_example('rerun.py', tmp_path)
    for line in ('first run: ran 6, reused 0', 'nothing changed: ran 0, reused 6',
                 'a new data file: ran 2, reused 6', 'the plotting code changed: ran 4, reused 4',
                 'a.txt touched: ran 0, reused 8', 'b.txt changed: ran 2, reused 6',
                 'input file data/b.txt changed', 'dependency 00000013-prepare ran again'):
        assert line in output
