"""Benchmarks of runforrest against the cost of a bare process, and against its peers.

    python benchmarks/bench.py --quick      # small sizes, a few minutes
    python benchmarks/bench.py              # the targets' sizes, about 15 minutes
    python benchmarks/bench.py --only cpu,scale --repeat 5 --scale-tasks 20000
Prints a Markdown table per workload and the targets met. Peers: pip install runforrest[bench].
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

# Measure the checkout's runforrest, installed or not.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workloads  # noqa: E402

try:
    import runforrest
    RUNFORREST_MISSING = None
except Exception as error:  # also a checkout broken mid-edit: measure the peers
    runforrest = None
    RUNFORREST_MISSING = f'runforrest does not import ({type(error).__name__}: {error})'
try:
    import joblib
    from joblib.externals.loky import get_reusable_executor
except ImportError:
    joblib = None

NPROCESSES = 2
SIZES = {  # tasks per workload: (full, --quick)
    'overhead': (200, 50),
    'sleep': (200, 40),
    'cpu': (40, 8),
    'bigresult': (20, 6),
    'schedule': (100_000, 10_000),
    'scale': (100_000, 2_000),
}
NAP_MS = 50
SPIN_SECONDS = 0.25
BLOB_BYTES = 50_000_000
CHECKS = []  # (workload, what, value, target, verdict) for the summary


# -- runners: each runs fun over args and returns an iterable of the results

def runforrest_runner(start_method, preload=()):
    def run(fun, args, directory):
        tasklist = runforrest.TaskList(directory)
        for arg in args:
            tasklist.schedule(runforrest.defer(fun, arg))
        # map(), unlike a for loop, holds no task while the next one comes.
        return map(returnvalue, tasklist.run(nprocesses=NPROCESSES, start_method=start_method,
                                             preload=preload))
    return run


def returnvalue(task):
    if task.errorvalue is not None:
        raise RuntimeError(f'task {task} failed: {task.errorvalue!r}')
    return task.returnvalue


def pool_runner(fun, args, directory):
    with multiprocessing.Pool(NPROCESSES) as pool:
        yield from pool.imap_unordered(fun, args)


def executor_runner(fun, args, directory):
    # map() lets go of each result once yielded, unlike a list of futures.
    with concurrent.futures.ProcessPoolExecutor(NPROCESSES) as executor:
        yield from executor.map(fun, args)


def joblib_runner(fun, args, directory):
    parallel = joblib.Parallel(n_jobs=NPROCESSES, return_as='generator_unordered')
    yield from parallel(joblib.delayed(fun)(arg) for arg in args)
    # loky keeps its workers for the next call; stop them, so that like the
    # other pools, every measurement pays for starting them.
    get_reusable_executor(max_workers=NPROCESSES).shutdown(wait=True)


def serial_runner(fun, args, directory):
    return map(fun, args)


# The floors: what starting a process costs at least, one at a time.

def interpreter_floor(n, directory):
    """Seconds for n bare interpreter starts."""
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, '-c', 'pass'], check=True)
    return time.perf_counter() - start


FORK_LOOP = """
import os, sys, time
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(time.perf_counter() - start)
"""


def fork_floor(n, directory):
    """Seconds for n bare forks and waits, by a bare interpreter: a fork
    costs more the more memory the forking process has, and this driver has
    imported a lot."""
    command = [sys.executable, '-c', FORK_LOOP, str(n)]
    return float(subprocess.run(command, check=True, capture_output=True).stdout)


FORK_TASK_LOOP = """
import os, sys, time
import runforrest, workloads
todo, result, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        runforrest.execute(todo, result, durable=False)
        os._exit(0)
    os.waitpid(pid, 0)
