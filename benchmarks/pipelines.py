"""Pipelines side by side: runforrest's task graphs, natcap's TaskGraph and dask.delayed.

    python benchmarks/pipelines.py --quick      # small sizes, about 3 minutes
    python benchmarks/pipelines.py              # the targets' sizes, about 17 minutes,
                                                # 5 of them waiting on peers that hang
    python benchmarks/pipelines.py --only faults --timeout 120

Each system runs the same graphs of stages (workloads.stage: sleep, then
return 1 + the sum of its inputs, so that the results check that every
stage got its inputs' results), two at a time:

- runforrest: each stage scheduled on a TaskList, its dependencies passed
  as the scheduled tasks themselves; forkserver, the default.
- TaskGraph: add_task(n_workers=2), each stage's result in a file that
  its dependents read, TaskGraph's way of passing data.
- dask processes: dask.delayed, compute(scheduler='processes'), a pool of
  spawned worker processes: dask's local scheduler for GIL-bound Python.
- dask distributed: dask.delayed on a LocalCluster of 2 single-threaded
  worker processes under nannies: the scheduler that Dask recommends
  even on one machine, and its only one that restarts dead workers and
  has a memory limit. The cluster's start is not timed.

Workloads, each a table:

- fan-in: n trivial stages and one that takes all their results, versus
  n + 1 independent stages. Per dependency edge: the difference of the
  two runs' driver CPU time (user + system, all of the driver's threads,
  none of its children), and of their wall time, divided by n; wall time
  varies by seconds on a busy machine, CPU time much less. As that
  difference of two runs of ten thousand task processes drowns what the
  edges cost, runforrest's is also measured directly: the sink alone,
  scheduled on a list whose n stages are done, run and read back, versus
  a sink of none of them. The driver's peak memory (VmHWM) at two sizes,
  and its growth per stage; n + 1 independent stages at both sizes grow as
  well, with what the script itself holds per stage (the task objects it
  builds, and keeps) and what the driver holds per task: the fan-in's
  growth beyond theirs is what its dependency edges cost. runforrest's
  resident memory during the run, from its first result to its last,
  says whether the driver stays flat while results pass through it.
- dense: n stages, and n that each take all their results, versus 2 n
  independent ones: n * n edges, per edge as for the fan-in, but among
  few stages, so that the edges' cost stands out of the noise.
- chain: n trivial stages, each taking the previous one's result, versus
  n independent ones, both one at a time (a chain cannot run two at a
  time): their ratio is what a dependency costs per task.
- diamond: one source, n - 2 stages of 50 ms that take its result, one
  sink of 50 ms that takes theirs, versus the ideal wall time of that
  graph on two processes; and its floor, n independent stages of 50 ms
  versus their ideal wall time: what the tasks cost without the edges.
- faults: a small pipeline whose one stage segfaults, hangs, or grows
  beyond a memory limit; what each system does about it.

Every run of every system is a fresh interpreter in a session of its own,
so that each driver's peak memory is its own, and a run that hangs is
killed, with every process it started, after a hard timeout: a peer that
waits forever for a dead worker costs the timeout, never the benchmark.
Prints a Markdown table per workload and the targets met. Peers:
pip install runforrest[bench].
"""

import argparse
import collections
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import workloads

# Measure the checkout's runforrest, installed or not (bench.py does the same).
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, REPOSITORY)

SIZES = {  # (full, --quick)
    'fan-in': ((2_500, 10_000), (250, 1_000)),  # two sizes, to see memory grow or not
    'dense': (100, 50),  # sources and sinks: their square is the number of edges
    'chain': (1_000, 200),
    'diamond': (200, 40),
}
NPROCESSES = 2
NAP_MS = 50
STAGE_MS = 100  # the healthy stages of the faulty pipeline
MEMORY_LIMIT = 400 << 20
HOG_BYTES = 1536 << 20  # what the faulty stage would use without a limit
AUTOKILL = 5  # seconds, for runforrest's hanging stage
TIMEOUT = (60, 10)  # seconds that a faulty graph may take before it counts as hung
STARTUP_TIMEOUT = 120  # seconds for a run's imports, and a cluster, to start
SYSTEMS = ['runforrest', 'TaskGraph', 'dask processes', 'dask distributed']


# -- the graphs, the same for every system: each node is a stage function,
# its parameter and the indices of the earlier nodes whose results it takes

Node = collections.namedtuple('Node', 'fun parameter inputs')


def independent(n):
    return [Node(workloads.stage, 0, ()) for _ in range(n)]


def fan_in(n):
    """n independent stages, and one that takes all of their results."""
    return independent(n) + [Node(workloads.stage, 0, tuple(range(n)))]


