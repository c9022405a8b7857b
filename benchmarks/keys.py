"""How fast runforrest computes task keys, side by side with joblib.hash in the same run.

    python benchmarks/keys.py            # a 1 GB array, 100,000 tasks
    python benchmarks/keys.py --quick    # 256 MB, 20,000 tasks
    python benchmarks/keys.py --only rerun   # one of the measures below

Measures:
  - array: keying one big float64 array argument, cold (nothing cached), in
    GB/s: runforrest, joblib.hash, and for reference a single-threaded
    hashlib.sha256 over the same bytes (and xxhash's xxh3_128, if installed,
    for what an optional extra would give);
  - shared: the same array passed to many tasks: the cost per task, once it
    has been hashed, against joblib.hash of it per task;
  - rekey: keying the tasks of an unchanged 100,000-task script, defer(f, i)
    with f a function of the script that calls a helper and reads a module
    constant: the cost per task, against joblib.hash of (f, i);
  - rerun: running such a script again, in a fresh interpreter, on a task
    list opened with reuse=True: opening the list and scheduling every task,
    keying included, per task. Its 100,000 tasks wait in todo/ (running them
    first would take most of an hour); a smaller list, run to the end first,
    shows that a match in done/ costs the same and starts no process.
Needs numpy; joblib (pip install runforrest[bench]) for the comparisons.
Prints Markdown tables and the targets met. The machine may be shared: the
ratios of one run mean more than its absolute numbers.
"""

import argparse
import hashlib
import os
import sys
import time

# Measure the checkout's runforrest, installed or not.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy  # noqa: E402

import runforrest  # noqa: E402
from runforrest import Call, _task_key, _value_key, defer  # noqa: E402

try:
    import joblib
except ImportError:
    joblib = None
try:
    import xxhash
except ImportError:
    xxhash = None

CHECKS = []
SCALE = 3


def helper(x):
    return x * 2


def compute(x):
    return helper(x) + SCALE


