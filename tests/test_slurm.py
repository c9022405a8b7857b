"""Running a task list on a real single-node SLURM cluster.

The cluster is started for the test run by ci/slurm-up.sh (root and apt
needed; otherwise these tests are skipped, saying why, and under CI=true
fail) and stopped again by ci/slurm-down.sh if this run started it.
Bringing it up (installing SLURM with apt, the first time) has a budget of
its own, SLURM_UP_BUDGET seconds; the per-test timeout counts only the tests."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from runforrest import Slurm, TaskList, TaskLost, TaskOutOfMemory, TaskTimeout, defer

import tasks
from conftest import ROOT, environment, names, running_mark, running_marks, wait_for

CI_DIR = os.path.join(ROOT, 'ci')
SLURM_UP_BUDGET = 900  # seconds: apt may have to download SLURM first

# The timeout covers each test function, not the cluster's bring-up (a fixture).
pytestmark = pytest.mark.timeout(300, func_only=True)


def cluster_is_up():
    if not shutil.which('scontrol'):
        return False
    ping = subprocess.run(['scontrol', 'ping'], capture_output=True, text=True)
    return 'is UP' in ping.stdout


def jobs_of_others(basetemp):
    """Jobs in the queue that this test run did not submit: the cluster is
    the machine's, and another test run may be using it too."""
    listed = subprocess.run(['squeue', '-h', '-o', '%A %Z'], capture_output=True,
                            text=True).stdout.splitlines()
    return [line for line in listed if not line.split()[1].startswith(str(basetemp))]


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    started = False
    if not cluster_is_up():
        if os.geteuid() != 0:
            pytest.skip('starting a SLURM test cluster needs root')
        if not shutil.which('apt-get') and not shutil.which('slurmctld'):
            pytest.skip('SLURM is not installed, and there is no apt-get to install it')
        up = subprocess.run(['bash', os.path.join(CI_DIR, 'slurm-up.sh')],
                            capture_output=True, text=True, timeout=SLURM_UP_BUDGET)
        if up.returncode != 0:
            pytest.skip(f'the SLURM test cluster did not start:\n{up.stdout}\n{up.stderr}')
        started = True
    yield Slurm(poll_interval=0.3)
    # slurm-down.sh cancels every job: not while others have some.
    if started and not jobs_of_others(tmp_path_factory.getbasetemp()):
        subprocess.run(['bash', os.path.join(CI_DIR, 'slurm-down.sh')],
                       capture_output=True, timeout=300)


def job_states(job_id):
    """{array element: state} of a job, finished elements too (SLURM lists
    them for MinJobAge, 300 s, after they end)."""
    listed = subprocess.run(['squeue', '-h', '-t', 'all', '-r', '-j', job_id, '-o', '%i %T'],
                            capture_output=True, text=True).stdout.split()
    return dict(zip(listed[::2], listed[1::2]))


def test_a_list_runs_as_a_job_array_with_the_same_results(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    for item in range(5):
        task = defer(tasks.prepare, item)
        tasklist.schedule(defer(tasks.dostuff, task[1], task['thing']), metadata=item)
    tasklist.schedule(defer(tasks.fail, 'in a job'), metadata='bad')
    tasklist.schedule(defer(print, 'printed in a job'), metadata='loud')
    results = {task.metadata: task for task in tasklist.run(nprocesses=2, executor=slurm)}
    assert {item: results[item].returnvalue for item in range(5)} == {
        item: item + 1 + item * 10 for item in range(5)}
    assert str(results['bad'].errorvalue) == 'in a job' and 'in fail' in results['bad'].traceback
    assert 'printed in a job' in tasklist.output(results['loud'])
    assert len(names(tasklist.directory, 'done')) == 6
    assert len(names(tasklist.directory, 'fail')) == 1
    assert names(tasklist.directory, 'todo') == [] and running_marks(tasklist.directory) == []


def test_autokill_and_crashes_are_enforced_inside_the_job(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks.hang))
    tasklist.schedule(defer(os.abort))
    tasklist.schedule(defer(tasks.hold_memory, 400))
    started = time.monotonic()
    results = {task.taskname: task for task in tasklist.run(
        nprocesses=2, autokill=20, memory_limit='150M', executor=slurm)}
    assert time.monotonic() - started < 90  # SLURM's own --time would take minutes
    assert isinstance(results['00000001-hang'].errorvalue, TaskTimeout)
    assert results['00000002-abort'].errorvalue.signal == 'SIGABRT'
    assert isinstance(results['00000003-hold_memory'].errorvalue, TaskOutOfMemory)