def dense(n):
    """n independent stages, and n stages that each take all of their
    results: n * n edges among 2 n stages."""
    return independent(n) + [Node(workloads.stage, 0, tuple(range(n))) for _ in range(n)]


def chain(n):
    return [Node(workloads.stage, 0, (index - 1,) if index else ()) for index in range(n)]


def naps(n):
    """A diamond's stages without its edges."""
    return [Node(workloads.stage, NAP_MS, ()) for _ in range(n)]


def diamond(n):
    """One source, n - 2 sleepers that take its result, one sink that takes theirs."""
    sleepers = range(1, n - 1)
    return ([Node(workloads.stage, NAP_MS, ())]
            + [Node(workloads.stage, NAP_MS, (0,)) for _ in sleepers]
            + [Node(workloads.stage, NAP_MS, tuple(sleepers))])


FAULTS = {'segfault': (workloads.segfault, 0), 'hang': (workloads.hang, 0),
          'out of memory': (workloads.hog, HOG_BYTES)}
ITEMS = 4
FAULTY = 2  # the node of the second item's preparation


def faulty(fault):
    """Each of four items is prepared, and then worked on; a summary takes
    every item's work. The second item's preparation segfaults, hangs or
    runs out of memory."""
    nodes = []
    for _ in range(ITEMS):
        fun, parameter = FAULTS[fault] if len(nodes) == FAULTY else (workloads.stage, STAGE_MS)
        nodes.append(Node(fun, parameter, ()))
        nodes.append(Node(workloads.stage, STAGE_MS, (len(nodes) - 1,)))
    nodes.append(Node(workloads.stage, 0, tuple(range(1, len(nodes), 2))))
    return nodes


def empty_sink(n):
    """n independent stages, and one that takes none of their results."""
    return independent(n) + [Node(workloads.stage, 0, ())]


GRAPHS = {'independent': independent, 'fan-in': fan_in, 'sink': fan_in, 'empty sink': empty_sink,
          'dense': dense, 'chain': chain, 'diamond': diamond, 'naps': naps, 'faulty': faulty}
# Graphs of which runforrest runs every stage but the last before the timing
# starts: what is timed is the last one alone, scheduled on a list where the
# others are done (see fan_in_workload).
SINKS = ('sink', 'empty sink')


def expected(nodes):
    """How many results a healthy run returns, and their sum."""
    values = []
    for node in nodes:
        values.append(1 + sum(values[index] for index in node.inputs))
    return len(values), sum(values)


# -- one run of one system, in the child process

class Outcome:
    def __init__(self):
        self.done = self.total = 0
        self.failed = {}  # node: 'ErrorType: message'
        # runforrest's: how much its resident memory grew from the first
        # result to the last, in MiB
        self.during = float('nan')
        self.raised = None  # what aborted the whole graph, if anything

    def result(self, value):
        self.done += 1
        self.total += value


def describe(error):
    return f'{type(error).__name__}: {" ".join(str(error).split())[:200]}'


class Timing:
    """Wall time, and CPU time of the driver itself (all of its threads,
    none of its children), of what runs inside the with block. Entering it
    creates the file `started`, from which the parent's timeout counts."""

    def __init__(self, started):
        self.started = started

    def __enter__(self):
        open(self.started, 'w').close()
        self.wall, self.cpu = time.perf_counter(), driver_cpu()

    def built(self):
        """Mark the end of building the graph: scheduling, adding or
        delaying every stage."""
        self.build = time.perf_counter() - self.wall

    def __exit__(self, *exc_info):
        self.wall, self.cpu = time.perf_counter() - self.wall, driver_cpu() - self.cpu


def driver_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory(field):
    """The driver's memory in MiB, from /proc/self/status: VmHWM is its
    peak, which ru_maxrss is not (exec() carries that over from the parent,
    the benchmark), VmRSS what it holds now."""
    with open('/proc/self/status') as file:
        return int(re.search(fr'{field}:\s+(\d+) kB', file.read()).group(1)) / 1024


def run_runforrest(nodes, spec, timing, outcome):
    import runforrest
    tasks = []

    def schedule(tasklist, part):
        for fun, parameter, inputs in part:
            # Scheduled tasks inside a later task's arguments are its dependencies.
            task = runforrest.defer(fun, parameter, [tasks[i] for i in inputs])
            tasklist.schedule(task, metadata=len(tasks))
            tasks.append(task)

    def run(tasklist):
        first = None
        for task in tasklist.run(nprocesses=spec['nprocesses'], autokill=spec['autokill'],
                                 memory_limit=spec['memory_limit']):
            if first is None:
                first = memory('VmRSS')
            if task.errorvalue is None:
                outcome.result(task.returnvalue)
            else:
                outcome.failed[task.metadata] = describe(task.errorvalue)
        if first is not None:
            outcome.during = memory('VmRSS') - first

    untimed, tasklist = len(nodes) - 1 if spec['graph'] in SINKS else 0, None
    if untimed:
        open(spec['started'], 'w').close()  # the run's timeout counts from here
        tasklist = runforrest.TaskList(spec['directory'])
        schedule(tasklist, nodes[:untimed])
        run(tasklist)
    with timing:
        tasklist = tasklist or runforrest.TaskList(spec['directory'])
        schedule(tasklist, nodes[untimed:])
        timing.built()
        run(tasklist)


