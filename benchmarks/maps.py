"""Benchmarks of pmap on streams, side by side with multiprocessing.Pool.imap
and with parmapper's design (fork workers fed from a thread), reproduced here.

    python benchmarks/maps.py --quick    # a minute or two
    python benchmarks/maps.py            # the targets' sizes: 1,000,000 items take hours
    python benchmarks/maps.py --only flat --items 100000 --systems 'runforrest pmap'

Two workloads, each measured in a fresh process per system:
- stream: 200 naps of 50 ms from a generator on 2 workers: wall time over
  the ideal (200 * 50 ms / 2), and the time from the call to the first result.
- flat: many items of 1 kB from a generator, each returned as it is: the
  driver's resident memory and the disk its temporary files take, sampled
  ten times along the way.
"""

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[1:1] = [HERE, os.path.dirname(HERE)]  # this checkout's runforrest

import runforrest  # noqa: E402
import workloads  # noqa: E402

NPROCESSES = 2
NAPS, NAP_MS = 200, 50
ITEM_BYTES = 1000
TARGETS = {'stream wall / ideal': 1.10, 'stream first result (s)': 0.2}


# -- the systems: each maps fun over an iterator, yielding results in order

def runforrest_pmap(fun, items):
    return runforrest.pmap(fun, items, nprocesses=NPROCESSES)


def runforrest_run(fun, items):
    """The reference: a task list that schedules every item, then runs."""
    tasklist = runforrest.TaskList(tempfile.mkdtemp(prefix='runforrest-run-'), exist_ok=True)
    for item in items:
        tasklist.schedule(runforrest.defer(fun, item))
    for task in tasklist.run(nprocesses=NPROCESSES):
        yield task.returnvalue


def runforrest_threads(fun, items):
    return runforrest.pmap(fun, items, nprocesses=NPROCESSES, threads=True)


def pool_imap(fun, items):
    with multiprocessing.Pool(NPROCESSES) as pool:
        yield from pool.imap(fun, items)


def thread_pool_map(fun, items):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(NPROCESSES) as pool:
        yield from pool.map(fun, items)


def _parmapper_worker(fun, inbox, outbox):
    while (job := inbox.get()) is not None:
        index, item = job
        outbox.put((index, fun(item)))
    outbox.put(None)


def parmapper_like(fun, items):
    """parmapper's design, as its README describes it: a thread feeds every
    item, as fast as it can, into a queue that forked workers read; the
    results are put back in order."""
    context = multiprocessing.get_context('fork')
    inbox, outbox = context.Queue(), context.Queue()

    def feed():
        for job in enumerate(items):
            inbox.put(job)
        for _ in range(NPROCESSES):
            inbox.put(None)

    workers = [context.Process(target=_parmapper_worker, args=(fun, inbox, outbox))
               for _ in range(NPROCESSES)]
    for worker in workers:
        worker.start()
    threading.Thread(target=feed, daemon=True).start()
    ready, wanted, ended = {}, 0, 0
    while ended < NPROCESSES:
        message = outbox.get()
        if message is None:
            ended += 1
            continue
        ready[message[0]] = message[1]
        while wanted in ready:
            yield ready.pop(wanted)
            wanted += 1
    for worker in workers:
        worker.join()


SYSTEMS = {
    'runforrest pmap': runforrest_pmap,
    'runforrest TaskList.run, all scheduled first': runforrest_run,
    'multiprocessing.Pool.imap': pool_imap,
    "parmapper's design": parmapper_like,
    'runforrest pmap, threads': runforrest_threads,
    'ThreadPoolExecutor.map': thread_pool_map,
}
PROCESS_SYSTEMS = ['runforrest pmap', 'multiprocessing.Pool.imap', "parmapper's design"]


# -- measurements, each in a child process of its own

def resident_mib():
    with open('/proc/self/status') as file:
        return int(re.search(r'VmRSS:\s+(\d+) kB', file.read()).group(1)) / 1024


def disk_use(directory):
    files = size = 0
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                size += os.lstat(os.path.join(root, name)).st_blocks * 512
                files += 1
            except FileNotFoundError:
                pass  # removed while we looked
    return files, size / 2 ** 20


def measure_stream(system):
    started = time.perf_counter()
    first = None
    count = 0
    for result in SYSTEMS[system](workloads.nap, (NAP_MS for _ in range(NAPS))):
        assert result == NAP_MS
        if first is None:
            first = time.perf_counter() - started
        count += 1
    assert count == NAPS
    wall = time.perf_counter() - started
    return {'wall / ideal': wall / (NAPS * NAP_MS / 1000 / NPROCESSES), 'first result': first}