def best_of(repeat, fun):
    """The shortest of repeat runs of fun(), in seconds (the least disturbed)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fun()
        times.append(time.perf_counter() - start)
    return min(times)


def check(what, value, target, higher_is_better):
    met = value >= target if higher_is_better else value <= target
    CHECKS.append((what, f'{value:.3g}', f'{">=" if higher_is_better else "<="} {target:g}',
                   'pass' if met else 'FAIL'))


def table(title, header, rows):
    print(f'\n### {title}\n')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + ' --- |' * len(header))
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')


def array_speed(nbytes, repeat):
    array = numpy.random.default_rng(0).random(nbytes // 8)
    gigabytes = array.nbytes / 1e9

    def runforrest_cold():
        runforrest._ARRAY_DIGESTS.clear()
        _value_key(array)

    contenders = {'runforrest (sha256 tree, threads)': runforrest_cold,
                  'hashlib.sha256, one thread': lambda: hashlib.sha256(memoryview(array)).digest()}
    if joblib is not None:
        contenders['joblib.hash (md5)'] = lambda: joblib.hash(array)
    if xxhash is not None:
        contenders['xxhash.xxh3_128, one thread'] = lambda: xxhash.xxh3_128(memoryview(array)).digest()
    speeds = {name: gigabytes / best_of(repeat, fun) for name, fun in contenders.items()}
    ours = speeds['runforrest (sha256 tree, threads)']
    table(f'Keying a {gigabytes:.2g} GB float64 array, cold (best of {repeat}, '
          f'{len(os.sched_getaffinity(0))} cores)', ['hasher', 'GB/s', 'runforrest / it'],
          [[name, f'{speed:.2f}', f'{ours / speed:.2f}'] for name, speed in speeds.items()])
    check('array: runforrest GB/s', ours, 1.5, True)
    if joblib is not None:
        check('array: runforrest / joblib.hash', ours / speeds['joblib.hash (md5)'], 1, True)
    return array


def shared_array(array, ntasks):
    tasks = [Call(compute, (array, number)) for number in range(ntasks)]
    _task_key(tasks[0])  # hashed once, here
    seconds = best_of(3, lambda: [_task_key(task) for task in tasks])
    per_task = seconds / ntasks * 1e6
    rows = [['runforrest', f'{per_task:.1f}', '1']]
    if joblib is not None:
        per_hash = best_of(1, lambda: joblib.hash((compute, array, 0))) * 1e6
        rows.append(['joblib.hash, per task', f'{per_hash:.0f}', f'{per_hash / per_task:.0f}'])
    table(f'{ntasks:,} tasks sharing that array: keying cost per task',
          ['', 'µs per task', 'times runforrest'], rows)
    check('shared: µs per task', per_task, 100, False)


def rekey(ntasks):
    def make():
        return [defer(compute, number) for number in range(ntasks)]

    tasks = make()
    defer_seconds = best_of(3, make)
    key_seconds = best_of(3, lambda: [_task_key(task) for task in tasks])
    first = [_task_key(task) for task in tasks]
    assert first == [_task_key(task) for task in make()]  # unchanged: the same keys
    rows = [['runforrest _task_key', f'{key_seconds / ntasks * 1e6:.1f}', '1'],
            ['runforrest defer (for scale)', f'{defer_seconds / ntasks * 1e6:.1f}', '']]
    if joblib is not None:
        sample = tasks[:max(ntasks // 10, 1)]
        joblib_seconds = best_of(3, lambda: [joblib.hash((compute, task._args)) for task in sample])
        joblib_seconds *= ntasks / len(sample)
        rows.append(['joblib.hash((f, args))', f'{joblib_seconds / ntasks * 1e6:.1f}',
                     f'{joblib_seconds / key_seconds:.1f}'])
    table(f'Keying the {ntasks:,} tasks of an unchanged script, defer(f, i)',
          ['', 'µs per task', 'times runforrest'], rows)
    # A quarter of the 0.1 ms per task that scheduling, keying included, may take.
    check('rekey: keying µs per task', key_seconds / ntasks * 1e6, 25, False)


RERUN_SCRIPT = '''
import resource, sys, time
from runforrest import TaskList, defer
SCALE = 3


def helper(x):
    return x * 2


def compute(x):
    return helper(x) + SCALE


directory, ntasks, run = sys.argv[1], int(sys.argv[2]), sys.argv[3] == 'run'
started = time.perf_counter()
tasklist = TaskList(directory, reuse=True)
for number in range(ntasks):
    tasklist.schedule(defer(compute, number))
tasklist.flush()
scheduling = time.perf_counter() - started
reused = [task.reused for task in tasklist.run(nprocesses=2)] if run else []
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(scheduling, sum(reused), children.ru_utime + children.ru_stime)
'''


def rerun(ntasks, nrun):
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory(prefix='runforrest-bench-keys-') as directory:
        script = os.path.join(directory, 'script.py')
        with open(script, 'w') as file:
            file.write(RERUN_SCRIPT)
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path[1:2])}

        def run(tasklist, count, mode):
            done = subprocess.run([sys.executable, script, os.path.join(directory, tasklist),
                                   str(count), mode], capture_output=True, text=True, env=env,
                                  check=True)
            seconds, reused, cpu = done.stdout.split()
            return float(seconds) / count * 1e3, int(reused), float(cpu)

        first, _, _ = run('waiting', ntasks, 'schedule')
        again, _, _ = run('waiting', ntasks, 'schedule')
        run('done', nrun, 'run')
        done_again, reused, cpu = run('done', nrun, 'run')
    table('Running an unchanged script again on a reuse list', ['', 'ms per task'],
          [[f'first run, {ntasks:,} tasks scheduled', f'{first:.3f}'],
           [f'again, {ntasks:,} tasks matched in todo/', f'{again:.3f}'],
           [f'again, {nrun:,} tasks matched in done/ ({reused} reused, '
            f'{cpu:.2f} s of CPU in child processes)', f'{done_again:.3f}']])
    check('rerun: scheduling ms per task', again, 0.1, False)
    check('rerun: child processes started (CPU seconds)', cpu, 0, False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smaller sizes')
    parser.add_argument('--only', choices=('array', 'shared', 'rekey', 'rerun'),
                        help='run one measure only')
    options = parser.parse_args()
    nbytes, ntasks, repeat = ((1 << 28, 20_000, 2) if options.quick else (1 << 30, 100_000, 3))
    print(f'## runforrest keys, Python {sys.version.split()[0]}, numpy {numpy.__version__}, '
          f'joblib {joblib.__version__ if joblib else "missing"}, '
          f'xxhash {xxhash.VERSION if xxhash else "missing"}')

    def wanted(measure):
        return options.only in (None, measure)

    if wanted('array') or wanted('shared'):
        array = array_speed(nbytes, repeat) if wanted('array') else \
            numpy.random.default_rng(0).random(nbytes // 8)
        if wanted('shared'):
            shared_array(array, min(ntasks, 10_000))
        del array
    if wanted('rekey'):
        rekey(ntasks)
    if wanted('rerun'):
        rerun(ntasks, 200 if options.quick else 2_000)
    table('Targets', ['measure', 'value', 'target', 'verdict'], CHECKS)
    return 0 if all(row[-1] == 'pass' for row in CHECKS) else 1


if __name__ == '__main__':
    sys.exit(main())