def stage_path(directory, index):
    return os.path.join(directory, f'stage-{index}.pkl')


def run_taskgraph(nodes, spec, timing, outcome):
    import importlib
    import pickle
    import taskgraph
    # With psutil installed (distributed brings it), TaskGraph renices itself
    # and its workers to 10, which on a busy machine would slow it for
    # reasons of its own: run it as it runs without psutil.
    importlib.import_module('taskgraph.Task').HAS_PSUTIL = False
    directory = spec['directory']
    with timing:
        graph = taskgraph.TaskGraph(os.path.join(directory, 'cache'), spec['nprocesses'])
        tasks = []
        for index, (fun, parameter, inputs) in enumerate(nodes):
            output = stage_path(directory, index)
            tasks.append(graph.add_task(
                func=workloads.stage_on_disk,
                args=(fun, parameter, [stage_path(directory, i) for i in inputs], output),
                target_path_list=[output], dependent_task_list=[tasks[i] for i in inputs],
                task_name=f'stage {index}'))
        timing.built()  # TaskGraph has been running stages meanwhile
        graph.close()
        try:
            graph.join()
        except Exception as error:  # TaskGraph stops the whole graph at the first error
            outcome.raised = describe(error)
    # The results stay on disk: reading them back is the benchmark's check, not the run.
    for index in range(len(nodes)):
        if os.path.exists(stage_path(directory, index)):
            with open(stage_path(directory, index), 'rb') as file:
                outcome.result(pickle.load(file))


def compute_with_dask(nodes, timing, outcome, **scheduler):
    import dask
    with timing:
        stages = []
        for fun, parameter, inputs in nodes:
            stages.append(dask.delayed(fun)(parameter, [stages[i] for i in inputs]))
        timing.built()
        try:
            for value in dask.compute(*stages, **scheduler):
                outcome.result(value)
        except Exception as error:  # one failed stage fails compute(): results are lost
            outcome.raised = describe(error)


def run_dask_processes(nodes, spec, timing, outcome):
    compute_with_dask(nodes, timing, outcome, scheduler='processes',
                      num_workers=spec['nprocesses'])


def run_dask_distributed(nodes, spec, timing, outcome):
    from dask.distributed import Client, LocalCluster
    # A cluster outlives many graphs, so its start is not part of the run.
    with LocalCluster(n_workers=spec['nprocesses'], threads_per_worker=1, processes=True,
                      memory_limit=spec['memory_limit'] or 'auto',
                      dashboard_address=None) as cluster, Client(cluster):
        compute_with_dask(nodes, timing, outcome)


RUNNERS = {'runforrest': run_runforrest, 'TaskGraph': run_taskgraph,
           'dask processes': run_dask_processes, 'dask distributed': run_dask_distributed}


def child(spec):
    nodes = GRAPHS[spec['graph']](spec['size'])
    timing, outcome = Timing(spec['started']), Outcome()
    RUNNERS[spec['system']](nodes, spec, timing, outcome)
    report = {'wall': timing.wall, 'build': timing.build, 'cpu': timing.cpu, 'done': outcome.done,
              'total': outcome.total, 'failed': outcome.failed, 'raised': outcome.raised,
              'peak': memory('VmHWM'), 'during': outcome.during}
    with open(spec['report'], 'w') as file:
        json.dump(report, file)


# -- the harness, in the parent process

def become_subreaper():
    """Make the processes that a run's driver leaves behind our children when
    it dies, so that none escapes the sweep after each run."""
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def processes():
    """(pid, parent pid, session, resident bytes) of every process we can see."""
    page = os.sysconf('SC_PAGE_SIZE')
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as file:
                fields = file.read().rsplit(')', 1)[1].split()
            with open(f'/proc/{entry}/statm') as file:
                resident = int(file.read().split()[1]) * page
        except (OSError, IndexError):
            continue  # gone meanwhile
        yield int(entry), int(fields[1]), int(fields[3]), resident


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def sweep(session, grace):
    """Kill what a run left, after grace seconds for it to go by itself: its
    session, and any orphan that left the session and came to us; wait
    until they are gone. Returns how many there were."""
    deadline = time.monotonic() + grace
    while True:
        strays = [pid for pid, parent, sid, _ in processes()
                  if sid == session or parent == os.getpid()]
        if not strays or time.monotonic() >= deadline:
            break
        reap()
        time.sleep(0.05)
    for pid in strays:
        kill(pid)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f'/proc/{pid}') for pid in strays):
        reap()
        if time.monotonic() > deadline:
            raise RuntimeError(f'processes {strays} of a run outlive SIGKILL')
        time.sleep(0.01)
    return len(strays)