def measure_flat(system, items):
    samples = []
    every = max(1, items // 10)
    started = time.perf_counter()
    item = b'x' * ITEM_BYTES
    results = SYSTEMS[system](workloads.identity, (item for _ in range(items)))
    for n, result in enumerate(results, 1):
        assert result == item
        if n % every == 0:
            files, mib = disk_use(tempfile.gettempdir())
            samples.append({'items': n, 'rss': resident_mib(), 'files': files, 'disk': mib})
    return {'samples': samples, 'seconds': time.perf_counter() - started}


def child(case):
    """Run one measurement and print it as JSON: memory and disk are this
    process's own, and its temporary directory is a fresh one."""
    case = json.loads(case)
    if case['workload'] == 'stream':
        result = measure_stream(case['system'])
    else:
        result = measure_flat(case['system'], case['items'])
    print(json.dumps(result))


def run_child(workload, system, **fields):
    scratch = tempfile.mkdtemp(prefix='runforrest-maps-bench-')
    try:
        case = json.dumps({'workload': workload, 'system': system, **fields})
        done = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', case],
                              capture_output=True, text=True,
                              env={**os.environ, 'TMPDIR': scratch})
        if done.returncode != 0:
            return {'error': done.stderr.strip().splitlines()[-1] if done.stderr else '?'}
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- reports

def stream_report(repeat, systems):
    print(f'\n### {NAPS} naps of {NAP_MS} ms from a generator, {NPROCESSES} at a time '
          f'(median of {repeat})\n')
    print('| system | wall / ideal | first result |')
    print('| --- | --- | --- |')
    checks = []
    for system in systems:
        runs = [run_child('stream', system) for _ in range(repeat)]
        if any('error' in run for run in runs):
            print(f'| {system} | failed: {runs[0].get("error")} | |')
            continue
        wall = sorted(run['wall / ideal'] for run in runs)[len(runs) // 2]
        first = sorted(run['first result'] for run in runs)[len(runs) // 2]
        print(f'| {system} | {wall:.3f} | {first:.3f} s |')
        if system == 'runforrest pmap':
            checks = [('stream wall / ideal', wall), ('stream first result (s)', first)]
    return checks


def flat_report(items, systems):
    print(f'\n### {items:,} items of {ITEM_BYTES} bytes from a generator\n')
    print('| system | items/s | driver memory at 10% | at 100% | growth | most temporary '
          'files | most temporary disk |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for system in systems:
        result = run_child('flat', system, items=items)
        if 'error' in result:
            print(f'| {system} | failed: {result["error"]} | | | | | |')
            continue
        samples = result['samples']
        first, last = samples[0]['rss'], samples[-1]['rss']
        print(f'| {system} | {items / result["seconds"]:,.0f} | {first:.1f} MiB | '
              f'{last:.1f} MiB | {last / first:.2f}x | '
              f'{max(s["files"] for s in samples)} | {max(s["disk"] for s in samples):.2f} MiB |')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small sizes')
    parser.add_argument('--only', help='stream, flat, or both, comma-separated')
    parser.add_argument('--items', type=int, help='items of the flat workload')
    parser.add_argument('--repeat', type=int, help='runs of the stream workload per system')
    parser.add_argument('--systems', help='which systems, comma-separated (default: all)')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    workloads.compile_as_installed()
    only = set((args.only or 'stream,flat').split(','))
    chosen = args.systems.split(',') if args.systems else list(SYSTEMS)
    unknown = set(chosen) - set(SYSTEMS)
    if unknown:
        parser.error(f'unknown systems {", ".join(sorted(unknown))}; '
                     f'choose from: {", ".join(SYSTEMS)}')
    checks = []
    if 'stream' in only:
        checks += stream_report(args.repeat or (1 if args.quick else 3), chosen)
    if 'flat' in only:
        flat_report(args.items or (20_000 if args.quick else 1_000_000),
                    [system for system in chosen if system in PROCESS_SYSTEMS])
    if checks:
        print('\n| target | measured | limit | met |')
        print('| --- | --- | --- | --- |')
        for what, value in checks:
            limit = TARGETS[what]
            print(f'| {what} | {value:.3f} | {limit} | {"yes" if value <= limit else "NO"} |')


if __name__ == '__main__':
    main()