print(time.perf_counter() - start)
"""


def fork_task_floor(n, directory):
    """Seconds for n forks, one at a time, of a process that has imported
    runforrest and the task's module, each child running one task file and
    writing its result: what a task process must do, without a driver."""
    tasklist = runforrest.TaskList(directory)
    name = tasklist.schedule(runforrest.defer(workloads.identity, 0))
    tasklist.flush()
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([here, os.path.dirname(here)])}
    command = [sys.executable, '-c', FORK_TASK_LOOP, tasklist._path('todo', name),
               tasklist._path('collect', name), str(n)]
    return float(subprocess.run(command, check=True, capture_output=True, env=env).stdout)


FLOORS = {'bare interpreter': interpreter_floor, 'bare fork': fork_floor,
          'fork + task file': fork_task_floor}

RUNNERS = {  # name: (runner, how many tasks it runs at a time)
    'runforrest forkserver': (runforrest_runner('forkserver'), NPROCESSES),
    # The task functions' module imported once, in the template, not per task.
    'runforrest forkserver, preload': (runforrest_runner('forkserver', [workloads.__name__]),
                                       NPROCESSES),
    'runforrest spawn': (runforrest_runner('spawn'), NPROCESSES),
    'multiprocessing.Pool': (pool_runner, NPROCESSES),
    'ProcessPoolExecutor': (executor_runner, NPROCESSES),
    'joblib (loky)': (joblib_runner, NPROCESSES),
    'serial': (serial_runner, 1),
}


def missing(name):
    """Why a runner cannot run here, or None."""
    if (name.startswith('runforrest') or name == 'fork + task file') and runforrest is None:
        return RUNFORREST_MISSING
    if name.startswith('joblib') and joblib is None:
        return 'joblib is not installed (pip install runforrest[bench])'
    return None


# -- measuring

def reset_peak_memory():
    try:  # Linux: restart VmHWM, so that each measurement gets its own peak
        with open('/proc/self/clear_refs', 'w') as file:
            file.write('5')
    except OSError:
        pass  # then peaks count from the start of this script


def peak_memory():
    """The driver's peak resident memory (VmHWM) in MiB."""
    with open('/proc/self/status') as file:
        return int(re.search(r'VmHWM:\s+(\d+) kB', file.read()).group(1)) / 1024


def size(result):
    return len(result) if isinstance(result, bytes) else result


def measure(name, fun, args, directory):
    """Wall time and driver peak memory of one run, after checking every result."""
    reset_peak_memory()
    if name in FLOORS:
        return FLOORS[name](len(args), directory), peak_memory()
    start = time.perf_counter()
    count = total = 0
    # map(size) lets go of each result before the next one comes.
    for result_size in map(size, RUNNERS[name][0](fun, args, directory)):
        count += 1
        total += result_size
    wall = time.perf_counter() - start
    verify(count, total, args)
    return wall, peak_memory()


def discard(directory, options):
    """Move directory aside, to be removed when the benchmark ends: on ext4
    without a journal, creating a file costs up to a millisecond more in the
    minutes after many were removed (the kernel skips over recently freed
    inodes), which would charge one measurement for another's clean-up.
    A directory of a few files goes at once: a few inodes do not matter, and
    the space of large results does."""
    if sum(len(names) for _, _, names in os.walk(directory)) < 100:
        shutil.rmtree(directory, ignore_errors=True)
        return
    os.makedirs(options.discarded, exist_ok=True)
    os.rename(directory, os.path.join(options.discarded, str(len(os.listdir(options.discarded)))))


def verify(count, total, args):
    if (count, total) != (len(args), sum(args)):
        raise RuntimeError(f'wrong results: {count} summing to {total}, '
                           f'expected {len(args)} summing to {sum(args)}')


def compare(names, fun, args, options):
    """Median wall time and peak memory per runner, or why it has none.

    Runners take turns within each repetition, so that a slow spell of the
    machine hits all of them alike."""
    samples = {name: [] for name in names if not missing(name)}
    failures = {name: missing(name) for name in names if missing(name)}
    for repetition in range(options.repeat):
        for name in list(samples):
            directory = os.path.join(options.workdir, f'{fun.__name__}-{repetition}')
            try:
                samples[name].append(measure(name, fun, args, directory))
            except Exception as error:  # report it with the others' results
                failures[name] = f'{type(error).__name__}: {error}'
                del samples[name]
            finally:
                discard(directory, options)
                os.sync()  # so that the next one does not pay for this one's writing
    medians = {name: tuple(map(statistics.median, zip(*runs)))
               for name, runs in samples.items()}
    return medians, failures


def check(workload, what, value, target):
    """'pass' or 'FAIL' for value <= target, remembered for the summary."""
    verdict = 'pass' if value <= target else 'FAIL'
    CHECKS.append((workload, what, f'{value:.4g}', f'<= {target:.4g}', verdict))
    return verdict