def reap():
    """Reap the orphans that came to us and ended."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def oom_killer(session, limit):
    """A stand-in for the kernel's OOM killer under a memory limit (a
    cgroup, a cluster's job): SIGKILL each process of the run over limit.
    Returns the resident bytes of those it killed."""
    victims = [(pid, resident) for pid, _, sid, resident in processes()
               if sid == session and resident > limit]
    for pid, _ in victims:
        kill(pid)
    return [resident for _, resident in victims]


def launch(system, graph, size, options, directory, nprocesses=NPROCESSES, fault=None):
    """Run one graph on one system in a fresh interpreter, and return its
    report, with what became of the run: 'ok', 'hung' (killed after the
    timeout), or 'died' (its driver, with its last words)."""
    limits = fault is not None
    spec = {'system': system, 'graph': graph, 'size': size, 'nprocesses': nprocesses,
            'directory': directory, 'report': directory + '.json',
            'started': directory + '.started',
            'autokill': AUTOKILL if limits else None,
            'memory_limit': MEMORY_LIMIT if limits else None}
    # Only runforrest and dask distributed offer a memory limit of their own.
    stand_in = MEMORY_LIMIT if limits and system in ('TaskGraph', 'dask processes') else None
    timeout = options.timeout if fault else options.timeout * 10
    with open(directory + '.log', 'w') as log:
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--child',
                                    json.dumps(spec)], stdout=log, stderr=log,
                                   start_new_session=True)
    # The timeout counts from the start of the graph, not of the
    # interpreter, its imports or a cluster, which are also bounded.
    deadline = time.monotonic() + STARTUP_TIMEOUT + timeout
    killed_for_memory, state = [], 'ok'
    try:
        while process.poll() is None:
            if os.path.exists(spec['started']) and deadline > time.monotonic() + timeout:
                deadline = time.monotonic() + timeout
            if time.monotonic() >= deadline:
                state = 'hung' if os.path.exists(spec['started']) else 'stuck'
                kill(process.pid)
                process.wait()
                break
            if stand_in:
                killed_for_memory += oom_killer(process.pid, stand_in)
            time.sleep(0.05)
    except BaseException:  # Ctrl-C or SIGTERM: the run in its own session goes too
        kill(process.pid)
        process.wait()
        sweep(process.pid, grace=0)
        raise
    strays = sweep(process.pid, grace=2 if state == 'ok' else 0)
    report = {'state': state, 'returncode': process.returncode, 'timeout': timeout,
              'strays': strays, 'killed_for_memory': killed_for_memory, 'failed': {}}
    if state == 'ok' and os.path.exists(spec['report']):
        with open(spec['report']) as file:
            report.update(json.load(file))
    else:
        report['done'] = kept(system, directory)
        if state != 'hung':
            with open(directory + '.log') as file:
                report['last words'] = (file.read().strip().splitlines() or [''])[-1][:200]
            if state == 'stuck':
                report['last words'] = (f'its graph had not started after {STARTUP_TIMEOUT} s; '
                                        f'{report["last words"]}')
            report['state'] = 'died'
    return report


def kept(system, directory):
    """How many results a run that did not finish left on disk."""
    if not os.path.isdir(directory):
        return 0
    if system == 'runforrest':
        done = os.path.join(directory, 'done')
        return len(os.listdir(done)) if os.path.isdir(done) else 0
    if system == 'TaskGraph':
        return sum(name.startswith('stage-') for name in os.listdir(directory))
    return 0  # dask holds results in memory


# What a run measures: wall time, driver CPU time, driver peak memory, time
# to build the graph, and runforrest's memory growth during the run.
Sample = collections.namedtuple('Sample', 'wall cpu peak build during')


class Harness:
    def __init__(self, options):
        self.options = options
        self.runs = 0

    def directory(self, name):
        self.runs += 1
        return os.path.join(self.options.workdir, f'{self.runs:04d}-{name}')

    def discard(self, directory):
        bench.discard(directory, self.options)
        os.sync()  # so that the next run does not pay for this one's writing

    def measure(self, system, graph, size, nprocesses=NPROCESSES):
        """The report of one healthy run, after checking its results."""
        directory = self.directory(f'{system}-{graph}-{size}'.replace(' ', '-'))
        try:
            report = launch(system, graph, size, self.options, directory, nprocesses)
        finally:
            self.discard(directory)
        if report['state'] != 'ok':
            raise RuntimeError(f'{system} {report["state"]} on {graph} of {size}: '
                               f'{report.get("last words", "")}')
        count, total = expected(GRAPHS[graph](size))
        if report['raised'] or report['failed'] or (report['done'], report['total']) != (
                count, total):
            raise RuntimeError(f'{system} on {graph} of {size}: {report["done"]} results '
                               f'summing to {report["total"]}, expected {count} summing to '
                               f'{total}; {report["raised"] or report["failed"]}')
        return report

    def repeats(self, workload):
        """Runs per system and variant, to take the median of; one of the
        fan-in, whose runs take up to minutes."""
        if self.options.repeat:
            return self.options.repeat
        return 1 if self.options.quick or workload == 'fan-in' else 3

    def compare(self, workload, variants, systems):
        """The median `Sample` per system and variant (graph, size,
        nprocesses), or why a system has none.
        Systems take turns within each repetition, so that a slow spell of the
        machine hits all of them alike."""
        samples = {system: collections.defaultdict(list) for system in systems}
        failures = {}
        for _ in range(self.repeats(workload)):
            for system in list(samples):
                try:
                    for variant in variants:
                        report = self.measure(system, *variant)
                        samples[system][variant].append(Sample(
                            report['wall'], report['cpu'], report['peak'], report['build'],
                            report['during']))
                except Exception as error:  # report it with the others' results
                    failures[system] = f'{type(error).__name__}: {error}'
                    del samples[system]
        medians = {system: {variant: Sample(*map(statistics.median, zip(*runs)))
                            for variant, runs in by_variant.items()}
                   for system, by_variant in samples.items()}
        return medians, failures


def check_cost(workload, what, value, target):
    """bench.check, for a cost measured as a difference: below zero, the
    noise is larger than the cost, and the measurement says nothing."""
    if value < 0:
        bench.CHECKS.append((workload, what, f'{value:.4g}', f'<= {target:.4g}',
                             'noise: below zero'))
        return 'noise'
    return bench.check(workload, what, value, target)


def versus(value, reference):
    return f'{value / reference:.2f}' if reference else ''


# -- workloads

def fan_in_workload(harness, systems):
    small, large = SIZES['fan-in'][harness.options.quick]
    # Each fan-in has as many tasks as its independent counterpart, and as
    # many edges as the other has tasks, less one.
    fanned, flat = ('fan-in', large), ('independent', large + 1)
    few, few_flat = ('fan-in', small), ('independent', small + 1)
    medians, failures = harness.compare('fan-in', [fanned, flat, few, few_flat], systems)
    reference = medians.get('runforrest', {}).get(fanned, (None,))[0]
    edges, peaks = [], []
    for system, runs in medians.items():
        fan, loose = runs[fanned], runs[flat]
        per_edge_wall = (fan.wall - loose.wall) / large * 1000
        per_edge_cpu = (fan.cpu - loose.cpu) / large * 1000
        growth = (fan.peak - runs[few].peak) * 1024 / (large - small)
        flat_growth = (loose.peak - runs[few_flat].peak) * 1024 / (large - small)
        during = verdict = ''
        if system == 'runforrest':
            during = f'{fan.during:.1f}'
            verdict = bench.check('fan-in', 'driver memory growth during the run [MiB]',
                                  fan.during, 1)
        edges.append([system, f'{fan.wall:.2f}', f'{loose.wall:.2f}',
                      versus(fan.wall, reference), f'{per_edge_wall:.3f}',
                      f'{per_edge_cpu:.4f}'])
        peaks.append([system, f'{runs[few].peak:.1f}', f'{fan.peak:.1f}', f'{growth:.2f}',
                      f'{runs[few_flat].peak:.1f}', f'{loose.peak:.1f}', f'{flat_growth:.2f}',
                      f'{growth - flat_growth:.2f}', during, '<= 1' if verdict else '',
                      verdict])
    bench.table(f'fan-in: {large} trivial stages and one that takes all their results, '
                f'{NPROCESSES} at a time, versus {large + 1} independent ones; '
                f'per edge = the difference / {large}, which the noise of {large} task '
                f'processes drowns (see the next table)',
                edge_columns('fan-in')[:-2], edges, failures)
    if 'runforrest' in systems:
        sink_table(harness, large)
    bench.table(f'fan-in: the driver\'s peak memory, {small} and {large} stages, and '
                f'{small + 1} and {large + 1} independent ones; growth = the difference / '
                f'{large - small} stages; over independent = the growth less theirs, per '
                f'dependency edge. Independent stages grow too, with what the script keeps of '
                f'each (its task objects) and the driver of each task. During the run: how '
                f'much runforrest\'s resident memory grew from the first of the {large + 1} '
                f'results to the last, the target',
                ['system', f'peak, {small} [MiB]', f'peak, {large} [MiB]', 'growth [KiB per stage]',
                 f'peak, {small + 1} independent [MiB]', f'peak, {large + 1} independent [MiB]',
                 'independent growth [KiB per stage]', 'over independent [KiB per edge]',
                 'during the run [MiB]', 'target', 'result'], peaks)


def sink_table(harness, n):
    """What the edges of a fan-in cost runforrest's driver, measured
    directly: the sink alone is timed, scheduled where its n stages are
    done, against a sink of none of them."""
    sink, empty = ('sink', n), ('empty sink', n)
    medians, failures = harness.compare('fan-in', [sink, empty], ['runforrest'])
    rows = []
    if 'runforrest' in medians:
        full, none = medians['runforrest'][sink], medians['runforrest'][empty]
        per_edge_cpu = (full.cpu - none.cpu) / n * 1000
        verdict = check_cost('fan-in', 'driver CPU per edge [ms]', per_edge_cpu, 0.05)
        rows.append(['runforrest', f'{full.wall:.3f}', f'{none.wall:.3f}',
                     f'{(full.wall - none.wall) / n * 1000:.4f}', f'{per_edge_cpu:.4f}', '<= 0.05',
                     verdict])
    bench.table(f'fan-in, its edges alone: the task that takes the results of {n} done '
                f'stages, scheduled, run and read back, versus one that takes none of them; '
                f'per edge = the difference / {n}. Not timed here: what the run does for each '
                f'edge while the stages end, a counter less (see dense)',
                ['system', 'sink wall [s]', 'empty sink wall [s]', 'wall per edge [ms]',
                 'driver CPU per edge [ms]', 'target', 'result'], rows, failures)


def edge_columns(workload):
    """The columns of a table of what a dependency edge costs."""
    return ['system', f'{workload} wall [s]', 'independent wall [s]', 'wall vs runforrest',
            'wall per edge [ms]', 'driver CPU per edge [ms]', 'target', 'result']


def dense_workload(harness, systems):
    n = SIZES['dense'][harness.options.quick]
    # As many stages, n * n edges: what an edge costs, without the noise
    # of thousands of task processes.
    linked, loose = ('dense', n), ('independent', 2 * n)
    medians, failures = harness.compare('dense', [linked, loose], systems)
    reference = medians.get('runforrest', {}).get(linked, (None,))[0]
    rows = []
    for system, runs in medians.items():
        wall, loose_wall = runs[linked].wall, runs[loose].wall
        per_edge_cpu = (runs[linked].cpu - runs[loose].cpu) / n ** 2 * 1000
        verdict = ''
        if system == 'runforrest':
            verdict = check_cost('dense', 'driver CPU per edge [ms]', per_edge_cpu, 0.05)
        rows.append([system, f'{wall:.2f}', f'{loose_wall:.2f}', versus(wall, reference),
                     f'{(wall - loose_wall) / n ** 2 * 1000:.4f}', f'{per_edge_cpu:.4f}',
                     '<= 0.05' if verdict else '', verdict])
    bench.table(f'dense: {n} trivial stages and {n} that each take all their results '
                f'({n * n} edges), {NPROCESSES} at a time, versus {2 * n} independent ones; '
                f'per edge = the difference / {n * n}',
                edge_columns('dense'), rows, failures)


def chain_workload(harness, systems):
    n = SIZES['chain'][harness.options.quick]
    # One at a time in both, as a chain must: the ratio is then what a
    # dependency costs, not what a second process gains.
    linked, loose = ('chain', n, 1), ('independent', n, 1)
    medians, failures = harness.compare('chain', [linked, loose], systems)
    reference = medians.get('runforrest', {}).get(linked, (None,))[0]
    rows = []
    for system, runs in medians.items():
        wall, build = runs[linked].wall, runs[linked].build
        loose_wall, loose_build = runs[loose].wall, runs[loose].build
        verdict = ''
        if system == 'runforrest':
            verdict = bench.check('chain', 'chain / independent, per task', wall / loose_wall,
                                  1.2)
        rows.append([system, f'{wall:.2f} ({build:.2f})', f'{loose_wall:.2f} ({loose_build:.2f})',
                     f'{wall / n * 1000:.2f}', f'{loose_wall / n * 1000:.2f}',
                     f'{wall / loose_wall:.3f}', f'{(wall - build) / (loose_wall - loose_build):.3f}',
                     versus(wall, reference), '<= 1.2' if verdict else '', verdict])
    bench.table(f'chain: {n} trivial stages, each taking the previous one\'s result, versus '
                f'{n} independent ones, both one at a time',
                ['system', 'chain wall (building it) [s]', 'independent wall (building) [s]',
                 'chain per task [ms]',
                 'independent per task [ms]', 'chain / independent',
                 'the same, after building', 'chain vs runforrest',
                 'target', 'result'], rows, failures)


def diamond_workload(harness, systems):
    n = SIZES['diamond'][harness.options.quick]
    shape, floor = ('diamond', n), ('naps', n)
    medians, failures = harness.compare('diamond', [shape, floor], systems)
    # The source, then the sleepers two at a time, then the sink.
    ideal = (2 + (n - 2) / NPROCESSES) * NAP_MS / 1000
    floor_ideal = n / NPROCESSES * NAP_MS / 1000
    reference = medians.get('runforrest', {}).get(shape, (None,))[0]
    rows = []
    for system, runs in medians.items():
        wall = runs[shape].wall
        verdict = ''
        if system == 'runforrest':
            verdict = bench.check('diamond', 'wall / ideal', wall / ideal, 1.10)
        rows.append([system, f'{wall:.3f}', f'{wall / ideal:.3f}',
                     f'{runs[floor].wall / floor_ideal:.3f}', versus(wall, reference),
                     '<= 1.1' if verdict else '', verdict])
    bench.table(f'diamond: one source, {n - 2} stages that take its result, one sink that '
                f'takes theirs, each sleeping {NAP_MS} ms, {NPROCESSES} at a time; ideal '
                f'{ideal:.2f} s. Its floor: the {n} stages without the edges; ideal '
                f'{floor_ideal:.2f} s',
                ['system', 'wall [s]', 'wall / ideal', 'floor: wall / ideal',
                 'wall vs runforrest', 'target', 'result'], rows, failures)


RUNFORREST_CAUSES = {'segfault': 'TaskCrashed', 'hang': 'TaskTimeout',
                     'out of memory': 'TaskOutOfMemory'}


def fault_outcome(system, fault, report, nodes):
    """What became of a faulty run, in a few words."""
    kept = f'{report.get("done", 0)}/{len(nodes)} results'
    if report['state'] == 'hung':
        text = f'hung (killed after {report["timeout"]:g} s)'
        if system == 'TaskGraph':
            text += f'; {kept} on disk'
    elif report['state'] == 'died':
        text = f'driver died (exit status {report["returncode"]}): {report["last words"]}'
    elif report['raised']:
        # The first sentence, without the random parts of dask's task keys
        raised = re.sub(r'-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}', '',
                        report['raised']).split('. ')[0]
        text = f'graph aborted after {report["wall"]:.1f} s: {raised}; {kept}'
        if system == 'TaskGraph':
            text += ' on disk'
    else:
        causes = collections.Counter(why.split(':')[0] for why in report['failed'].values())
        text = f'finished in {report["wall"]:.1f} s, {kept}'
        if report['failed']:
            text += ('; failed: ' + ', '.join(f'{count} {cause}'
                                              for cause, count in causes.items()))
        faulty_cause = report['failed'].get(str(FAULTY))
        if faulty_cause:
            text += f'; the faulty stage: {faulty_cause[:120]}'
    for resident in report['killed_for_memory']:
        text += (f' (the benchmark SIGKILLed a process at {resident >> 20} MiB, as the '
                 f'kernel\'s OOM killer would)')
    if report['strays'] and report['state'] != 'hung':
        text += f'; it left {report["strays"]} processes running (killed)'
    return text


def faults_workload(harness, systems):
    rows = []
    for system in systems:
        row = [system]
        for fault in FAULTS:
            directory = harness.directory(f'{system}-{fault}'.replace(' ', '-'))
            try:
                report = launch(system, 'faulty', fault, harness.options, directory,
                                fault=fault)
                row.append(fault_outcome(system, fault, report, faulty(fault)))
            finally:
                harness.discard(directory)
            if system == 'runforrest':
                wanted = {str(FAULTY): RUNFORREST_CAUSES[fault],
                          str(FAULTY + 1): 'DependencyFailed',
                          str(2 * ITEMS): 'DependencyFailed'}
                got = {node: why.split(':')[0] for node, why in report['failed'].items()}
                wrong = (report['state'] != 'ok' or got != wanted
                         or report['done'] != len(faulty(fault)) - len(wanted))
                bench.check('faults', f'{fault}: wrong outcomes (1 if not finished with the '
                            f'cause recorded and the rest done)', int(wrong), 0)
        rows.append(row)
    bench.table(f'faults: {ITEMS} items, each prepared ({STAGE_MS} ms) and worked on '
                f'({STAGE_MS} ms), and a summary of all items; the second item\'s '
                f'preparation faults. runforrest: autokill={AUTOKILL}, memory_limit='
                f'{MEMORY_LIMIT >> 20} MiB; dask distributed: its workers\' memory_limit='
                f'{MEMORY_LIMIT >> 20} MiB; the others have no limit of their own',
                ['system'] + list(FAULTS), rows)


WORKLOADS = {'fan-in': fan_in_workload, 'dense': dense_workload, 'chain': chain_workload,
             'diamond': diamond_workload, 'faults': faults_workload}


def missing(system):
    """Why a system cannot run here, or None."""
    module = {'runforrest': 'runforrest', 'TaskGraph': 'taskgraph',
              'dask processes': 'dask', 'dask distributed': 'distributed'}[system]
    try:
        imported = __import__(module)
    except Exception as error:  # also a checkout broken mid-edit: measure the peers
        return f'{module} does not import ({type(error).__name__}: {error})'
    if system == 'runforrest' and not hasattr(imported, 'DependencyFailed'):
        # Without pipelines, a scheduled task in another's arguments is
        # evaluated again inside it: the same results, measuring nothing.
        return 'this runforrest has no pipelines (no DependencyFailed)'
    return None


def version(module):
    try:
        return __import__(module).__version__
    except Exception:
        return 'missing'


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small sizes')
    parser.add_argument('--repeat', type=int,
                        help='runs per system and variant, to take the median of (default 3; '
                             'fan-in 1; 1 with --quick)')
    parser.add_argument('--only', default=','.join(WORKLOADS),
                        help=f'comma-separated workloads, of: {",".join(WORKLOADS)}')
    parser.add_argument('--systems', default=','.join(SYSTEMS),
                        help=f'comma-separated systems, of: {",".join(SYSTEMS)}')
    parser.add_argument('--workdir', default='.',
                        help='where a temporary directory for the task lists goes; not /tmp, '
                             'if file creation is slow there')
    parser.add_argument('--timeout', type=float,
                        help=f'seconds after which a faulty run counts as hung and is killed '
                             f'(default {TIMEOUT[0]}, {TIMEOUT[1]} with --quick); a healthy '
                             f'run may take ten times as long')
    parser.add_argument('--child', help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return child(json.loads(options.child))
    workloads.compile_as_installed()
    chosen, systems = options.only.split(','), options.systems.split(',')
    for kind, names, known in [('workloads', chosen, WORKLOADS), ('systems', systems, SYSTEMS)]:
        if set(names) - set(known):
            parser.error(f'unknown {kind}: {", ".join(sorted(set(names) - set(known)))}')
    options.timeout = options.timeout or TIMEOUT[options.quick]

    global bench
    import bench  # the parent's tables, targets and discarding, shared with bench.py
    skipped = {system: missing(system) for system in systems if missing(system)}
    systems = [system for system in systems if system not in skipped]
    print(f'Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, '
          + ', '.join(f'{module} {version(module)}' for module in ['runforrest', 'taskgraph',
                                                                    'dask'])
          + f', {"quick" if options.quick else "full"} sizes, median of {options.repeat or (1 if options.quick else "3 (fan-in: 1)")}, '
          f'load average {os.getloadavg()[0]:.1f} (other work skews the results)')
    for system, why in skipped.items():
        print(f'\n- {system} skipped: {why}')
    become_subreaper()
    # SIGTERM as SystemExit, so that the run in progress, in a session of
    # its own, is killed with us, and the work directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f'{sys.argv[0]}: terminated'))
    options.workdir = tempfile.mkdtemp(prefix='runforrest-bench-pipelines-',
                                       dir=os.path.abspath(options.workdir))
    options.discarded = os.path.join(options.workdir, 'discarded')
    # As in bench.py: task processes load modules from cached bytecode.
    os.environ.pop('PYTHONDONTWRITEBYTECODE', None)
    os.environ['PYTHONPYCACHEPREFIX'] = os.path.join(options.workdir, 'pycache')
    # Compile every module a run imports now, this script's own (argparse,
    # statistics) too, or the first run of each system would count the
    # compiler's memory in its driver's peak.
    modules = ['pipelines', 'workloads', 'runforrest', 'taskgraph', 'dask', 'dask.distributed']
    subprocess.run([sys.executable, '-c', f'import {", ".join(modules)}'],
                   cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                   env={**os.environ, 'PYTHONPATH': REPOSITORY})
    harness = Harness(options)
    try:
        for name in chosen:
            started = time.perf_counter()
            try:
                WORKLOADS[name](harness, systems)
            except Exception:  # a broken workload should not hide the others
                traceback.print_exc()
                bench.CHECKS.append((name, 'completes', 'raised', 'no error', 'FAIL'))
            print(f'\n({name} took {time.perf_counter() - started:.0f} s; '
                  f'load average now {os.getloadavg()[0]:.1f})', flush=True)
    finally:
        shutil.rmtree(options.workdir, ignore_errors=True)
    bench.table('targets', ['workload', 'measure', 'value', 'target', 'result'], bench.CHECKS)


if __name__ == '__main__':
    main()