def test_a_job_that_dies_without_a_result_is_recorded_with_slurms_state(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    pidfile = tmp_path / 'pids'
    tasklist.schedule(defer(tasks.record_pid_and_sleep, str(pidfile)))
    tasklist.schedule(defer(tasks.identity, 'fine'))
    for task in tasklist.run(nprocesses=2, executor=slurm):
        if task.returnvalue == 'fine':
            wait_for(pidfile.exists, 'the sleeping task to start', timeout=60)
            element = running_mark(tasklist.directory, '00000001-record_pid_and_sleep').split()[1]
            subprocess.run(['scancel', element], check=True)
        else:
            lost = task.errorvalue
    assert isinstance(lost, TaskLost) and lost.state == 'CANCELLED', lost
    assert 'CANCELLED' in str(lost)


def test_a_job_that_slurm_kills_for_its_memory_says_so(tmp_path, slurm):
    tasklist = TaskList(tmp_path / 'list')
    tasklist.schedule(defer(tasks.hold_memory, 600))
    frugal = Slurm(mem='150M', poll_interval=0.3)
    [task] = tasklist.run(nprocesses=1, executor=frugal)
    assert isinstance(task.errorvalue, TaskLost), repr(task.errorvalue)
    # SLURM says it one of two ways, by whichever of its watchers acts first:
    # 'Exceeded job memory limit' or 'StepId=N.batch exceeded memory limit (A > B)'.
    message = str(task.errorvalue).lower()
    assert 'exceeded' in message and 'memory limit' in message, task.errorvalue


DRIVER = textwrap.dedent('''
    import sys, tasks
    from runforrest import Slurm, TaskList, defer
    tasklist = TaskList(sys.argv[1], noschedule_if_exist=True)
    for item in range(4):
        tasklist.schedule(defer(tasks.count_and_sleep, sys.argv[2], item, float(sys.argv[3])))
    for task in tasklist.run(nprocesses=4, executor=Slurm(poll_interval=0.3)):
        print(task.taskname, task.returnvalue, flush=True)
''')


def start_driver(tmp_path, seconds):
    """A driver in a subprocess that runs four tasks that sleep this long."""
    script = tmp_path / 'driver.py'
    script.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / 'list'),
                             str(tmp_path / 'counts'), str(seconds)], env=environment(),
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def submitted_jobs(directory):
    """The SLURM jobs of the tasks that a driver has in flight."""
    return {running_mark(directory, name).split()[1].partition('_')[0]
            for name in running_marks(directory)}


def stop(driver, jobs):
    """After a test: no driver, and none of these jobs, left behind."""
    driver.kill()
    driver.wait()
    if jobs:
        subprocess.run(['scancel', *jobs])


def test_ctrl_c_cancels_the_submitted_jobs(tmp_path, slurm):
    # The jobs would run for 1000 s: only a cancellation ends them. (Two
    # CPUs: some of them may still wait for their turn.)
    driver = start_driver(tmp_path, 1000)
    directory = tmp_path / 'list'
    jobs = set()
    try:
        wait_for(lambda: len(running_marks(directory)) == 4, 'the jobs to be submitted',
                 timeout=60)
        jobs = submitted_jobs(directory)
        [job_id] = jobs
        wait_for(lambda: 'RUNNING' in job_states(job_id).values(), 'a job to run', timeout=60)
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=60)
        wait_for(lambda: sorted(job_states(job_id).values()) == ['CANCELLED'] * 4,
                 f'SLURM to show the four jobs cancelled (it shows {job_states(job_id)})',
                 timeout=60)
    finally:
        stop(driver, jobs)
    assert len(names(directory, 'todo')) == 4
    assert names(directory, 'done') == names(directory, 'fail') == []
    assert names(directory, 'collect') == []


def test_a_restarted_driver_picks_up_without_submitting_twice(tmp_path, slurm):
    driver = start_driver(tmp_path, 3)
    jobs = set()
    try:
        wait_for(lambda: len(running_marks(tmp_path / 'list')) == 4, 'the jobs to be submitted',
                 timeout=60)
        jobs = submitted_jobs(tmp_path / 'list')
    finally:
        stop(driver, set())  # its jobs go on, for the next driver to pick up
    restarted = start_driver(tmp_path, 3)
    try:
        out, err = restarted.communicate(timeout=120)
    finally:
        stop(restarted, jobs)
    assert restarted.returncode == 0, err
    assert sorted(line.split()[1] for line in out.split('\n') if line) == ['0', '1', '2', '3']
    assert len(names(tmp_path / 'list', 'done')) == 4
    counts = (tmp_path / 'counts').read_text().split()
    assert sorted(counts) == ['0', '1', '2', '3'], 'a task ran twice'


def test_a_pipeline_runs_on_slurm_with_the_same_semantics(tmp_path, slurm):
    import tasks_pipeline
    tasks_pipeline.check_pipeline(TaskList(tmp_path / 'list'), bad_item=2, executor=slurm)


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
