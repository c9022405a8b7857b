"""Running a task list on a real single-node SLURM cluster.

The cluster is started for the test run by ci/slurm-up.sh (root and apt
needed; otherwise these tests are skipped, saying why) and stopped again
by ci/slurm-down.sh if this run started it."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from runforrest import (DependencyFailed, Slurm, TaskList, TaskLost, TaskOutOfMemory,
                        TaskTimeout, defer)

import tasks_core

CI_DIR = os.path.join(os.path.dirname(__file__), os.pardir, 'ci')


def cluster_is_up():
    if not shutil.which('scontrol'):
        return False
    ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True)
    return 'is UP' in ping.stdout


@pytest.fixture(scope='module')
def slurm():
    started = False
    if not cluster_is_up():
        if os.geteuid() != 0:
            pytest.skip('starting a SLURM test cluster needs root')
        if not shutil.which('apt-get') and not shutil.which('slurmctld'):
            pytest.skip('SLURM is not installed, and there is no apt-get to install it')
        up = subprocess.run(['bash', os.path.join(CI_DIR, 'slurm-up.sh')],
                            capture_output=True, text=True, timeout=900)
        if up.returncode != 0:
            message = f'the SLURM test cluster did not start:\n{up.stdout}\n{up.stderr}'
            if os.environ.get('CI'):
                pytest.fail(message)
            pytest.skip(message)
        started = True
    yield Slurm(poll_interval=0.3)
    if started:
        subprocess.run(['bash', os.path.join(CI_DIR, 'slurm-down.sh')],
                       capture_output=True, timeout=300)


def queue():
    return subprocess.run(['squeue', '-h', '-o', '%i %T'], capture_output=True,
                          text=True).stdout.split('\n')


def wait_for(condition, what, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.1)


def test_a_list_runs_as_a_job_array_with_the_same_results(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    for item in range(5):
        task = defer(tasks_core.prepare, item)
        tasklist.schedule(defer(tasks_core.dostuff, task[1], task['thing']), metadata=item)
    tasklist.schedule(defer(tasks_core.fail, 'in a job'), metadata='bad')
    tasklist.schedule(defer(print, 'printed in a job'), metadata='loud')
    results = {task.metadata: task for task in tasklist.run(nprocesses=2, executor=slurm)}
    assert {item: results[item].returnvalue for item in range(5)} == {
        item: item + 1 + item * 10 for item in range(5)}
    assert str(results['bad'].errorvalue) == 'in a job' and 'in fail' in results['bad'].traceback
    assert 'printed in a job' in tasklist.output(results['loud'])
    assert len(tasklist._names('done')) == 6 and len(tasklist._names('fail')) == 1
    assert tasklist._names('todo') == [] and tasklist._names('running') == []


def test_autokill_and_crashes_are_enforced_inside_the_job(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks_core.sleep_forever))
    tasklist.schedule(defer(os.abort))
    tasklist.schedule(defer(tasks_core.hold_memory, 400))
    started = time.monotonic()
    results = {task.taskname: task for task in tasklist.run(
        nprocesses=2, autokill=20, memory_limit='150M', executor=slurm)}
    assert time.monotonic() - started < 90  # SLURM's own --time would take minutes
    assert isinstance(results['00000001-sleep_forever'].errorvalue, TaskTimeout)
    assert results['00000002-abort'].errorvalue.signal == 'SIGABRT'
    assert isinstance(results['00000003-hold_memory'].errorvalue, TaskOutOfMemory)


def test_a_job_that_dies_without_a_result_is_recorded_with_slurms_state(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    pidfile = tmp_path / 'pids'
    tasklist.schedule(defer(tasks_core.record_pid_and_sleep, str(pidfile)))
    tasklist.schedule(defer(tasks_core.identity, 'fine'))
    for task in tasklist.run(nprocesses=2, executor=slurm):
        if task.returnvalue == 'fine':
            wait_for(pidfile.exists, 'the sleeping task to start')
            mark = tmp_path / 'list' / '.runforrest' / 'running' / '00000001-record_pid_and_sleep'
            element = mark.read_text().split()[1]
            subprocess.run(['scancel', element], check=True)
        else:
            lost = task.errorvalue
    assert isinstance(lost, TaskLost) and lost.state == 'CANCELLED', lost
    assert 'CANCELLED' in str(lost)


def test_a_job_that_slurm_kills_for_its_memory_says_so(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks_core.hold_memory, 600))
    frugal = Slurm(mem='150M', poll_interval=0.3)
    [task] = tasklist.run(nprocesses=1, executor=frugal)
    assert isinstance(task.errorvalue, TaskLost), repr(task.errorvalue)
    # SLURM says it one of two ways, by whichever of its watchers acts first:
    # 'Exceeded job memory limit' or 'StepId=N.batch exceeded memory limit (A > B)'.
    message = str(task.errorvalue).lower()
    assert 'exceeded' in message and 'memory limit' in message, task.errorvalue


DRIVER = textwrap.dedent('''
    import sys, tasks_core
    from runforrest import Slurm, TaskList, defer
    tasklist = TaskList(sys.argv[1], noschedule_if_exist=True)
    for item in range(4):
        tasklist.schedule(defer(tasks_core.count_and_sleep, sys.argv[2], item, 3))
    for task in tasklist.run(nprocesses=4, executor=Slurm(poll_interval=0.3)):
        print(task.taskname, task.returnvalue, flush=True)
''')


def start_driver(tmp_path):
    script = tmp_path / 'driver.py'
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(tasks_core.__file__))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / 'list'),
                             str(tmp_path / 'counts')], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_marks(tmp_path):
    directory = tmp_path / 'list' / '.runforrest' / 'running'
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_ctrl_c_cancels_the_submitted_jobs(tmp_path, slurm):
    driver = start_driver(tmp_path)
    wait_for(lambda: len(running_marks(tmp_path)) == 4, 'the jobs to be submitted')
    job = (tmp_path / 'list' / '.runforrest' / 'running' / running_marks(tmp_path)[0]).read_text().split()[1]
    driver.send_signal(signal.SIGINT)
    driver.wait(timeout=60)
    job_id = job.partition('_')[0]
    wait_for(lambda: not any(line.startswith(job_id) and ('RUNNING' in line or 'PENDING' in line)
                             for line in queue()), 'the jobs to be cancelled')
    assert len(os.listdir(tmp_path / 'list' / 'todo')) == 4
    assert os.listdir(tmp_path / 'list' / 'done') == []


def test_a_restarted_driver_picks_up_without_submitting_twice(tmp_path, slurm):
    driver = start_driver(tmp_path)
    wait_for(lambda: len(running_marks(tmp_path)) == 4, 'the jobs to be submitted')
    driver.kill()
    driver.wait()
    restarted = start_driver(tmp_path)
    out, err = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, err
    assert sorted(line.split()[1] for line in out.split('\n') if line) == ['0', '1', '2', '3']
    assert len(os.listdir(tmp_path / 'list' / 'done')) == 4
    counts = (tmp_path / 'counts').read_text().split()
    assert sorted(counts) == ['0', '1', '2', '3'], 'a task ran twice'


def test_a_pipeline_runs_on_slurm_with_the_same_semantics(tmp_path, slurm):
    import tasks_pipeline
    tasklist = TaskList(tmp_path / 'list')
    summary, blocked = tasks_pipeline.schedule_pipeline(tasklist, range(4), bad_item=2)
    results = {task.taskname: task for task in tasklist.run(nprocesses=2, executor=slurm)}
    assert results[summary].returnvalue == sum(item + 1 + item * 10 for item in (0, 1, 3))
    assert isinstance(results[blocked].errorvalue, DependencyFailed)
    assert len(results) == 9


def test_more_tasks_than_an_array_holds_keep_nprocesses_running(tmp_path, slurm):
    # Two tasks that each wait for the other: they finish only if the second
    # array starts while the first still runs.
    import tasks_pipeline
    small = Slurm(poll_interval=0.3)
    small.max_array_size = 1
    tasklist = TaskList(tmp_path / 'list')
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    tasklist.schedule(defer(tasks_pipeline.meet, one, two))
    tasklist.schedule(defer(tasks_pipeline.meet, two, one))
    results = [task.returnvalue for task in tasklist.run(nprocesses=2, executor=small)]
    assert sorted(results) == ['one', 'two']