def table(title, header, rows, failures=()):
    print(f'\n### {title}\n')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + ' --- |' * len(header))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')
    for name, why in dict(failures).items():
        print(f'\n- {name} skipped: {why}')


# -- workloads

def overhead(n, options):
    floors = ['bare interpreter', 'bare fork', 'fork + task file']
    runners = ['runforrest spawn', 'runforrest forkserver', 'runforrest forkserver, preload',
               'multiprocessing.Pool', 'ProcessPoolExecutor', 'joblib (loky)', 'serial']
    medians, failures = compare(floors + runners, workloads.identity, list(range(n)), options)
    # Per-task overhead is what one more task costs: the difference to a run
    # of half as many tasks, which leaves out what a run costs once (starting
    # a template or a pool). Scheduling stays in: it is paid per task.
    halves, half_failures = compare([name for name in runners if name in medians],
                                    workloads.identity, list(range(n // 2)), options)
    failures.update(half_failures)

    def per_task(name, wall, count):
        # Process time: a runner keeps as many processes busy as it runs
        # tasks at a time; the floors, one.
        return wall * (RUNNERS[name][1] if name in RUNNERS else 1) / count

    overall = {name: per_task(name, wall, n) for name, (wall, _) in medians.items()}
    marginal = {name: per_task(name, medians[name][0] - halves[name][0], n - n // 2)
                for name in halves}
    marginal.update((name, overall[name]) for name in floors if name in overall)
    # The targets' references, and for a fork per task, the floor of that
    # design: no runner that forks a process per task can do better.
    references = {'runforrest spawn': [('bare interpreter', 2)],
                  'runforrest forkserver': [('bare fork', 3), ('fork + task file', None)],
                  'runforrest forkserver, preload': [('bare fork', 3),
                                                     ('fork + task file', None)],
                  'fork + task file': [('bare fork', None)],
                  'multiprocessing.Pool': [('bare fork', None)],
                  'ProcessPoolExecutor': [('bare fork', None)],
                  'joblib (loky)': [('bare fork', None)]}
    rows = []
    for name in [name for name in floors + runners if name in marginal]:
        ratios, targets, verdict = [], '', ''
        for reference, target in references.get(name, []):
            if reference not in marginal:
                continue
            value = marginal[name] / marginal[reference]
            ratios.append(f'{value:.2f} x {reference}')
            if target:
                targets = f'<= {target:g} x {reference}'
                verdict = check('overhead', f'{name}: one more task / {reference}', value, target)
        rows.append([name, f'{medians[name][0]:.3f}', f'{overall[name] * 1000:.2f}',
                     f'{marginal[name] * 1000:.2f}', '; '.join(ratios), targets, verdict])
    table(f'overhead: {n} trivial tasks, {NPROCESSES} at a time (floors: one at a time); '
          f'per task = wall x tasks at a time / tasks; one more task = the same, for the '
          f'difference to {n // 2} tasks',
          ['runner', 'wall [s]', 'per task [ms]', 'one more task [ms]', 'ratio', 'target',
           'result'], rows, failures)


def sleep(n, options):
    names = ['runforrest forkserver', 'runforrest forkserver, preload', 'runforrest spawn',
             'multiprocessing.Pool', 'ProcessPoolExecutor', 'joblib (loky)']
    medians, failures = compare(names, workloads.nap, [NAP_MS] * n, options)
    ideal = n * NAP_MS / 1000 / NPROCESSES
    rows = []
    for name, (wall, _) in medians.items():
        target = 1.10 if name == 'runforrest forkserver' else None
        verdict = check('sleep', f'{name} / ideal', wall / ideal, target) if target else ''
        rows.append([name, f'{wall:.3f}', f'{wall / ideal:.3f}',
                     f'<= {target:g}' if target else '', verdict])
    table(f'sleep: {n} tasks of sleep({NAP_MS / 1000}), {NPROCESSES} at a time, '
          f'ideal {ideal:.2f} s',
          ['runner', 'wall [s]', 'wall / ideal', 'target', 'result'], rows, failures)


def calibrate(seconds):
    """Iterations of workloads.spin that take about `seconds` here."""
    iterations = 100_000
    while True:
        # The fastest of a few tries: other work on the machine only slows.
        took = min(timed(workloads.spin, iterations) for _ in range(3))
        if took > 0.1:
            return int(iterations * seconds / took)
        iterations *= 4


def timed(fun, *args):
    start = time.perf_counter()
    fun(*args)
    return time.perf_counter() - start


def versus_executor(workload, title, names, fun, args, options, target):
    """A table of wall times relative to ProcessPoolExecutor's, with peak memory."""
    medians, failures = compare(names, fun, args, options)
    reference = medians.get('ProcessPoolExecutor', (None,))[0]
    rows = []
    for name, (wall, peak) in medians.items():
        ratio = verdict = ''
        if reference:
            ratio = f'{wall / reference:.3f}'
            if name == 'runforrest forkserver':
                verdict = check(workload, f'{name} / ProcessPoolExecutor',
                                wall / reference, target)
        rows.append([name, f'{wall:.3f}', ratio, f'{peak:.0f}',
                     f'<= {target:g}' if name == 'runforrest forkserver' else '', verdict])
    table(title, ['runner', 'wall [s]', 'ratio vs ProcessPoolExecutor', 'driver peak [MiB]',
                  'target', 'result'], rows, failures)


def cpu(n, options):
    iterations = calibrate(SPIN_SECONDS)
    names = ['runforrest forkserver', 'runforrest forkserver, preload', 'runforrest spawn',
             'ProcessPoolExecutor', 'multiprocessing.Pool', 'joblib (loky)', 'serial']
    versus_executor('cpu', f'cpu: {n} pure-Python loops of {SPIN_SECONDS} s '
                    f'({iterations} iterations), {NPROCESSES} at a time',
                    names, workloads.spin, [iterations] * n, options, 1.05)


def bigresult(n, options):
    names = ['runforrest forkserver', 'runforrest forkserver, preload', 'runforrest spawn',
             'ProcessPoolExecutor', 'multiprocessing.Pool', 'joblib (loky)', 'serial']
    versus_executor('bigresult', f'bigresult: {n} tasks returning {BLOB_BYTES / 1e6:g} MB '
                    f'each, {NPROCESSES} at a time', names, workloads.blob,
                    [BLOB_BYTES] * n, options, 1.0)


def write_floor(directory, n):
    """Seconds to write n small files, about the size of a task file, in a
    new directory: file creation varies a lot from machine to machine."""
    os.makedirs(directory)
    start = time.perf_counter()
    for i in range(n):
        with open(os.path.join(directory, f'{i:08d}-identity.pkl'), 'wb') as file:
            file.write(bytes(500))
    return time.perf_counter() - start


def schedule(n, options):
    if runforrest is None:
        return print(f'\nschedule skipped: {RUNFORREST_MISSING}')
    directory = os.path.join(options.workdir, 'schedule')
    floor = 'floor: write a file'
    timings = {floor: [], 'schedule': [], 'flush (run() does it first)': [],
               'count: len(run())': []}
    for _ in range(options.repeat):
        os.sync()  # so that neither inherits the write-back of what came before
        timings[floor].append(write_floor(directory, n))
        discard(directory, options)
        os.sync()
        start = time.perf_counter()
        tasklist = runforrest.TaskList(directory)
        for i in range(n):
            tasklist.schedule(runforrest.defer(workloads.identity, i))
        timings['schedule'].append(time.perf_counter() - start)
        start = time.perf_counter()
        tasklist.flush()
        timings['flush (run() does it first)'].append(time.perf_counter() - start)
        start = time.perf_counter()
        count = len(tasklist.run(nprocesses=NPROCESSES))
        timings['count: len(run())'].append(time.perf_counter() - start)
        discard(directory, options)
        if count != n:
            raise RuntimeError(f'len(run()) is {count} after scheduling {n} tasks')
    medians = {step: statistics.median(runs) for step, runs in timings.items()}
    rows = []
    for step, wall in medians.items():
        per_task = wall / n * 1000
        target = 0.1 if step == 'schedule' else None
        verdict = check('schedule', 'ms per schedule()', per_task, target) if target else ''
        rows.append([step, f'{wall:.3f}', f'{per_task:.4f}', f'{wall / medians[floor]:.2f}',
                     f'<= {target:g}' if target else '', verdict])
    table(f'schedule: {n} trivial tasks, under {os.path.dirname(options.workdir)}',
          ['step', 'wall [s]', 'per task [ms]', 'ratio vs floor', 'target', 'result'], rows)


def scale(n, options):
    if runforrest is None:
        return print(f'\nscale skipped: {RUNFORREST_MISSING}')
    directory = os.path.join(options.workdir, 'scale')
    rows = []

    def phase(name, start, count):
        wall = time.perf_counter() - start
        rows.append([name, f'{wall:.1f}', f'{wall / count * 1000:.2f}', f'{peak_memory():.1f}'])

    reset_peak_memory()
    start = time.perf_counter()
    tasklist = runforrest.TaskList(directory)
    for i in range(n):
        tasklist.schedule(runforrest.defer(workloads.identity, i))
    phase('schedule', start, n)
    start = time.perf_counter()
    count = total = 0
    for task in tasklist.run(nprocesses=NPROCESSES):
        count += 1
        total += returnvalue(task)
        if count == max(1, n // 10):
            early = peak_memory()
            phase(f'run, first {count}', start, count)
    peak = peak_memory()
    phase(f'run, all {count}', start, count)
    discard(directory, options)
    verify(count, total, range(n))
    check('scale', 'driver peak [MiB]', peak, 100)
    check('scale', 'growth of the peak after 10% of the run [MiB]', peak - early,
          max(1, early / 10))
    table(f'scale: {n} trivial tasks with runforrest forkserver, {NPROCESSES} at a time, '
          f'one run', ['phase', 'wall [s]', 'per task [ms]', 'driver peak [MiB]'], rows)


WORKLOADS = {'overhead': overhead, 'sleep': sleep, 'cpu': cpu, 'bigresult': bigresult,
             'schedule': schedule, 'scale': scale}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small sizes')
    parser.add_argument('--repeat', type=int, default=3, help='measurements per runner (median)')
    parser.add_argument('--only', default=','.join(WORKLOADS),
                        help=f'comma-separated workloads, of: {",".join(WORKLOADS)}')
    parser.add_argument('--workdir', default='.',
                        help='where a temporary directory for the task lists goes '
                             '(about 3 GB at full sizes); not /tmp, if file creation is '
                             'slow there')
    parser.add_argument('--scale-tasks', type=int, help='tasks of the scale workload')
    options = parser.parse_args()
    workloads.compile_as_installed()
    chosen = options.only.split(',')
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        parser.error(f'unknown workloads: {", ".join(sorted(unknown))}')

    print(f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, '
          f'runforrest {getattr(runforrest, "__version__", "missing")}, '
          f'joblib {getattr(joblib, "__version__", "missing")}, '
          f'peers start with {multiprocessing.get_start_method()}, '
          f'{"quick" if options.quick else "full"} sizes, median of {options.repeat}, '
          f'load average {os.getloadavg()[0]:.1f} (other work skews the results)')
    options.workdir = tempfile.mkdtemp(prefix='runforrest-bench-',
                                       dir=os.path.abspath(options.workdir))
    options.discarded = os.path.join(options.workdir, 'discarded')
    # Spawned task processes load runforrest from cached bytecode, as from an
    # installed copy, even where PYTHONDONTWRITEBYTECODE is set (compiling it
    # anew costs more than starting the interpreter); the cache goes away too.
    os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
    os.environ['PYTHONPYCACHEPREFIX'] = os.path.join(options.workdir, 'pycache')
    try:
        for name in chosen:
            n = SIZES[name][options.quick]
            if name == 'scale' and options.scale_tasks:
                n = options.scale_tasks
            started = time.perf_counter()
            try:
                WORKLOADS[name](n, options)
            except Exception:  # a broken workload should not hide the others
                traceback.print_exc()
                CHECKS.append((name, 'completes', 'raised', 'no error', 'FAIL'))
            print(f'\n({name} took {time.perf_counter() - started:.0f} s; '
                  f'load average now {os.getloadavg()[0]:.1f})')
    finally:
        shutil.rmtree(options.workdir, ignore_errors=True)
    table('targets', ['workload', 'measure', 'value', 'target', 'result'], CHECKS)


if __name__ == '__main__':
    main()
