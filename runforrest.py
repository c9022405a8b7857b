"""Run, Forrest, run: many isolated processes from one slow loop, and nothing lost.

Wrap calls in `defer`, `schedule` the resulting task graphs on a `TaskList`,
and iterate over `TaskList.run`. Every task runs in a fresh process of its
own, in a process group of its own, so that it can raise, crash, hang, leak
or flood its output without harming anything but itself.

A task is a file, and its life is a walk through the task list's directory::

    defer(f, x) ─► Task graph ─ schedule() ─► DIR/todo/00000001-f.pkl
                 (a task scheduled before and used in this graph is a
                  dependency: the file names it, instead of holding it)
                                                   │
                     run(): waits until its dependencies are in done/
                     (if one lands in fail/, it fails unrun: DependencyFailed)
                                                   │
                          one process per task, at most N at once
                          python -m runforrest todo/00000001-f.pkl .runforrest/collect/00000001-f.pkl
                          (its stdout and stderr go to DIR/output/00000001-f.log)
                                                   │
                              the result, or, if the process died without one,
                              the supervisor's record of how it died
                                                   ▼
                                DIR/.runforrest/collect/00000001-f.pkl
                                                   │ the driver files it and yields it
                                                   ▼
                           DIR/done/00000001-f.pkl  or  DIR/fail/00000001-f.pkl

Every file appears atomically (written aside, then moved into place), and a
result is on disk before the task leaves todo/, so a crash of a task, of the
driver or of the machine loses nothing: the next run files what reached
collect/ and runs again what did not. Every file in todo/, done/ and fail/
unpickles to its task (see "The file format"), and .runforrest/ holds all
the drivers' working state.

The module reads in that order: errors, the task graph, the file format, the
store (`TaskList`), the task process, the supervisor that starts and polices
task processes, the driver (`Run`, and the dependencies it waits for),
progress, conveniences (`pmap`, `call`, `background`, `pmap_rows`),
backends for more than one machine (`Slurm`, executors such as Dask), and
the command line. Keys (what a task's result depends on, for lists that
reuse their work) come with the task graph, and the ledger of a reuse list
with the store.
"""

if __name__ == '__main__':
    # python -m runforrest: run the imported module, not this __main__ copy
    # (task files and errors refer to runforrest.X, and a task's session may
    # fill __main__), and do it first, so that the module runs once, not twice.
    import sys
    import runforrest
    sys.exit(runforrest.main())

# Only what a task process needs is imported here; the driver's tools are
# imported where they are used, so that a task process starts fast.
import errno
import os
import pickle
import sys
import time

__version__ = '1.0.0'

__all__ = [
    'defer', 'evaluate', 'Task', 'Call', 'Value', 'Item', 'Attribute',
    'TaskList', 'Run', 'pmap', 'proc', 'call', 'background', 'pmap_rows',
    'execute', 'read_task', 'Slurm',
    'RunforrestError', 'TaskListError', 'TaskListExists', 'NotATaskList',
    'TaskListBusy', 'TaskFileError', 'NotPicklable', 'TaskFailure',
    'TaskCrashed', 'TaskKilled', 'TaskTimeout', 'TaskOutOfMemory',
    'TaskLost', 'UnpicklableResult', 'UnpicklableException', 'DependencyFailed',
    'File', 'NotKeyable', 'MissingOutput',
]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class RunforrestError(Exception):
    """Base class of every error that runforrest raises or records.

    Keyword arguments become attributes, and survive pickling:

    >>> RunforrestError('boom', exitcode=3).exitcode
    3
    """

    def __init__(self, message='', /, **details):
        super().__init__(message)
        self.__dict__.update(details)


class TaskListError(RunforrestError):
    """A task list directory cannot be used as asked."""


class TaskListExists(TaskListError, FileExistsError):
    """The directory exists and `exist_ok` was not given."""


class NotATaskList(TaskListError):
    """The directory exists but holds something other than a task list."""


class TaskListBusy(TaskListError):
    """Another driver is running this task list right now."""


class TaskFileError(TaskListError):
    """A task file is missing, truncated, corrupt, or cannot be loaded.

    Attributes: `path` (the file) and `reason` (what is wrong with it).
    """


class NotPicklable(RunforrestError, TypeError):
    """A function, argument or task cannot be pickled, so it cannot travel
    to another process. Attribute: `type_name`."""


class NotKeyable(RunforrestError, TypeError):
    """A value cannot be part of a task's key, because it cannot be known
    deterministically: an open file, a lock, a generator, an object that
    pickles differently each time. Attributes: `type_name`, and `where`
    (which argument, and where inside it)."""


class TaskFailure(RunforrestError):
    """Recorded as `errorvalue` when a task failed without raising an
    exception of its own."""


class TaskCrashed(TaskFailure):
    """The task's process ended without a result: killed by a signal
    (attribute `signal`, e.g. 'SIGSEGV') or exited (attribute `exitcode`)."""


class TaskKilled(TaskFailure):
    """runforrest killed the task's process group."""


class TaskTimeout(TaskKilled, TimeoutError):
    """Killed because it ran longer than `autokill` seconds (`seconds`)."""


class TaskOutOfMemory(TaskKilled, MemoryError):
    """Killed because its process group used more than `memory_limit`
    bytes (`limit`, and `used` as last measured)."""


class TaskLost(TaskFailure):
    """A cluster job ended without a result (cancelled, node failure, or
    killed by the scheduler); `state` and `reason` say what SLURM or the
    executor reported."""


class UnpicklableResult(TaskFailure):
    """The task returned something that cannot be pickled (`type_name`)."""


class UnpicklableException(TaskFailure):
    """Stands in for an exception that could not be pickled: it keeps its
    `type_name` and `message`; the task's `traceback` is kept as well."""


class MissingOutput(TaskFailure):
    """The task ran, but did not write a file that `schedule(outputs=...)`
    says it writes (`path`)."""


class DependencyFailed(TaskFailure):
    """The task did not run, because a task it depends on failed, or its
    result is gone: `dependency` names that task, `error_type` and `error`
    say what happened to it."""


# ---------------------------------------------------------------------------
# The task graph
# ---------------------------------------------------------------------------

class _Outcome:
    """A task's returnvalue, errorvalue or traceback: None until it has run.
    A task that a run yields reads it from its file when it is first asked
    for, so that a result nobody looks at is never loaded."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, task, owner=None):
        if task is None:
            return None
        values = task.__dict__
        if self.name not in values and '_load_outcome' in values:
            values.update(values['_load_outcome']())
            del values['_load_outcome']
        return values.get(self.name)

    def __set__(self, task, value):
        task.__dict__[self.name] = value


class Task:
    """A lazy value: a deferred call, a piece of data, or a part of another task.

    Indexing, attribute access and calls on a task build new tasks; nothing
    runs until the graph is evaluated:

    >>> task = defer(dict, value=[1, 2])
    >>> evaluate(task['value'][1])
    2

    Names starting with an underscore are not deferred (they belong to
    Python's protocols), and neither are the names of a task's outcome:
    `metadata`, `returnvalue`, `errorvalue`, `traceback`, `runtime`,
    `taskname` and `reused`, which are set on tasks that come back from a
    `TaskList`. To defer access to an attribute of one of those names, use
    `defer(getattr, task, 'returnvalue')`.

    Tasks compare equal when they are the same task, also after a trip
    through the task list's files.
    """

    metadata = None
    _scheduled = ()  # (directory, name) of each list it is scheduled on: see TaskList._mark
    returnvalue = _Outcome()
    errorvalue = _Outcome()
    traceback = _Outcome()
    runtime = None
    taskname = None
    reused = False

    def __init__(self, fun, args=(), kwargs=None):
        self._fun = fun
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._key = os.urandom(8).hex()

    def __getattr__(self, name):
        values = self.__dict__
        if name in _CALL and '_load_call' in values:  # see read_task
            values.update(values['_load_call']())
            del values['_load_call']
            return values[name]
        if name.startswith('_'):
            raise AttributeError(name)
        return Attribute(self, name)

    def __getitem__(self, key):
        return Item(self, key)

    def __call__(self, *args, **kwargs):
        return Call(self, *_lift_arguments(args, kwargs))

    def __iter__(self):
        raise TypeError('a task is not iterable until it has run; '
                        'index it instead: task[0], task[1], ...')

    def __eq__(self, other):
        return isinstance(other, Task) and other._key == self._key

    def __hash__(self):
        return hash(self._key)

    def __reduce__(self):
        return _rebuild, (_flatten(self),)

    def __repr__(self):
        return f'<{type(self).__name__} {_describe(self)}>'

    def _dependencies(self):
        values = (self._fun, *self._args, *self._kwargs.values())
        return [value for value in values if isinstance(value, Task)]

    def _compute(self, value_of):
        return value_of(self._fun)(*map(value_of, self._args),
                                   **{key: value_of(value)
                                      for key, value in self._kwargs.items()})


_CALL = ('_fun', '_args', '_kwargs')  # what a task calls: the graph behind it


class Call(Task):
    """A deferred call `fun(*args, **kwargs)`; any of them may be tasks."""


class Value(Task):
    """Plain data, as a task: `defer(42)`."""

    def __init__(self, value):
        super().__init__(_identity, (value,))


class Item(Task):
    """`task[key]`, deferred."""

    def __init__(self, parent, key):
        super().__init__(_getitem, (parent, key))


class Attribute(Task):
    """`task.name`, deferred."""

    def __init__(self, parent, name):
        super().__init__(getattr, (parent, name))


class _Result(Task):
    """The stored returnvalue of the task `name` of the same list: what a
    scheduled task becomes in a graph scheduled after it (see `_flatten`)."""

    def __init__(self, name):
        super().__init__(_stored_result, (name,))


# In a task process: the task list whose done/ holds the results it depends
# on, and those of them read ahead, while its task waited for its turn.
_dependency_list = None
_read_ahead = {}


def _stored_result(name):
    if name in _read_ahead:
        return _read_ahead.pop(name)
    if _dependency_list is None:
        raise RunforrestError(f'this task uses the stored result of the task {name}, '
                              f'so it runs only from its task list: python -m '
                              f'runforrest TASKFILE RESULTFILE')
    path = os.path.join(_dependency_list, 'done', name + '.pkl')
    try:
        return read_task(path).returnvalue
    except TaskFileError as error:
        failed = os.path.exists(os.path.join(_dependency_list, 'fail', name + '.pkl'))
        raise DependencyFailed(
            f'the task depends on {name}, which ' +
            ('failed; see its file in fail/' if failed else
             f'has no readable result in done/ ({error}); run it first'),
            dependency=name, error_type='TaskFileError', error=str(error)) from None


def _read_results_ahead(task):
    """Read the stored results that task takes and that are done already, so
    that they need not be read once it may run (see `_ForkServer.stage`).
    One that cannot be read yet is left to be read, or to fail, in its turn."""
    for node in _postorder(task):
        if type(node) is _Result:
            name = node._args[0]
            try:
                _read_ahead[name] = _stored_result(name)
            except DependencyFailed:
                pass


def _identity(value):
    return value


def _getitem(container, key):
    return container[key]


def _build(kind, *items):
    return kind(items)


def _build_dict(keys, *values):
    return dict(zip(keys, values))


def defer(fun, *args, **kwargs):
    """A task that calls `fun(*args, **kwargs)` when it runs.

    Arguments may be tasks, also inside lists, tuples and dicts; they are
    evaluated first. With a single argument that is not callable, `defer`
    wraps plain data:

    >>> evaluate(defer(lambda x: x + 1, defer(41)))
    42

    Everything must be picklable (with dill), since the task will run in
    another process; `NotPicklable` says which argument is not.
    """
    if isinstance(fun, Task) and not args and not kwargs:
        return fun
    if not callable(fun):
        if args or kwargs:
            raise TypeError(f'defer() calls its first argument, but '
                            f'{type(fun).__name__} {_abbreviate(fun)} is not '
                            f'callable; to wrap plain data, use defer(data) '
                            f'with no further arguments')
        _check_picklable(fun, lambda: 'the data')
        return Value(fun)
    if not isinstance(fun, Task):
        _check_picklable(fun, lambda: f'the function {_abbreviate(fun)}')
    for position, arg in enumerate(args):
        if not isinstance(arg, Task):
            _check_picklable(arg, lambda: f'argument {position} of {_abbreviate(fun)}')
    for name, arg in kwargs.items():
        if not isinstance(arg, Task):
            _check_picklable(arg, lambda: f'argument {name}= of {_abbreviate(fun)}')
    return Call(fun, *_lift_arguments(args, kwargs))


def _lift_arguments(args, kwargs):
    return tuple(map(_lift, args)), {key: _lift(value) for key, value in kwargs.items()}


def _lift(value):
    """Turn lists, tuples and dicts that hold tasks into tasks that build them."""
    if type(value) is dict:
        lifted = {key: _lift(item) for key, item in value.items()}
        if any(isinstance(item, Task) for item in lifted.values()):
            return Call(_build_dict, (tuple(lifted), *lifted.values()))
        return value
    if type(value) in (list, tuple):
        lifted = [_lift(item) for item in value]
        if any(isinstance(item, Task) for item in lifted):
            return Call(_build, (type(value), *lifted))
    return value


def _postorder(root, stop=None):
    """Every task of root's graph once, each after the tasks it depends on;
    below a task for which stop(task) is true (never the root), nothing.

    Iterative, so that a chain 100,000 tasks deep meets no recursion limit.
    """
    seen = {}  # the keys of those yielded: a dict takes half the memory of a set
    stack = [root]
    while stack:
        task = stack[-1]
        if task._key in seen:
            stack.pop()
            continue
        if stop is None or task is root or not stop(task):
            missing = [dep for dep in task._dependencies() if dep._key not in seen]
            if missing:
                stack.extend(missing)
                continue
        stack.pop()
        seen[task._key] = None
        yield task


def evaluate(task):
    """Run a task graph in this process and return its value.

    A sub-task that appears several times runs once. Anything that is not
    a task evaluates to itself.
    """
    if not isinstance(task, Task):
        return task
    values = {}

    def value_of(value):
        return values[value._key] if isinstance(value, Task) else value

    for node in _postorder(task):
        values[node._key] = node._compute(value_of)
    return values[task._key]


def _flatten(root, cut=None):
    """root's graph as a flat list of nodes, children first, in which each
    task is replaced by its node itself: pickled in this order, a node's
    tasks are references to what was pickled already, which needs no
    recursion, nor an object for each of a task's thousands of arguments.

    cut maps the keys of tasks scheduled on a list to their names; each of
    them becomes the `_Result` of that name, and what is below it goes. Its
    node is 'KEY NAME', one string: a task may take the results of thousands,
    and pickling remembers every object it pickles, to refer to it again."""
    node_of = {}

    def node(value):
        return node_of[value._key] if isinstance(value, Task) else value

    for task in _postorder(root, (lambda task: task._key in cut) if cut else None):
        if cut and task is not root and task._key in cut:
            node_of[task._key] = f'{task._key} {cut[task._key]}'
        else:
            node_of[task._key] = (type(task), task._key, node(task._fun),
                                  tuple(map(node, task._args)),
                                  {key: node(value) for key, value in task._kwargs.items()})
    return list(node_of.values())


class _Graph:
    """A task graph as `_flatten` gives it, which pickles as its root task:
    schedule() pickles a graph with its cut so, without building the tasks
    of the cut graph first, which for a task that takes the results of
    thousands would be as many tasks more in the driver."""

    def __init__(self, nodes):
        self.nodes = nodes

    def __reduce__(self):
        return _rebuild, (self.nodes,)


def _rebuild(nodes):
    tasks = {}  # id of a node, the very object in the arguments that use it: its task

    def task_of(value):
        return tasks.get(id(value), value)

    for node in nodes:
        if type(node) is str:  # a task of the cut
            key, name = node.split(' ')
            cls, fun, args, kwargs = _Result, _stored_result, (name,), {}
        else:
            cls, key, fun, args, kwargs = node
        task = cls.__new__(cls)
        task.__dict__.update(_fun=task_of(fun), _args=tuple(map(task_of, args)),
                             _kwargs={k: task_of(v) for k, v in kwargs.items()},
                             _key=key)
        tasks[id(node)] = task
    return task


def _describe(task, depth=2):
    """A short, readable rendering of a task, such as `dostuff(prepare(1)[1])`."""
    if depth < 0:
        return '…'
    show = (lambda value: _describe(value, depth - 1) if isinstance(value, Task)
            else _abbreviate(value))
    if isinstance(task, Value):
        return _abbreviate(task._args[0])
    if isinstance(task, _Result):
        return f'<result of {task._args[0]}>'
    if isinstance(task, Item):
        return f'{show(task._args[0])}[{show(task._args[1])}]'
    if isinstance(task, Attribute):
        return f'{show(task._args[0])}.{task._args[1]}'
    arguments = [show(arg) for arg in task._args]
    arguments += [f'{key}={show(value)}' for key, value in task._kwargs.items()]
    return f'{show(task._fun)}({", ".join(arguments)})'


def _abbreviate(value, width=60):
    if callable(value) and hasattr(value, '__qualname__'):
        text = value.__qualname__
    else:
        try:
            text = repr(value)
        except Exception:
            text = f'<{type(value).__name__}>'
    return text if len(text) <= width else text[:width - 1] + '…'


def _label(task):
    """A name for task files: the function that the graph's root calls."""
    while True:
        if isinstance(task, (Item, Attribute)):
            task = task._args[0]
        elif isinstance(task, Value):
            name = 'value'
            break
        elif isinstance(task._fun, Attribute):  # a method of a part: .resample(8000)
            name = task._fun._args[1]
            break
        elif isinstance(task._fun, Task):
            task = task._fun
        else:
            name = getattr(task._fun, '__name__', type(task._fun).__name__)
            break
    name = str(name)
    label = _LABELS.get(name)
    if label is None:
        label = ''.join(c if c.isalnum() or c == '_' else '_' for c in name).strip('_')
        label = _LABELS[name] = label[:40] or 'task'
    return label


_LABELS = {}  # a function's name: its label, made once, as each schedule() asks


# ---------------------------------------------------------------------------
# Keys: what a task's result depends on
# ---------------------------------------------------------------------------
#
# A task's key is a digest of everything that its result depends on and that
# runforrest can see, so that a task list can tell work already done from
# work that is new or changed:
#   - the code it calls (`_code_key`): the syntax of the functions, not their
#     bytecode or their place in the file, and, transitively, the user's own
#     functions and classes they reach through their globals and closures,
#     with the values of the module-level data they read;
#   - its arguments' values (`_value_key`), its input files' contents
#     (`File`), and the keys, not the values, of the separately scheduled
#     tasks it depends on (`_task_key`): a Merkle tree over the task graph.
# Each part is written as a stream of tagged, length-prefixed tokens, and the
# stream is hashed with SHA-256. Nothing in it depends on the process (no
# ids, addresses, hash seeds, file names of scripts or dict orders that vary),
# so a fresh interpreter running the same script computes the same keys.
#
# What a key cannot see: files a task opens by name (wrap inputs in File()),
# environment variables, other programs, databases, the clock, code reached
# only by name at run time (getattr, importlib, eval), and the code of the
# standard library and of installed packages, which count by name only.
# For those, a task's key takes values of the user's own (`extra` of
# `_task_key`): a version string bumped by hand, a library's __version__,
# File() objects for the files a helper reads by name.

_KEY_DIGITS = 32  # hex digits of a key: 128 bits
_HASH_CHUNK = 1 << 22  # bytes per leaf of the hash tree; changing it changes every key
_SHARED_ARRAY_BYTES = 1 << 16  # arrays at least this big are hashed once per object
_RACY_NANOSECONDS = 2_000_000_000  # a file changed this recently may change unseen


class File(Value):
    """An input file of a task: `defer(prepare, File('data/raw.csv'))`.

    The task receives the path as it was given (a str or path-like). The
    task's key covers that path and the file's content, not its timestamps:
    a file that is touched, or replaced by a copy with the same bytes, keeps
    its key; a file whose bytes changed gets a new one.

    Hashing is skipped for a file whose size, modification and change times
    and inode are as recorded when it was last hashed (see `_file_digest`),
    so that an unchanged input of 10 GB costs a stat(), not a read.

    >>> evaluate(defer(len, File('README.md'))) == len('README.md')
    True
    """

    def __init__(self, path):
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(f'File() takes the path of a file (a str or path-like '
                            f'object), not {type(path).__name__} {_abbreviate(path)}')
        super().__init__(path)


def _buffer_digest(data):
    """The digest of a C-contiguous buffer's bytes (see `_tree_digest`)."""
    view = memoryview(data).cast('B')
    return _tree_digest(len(view), lambda offset: view[offset:offset + _HASH_CHUNK])


def _tree_digest(size, chunk):
    """SHA-256 of size and of the SHA-256 of each _HASH_CHUNK bytes that
    chunk(offset) returns, hashed in as many threads as there are cores:
    hashlib lets go of the GIL while it hashes, so that one big array or file
    is hashed at the speed of all the cores, yet its digest does not depend on
    how many there are."""
    import hashlib
    offsets = range(0, size, _HASH_CHUNK)
    digests = [b''] * len(offsets)
    errors = []

    def hash_every(step, first):
        try:
            for index in range(first, len(offsets), step):
                digests[index] = hashlib.sha256(chunk(offsets[index])).digest()
        except BaseException as error:
            errors.append(error)

    workers = min(len(offsets), len(os.sched_getaffinity(0)), 8)
    if workers > 1:
        import threading
        threads = [threading.Thread(target=hash_every, args=(workers, first), daemon=True)
                   for first in range(1, workers)]
        for thread in threads:
            thread.start()
        hash_every(workers, 0)
        for thread in threads:
            thread.join()
    else:
        hash_every(1, 0)
    if errors:
        raise errors[0]
    return hashlib.sha256(b'%d;' % size + b''.join(digests)).digest()


def _file_signature(path):
    """What changes whenever a file's content may have: size, modification
    and change times and inode. The change time cannot be set by hand, so a
    copy that keeps the modification time (cp -p, rsync -t) is hashed anew."""
    import stat
    status = os.stat(path)
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, 'a directory, not a file '
                                              '(give File() each file in it)', path)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, 'not a regular file', path)
    return _signature(status)


def _signature(status):
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino


def _settled(signature):
    """Whether a file of this signature (`_file_signature`) may be recorded
    as it was read: not changed in the last two seconds, as on file systems
    with coarse timestamps a write right after the reading could leave its
    signature as it was."""
    return time.time_ns() - signature[1] > _RACY_NANOSECONDS


def _file_digest(path, files=None):
    """The digest of the content of the file at path.

    files, if given, is the record of earlier hashing: a dict of absolute
    path -> (size, mtime_ns, ctime_ns, inode, digest), read and updated here.
    A file whose signature (`_file_signature`) is as recorded is not read
    again. A file changed in the last two seconds is hashed but not recorded:
    on file systems with coarse timestamps, a write right after the hashing
    could leave its signature as it was. The record is plain data, for the
    task list to keep in its own files.

    A copy or a touched file has a new signature, is hashed again, and, if
    its bytes are the same, has the same digest.
    """
    name = os.path.abspath(path)
    for attempt in range(3):  # a file written while it is hashed is hashed again
        before = _file_signature(name)
        recorded = files.get(name) if files is not None else None
        if recorded is not None and tuple(recorded[:-1]) == before:
            return recorded[-1]
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            digest = _tree_digest(before[0], lambda offset: os.pread(fd, _HASH_CHUNK, offset))
        finally:
            os.close(fd)
        after = _file_signature(name)
        if after == before:
            break
    if files is not None and _settled(after):
        files[name] = (*after, digest)
    return digest


_ARRAY_DIGESTS = {}  # id(array) -> (weak reference, sample of its bytes, digest)


def _array_digest(raw, array):
    """The digest of raw, the bytes of array (a numpy array), hashed once per
    array object: one array passed to 10,000 tasks is hashed once.

    The cache holds a weak reference, so it keeps no array alive and an id
    reused by a new array is not taken for the old one. An array changed in
    place is noticed by a sample of its bytes (17 blocks of 256, evenly
    spread): a change that none of them sees, such as a single element,
    keeps the old digest. Pass a copy of an array that you change between
    schedules."""
    if raw.nbytes < _SHARED_ARRAY_BYTES:
        return _buffer_digest(raw)
    view = memoryview(raw).cast('B')
    step = max(len(view) // 16, 1)
    sample = b''.join([view[offset:offset + 256] for offset in range(0, len(view), step)]
                      + [view[-256:]])
    cached = _ARRAY_DIGESTS.get(id(array))
    if cached is not None and cached[0]() is array and cached[1] == sample:
        return cached[2]
    import weakref
    digest = _buffer_digest(view)

    def forget(reference, identity=id(array)):
        if _ARRAY_DIGESTS.get(identity, (None,))[0] is reference:
            del _ARRAY_DIGESTS[identity]

    _ARRAY_DIGESTS[id(array)] = (weakref.ref(array, forget), sample, digest)
    return digest


_LIBRARY_FILES = {}  # file name -> whether it belongs to a library


def _is_library_file(filename):
    """Whether code from filename is the standard library's, an installed
    package's or runforrest's own: code that keys count by name, not by
    content. Everything else, scripts, notebooks, a project's modules and
    packages installed with `pip install -e`, is the user's own code."""
    library = _LIBRARY_FILES.get(filename)
    if library is None:
        if filename.startswith('<'):  # <frozen ...> is the stdlib; <string>, <stdin> are not
            library = filename.startswith('<frozen')
        else:
            import sysconfig
            path = os.path.realpath(filename)
            roots = {os.path.realpath(sysconfig.get_path(name)) + os.sep
                     for name in ('stdlib', 'platstdlib')}
            parts = path.split(os.sep)
            library = ('site-packages' in parts or 'dist-packages' in parts
                       or path == os.path.realpath(__file__)
                       or any(path.startswith(root) for root in roots))
        _LIBRARY_FILES[filename] = library
    return library


def _is_library_module(module):
    if module.__name__ == _MAIN_MODULE:
        return False
    location = getattr(module, '__file__', None) or next(iter(getattr(module, '__path__', ())),
                                                         None)
    return location is None or _is_library_file(location)  # None: built into Python


def _is_library_class(cls):
    module = sys.modules.get(cls.__module__)
    return module is not None and _is_library_module(module)


class _Source:
    """A user's source file, parsed and compiled once: its functions'
    syntax by first line, and the code compiled from it, by which code
    imported from an older version of the file is known."""

    def __init__(self, lines, filename):
        import ast
        source = ''.join(lines)
        self.tree = ast.parse(source, filename)
        self.functions = {}  # (first line, name) -> def node
        self.lambdas = {}  # line -> lambda nodes
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                self.functions[first, node.name] = node
            elif isinstance(node, ast.Lambda):
                self.lambdas.setdefault(node.lineno, []).append(node)
        self.codes = set()
        todo = [compile(source, filename, 'exec', dont_inherit=True,
                        optimize=sys.flags.optimize)]
        while todo:
            code = todo.pop()
            self.codes.add(code)
            todo.extend(const for const in code.co_consts if isinstance(const, type(code)))

    def node_of(self, code):
        """The syntax tree that code was compiled from, or None."""
        if code not in self.codes:
            return None
        if code.co_name != '<lambda>':
            return self.functions.get((code.co_firstlineno, code.co_name))
        # Lambdas have no name: the one on its line with its parameters whose
        # source span holds every instruction of the code.
        nargs = (code.co_argcount + code.co_kwonlyargcount
                 + bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08))
        parameters = sorted(code.co_varnames[:nargs])
        spans = [(line, column, end_line, end_column)
                 for line, end_line, column, end_column in code.co_positions()
                 if None not in (line, end_line, column, end_column)
                 and line >= code.co_firstlineno]
        candidates = []
        for node in self.lambdas.get(code.co_firstlineno, ()):
            arguments = node.args
            names = sorted(argument.arg for argument in
                           [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                            *filter(None, [arguments.vararg, arguments.kwarg])])
            if names == parameters and all(
                    (node.lineno, node.col_offset) <= (line, column)
                    and (end_line, end_column) <= (node.end_lineno, node.end_col_offset)
                    for line, column, end_line, end_column in spans):
                candidates.append(node)
        return candidates[0] if len(candidates) == 1 else None


_SOURCES = {}  # file name -> _Source, or None where there is none
_CODE_INFO = {}  # code -> (digest of its syntax, the dotted global names it reads)


def _code_info(code, module_globals):
    """(digest, global names) of a user's code object, worked out once.

    The digest is of the syntax tree of its source, without docstrings and
    positions: a changed statement, constant, default or decorator changes
    it; a comment, a docstring, blank lines or a move within the file do not.
    Where there is no source to be had (code typed at the prompt, made by
    exec(), or imported from a file that has changed since), the digest is of
    the code object's instructions, constants and names instead: a move
    within the file changes that one neither, a docstring does.
    """
    info = _CODE_INFO.get(code)
    if info is None:
        import ast
        import hashlib
        node = _source_node(code, module_globals)
        if node is not None:
            node = _without_docstrings(node)
            syntax = b'ast' + ast.dump(node, include_attributes=False).encode()
        else:
            keyer = _Keyer()
            keyer.bytecode(code)
            syntax = b'code' + b''.join(keyer.out)
        info = _CODE_INFO[code] = (hashlib.sha256(syntax).digest(), _global_names(code))
    return info


def _source_node(code, module_globals):
    import linecache
    filename = code.co_filename
    for attempt in range(2):  # a second time with the file as it is now
        if filename not in _SOURCES:
            lines = linecache.getlines(filename, module_globals)
            try:
                _SOURCES[filename] = _Source(lines, filename) if lines else None
            except (SyntaxError, ValueError):
                _SOURCES[filename] = None
        source = _SOURCES[filename]
        node = source.node_of(code) if source is not None else None
        if node is not None or attempt:
            return node
        linecache.checkcache(filename)
        del _SOURCES[filename]


def _without_docstrings(node):
    import ast
    import copy
    node = copy.deepcopy(node)
    for inner in ast.walk(node):
        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and inner.body and isinstance(inner.body[0], ast.Expr) \
                and isinstance(inner.body[0].value, ast.Constant) \
                and isinstance(inner.body[0].value.value, str):
            inner.body = inner.body[1:]
    return node


def _global_names(code):
    """The dotted names that code, and the code nested in it, read from its
    globals, such as ('np', 'linalg', 'norm') or ('helper',), in order."""
    import dis
    names = {}
    todo = [code]
    while todo:
        current = todo.pop(0)
        dotted = None
        for instruction in dis.get_instructions(current):
            if instruction.opname in ('LOAD_GLOBAL', 'LOAD_NAME'):
                if dotted:
                    names[tuple(dotted)] = None
                dotted = [instruction.argval]
            elif instruction.opname in ('LOAD_ATTR', 'LOAD_METHOD') and dotted:
                dotted.append(instruction.argval)
            elif dotted:
                names[tuple(dotted)] = None
                dotted = None
        if dotted:
            names[tuple(dotted)] = None
        todo.extend(const for const in current.co_consts if isinstance(const, type(code)))
    return tuple(names)


class _Absent:
    """A global that is not there (the code would raise NameError), or an
    empty closure cell."""


_ABSENT = _Absent()


def _contents(cell):
    try:
        return cell.cell_contents
    except ValueError:  # not filled yet
        return _ABSENT


def _same(items, others):
    items = tuple(items)
    return len(items) == len(others) and all(item is other for item, other in zip(items, others))


def _look_up_global(namespace, dotted):
    """(object, how many of the names led to it) for a dotted name read from
    globals, followed through the user's own modules only."""
    obj = namespace.get(dotted[0], _ABSENT)
    if obj is _ABSENT:
        builtins = namespace.get('__builtins__', __builtins__)
        obj = (builtins if isinstance(builtins, dict) else vars(builtins)).get(dotted[0], _ABSENT)
    walked = 1
    while walked < len(dotted) and type(obj) is type(sys) and not _is_library_module(obj):
        obj = getattr(obj, dotted[walked], _ABSENT)
        walked += 1
    return obj, walked
_CLASS_SKIP = frozenset({'__dict__', '__weakref__', '__doc__', '__module__', '__qualname__',
                         '__firstlineno__', '__static_attributes__'})


class _Keyer:
    """Writes values, code and files as a stream of tokens, in `out`.

    Containers and objects being written are in `active`, by which a value
    that contains itself is written as a reference back; functions and
    classes already written are in `written`, so that recursion, mutual
    recursion and shared helpers are written once.

    Strict by default: a value that cannot be keyed deterministically raises
    NotKeyable. What code reads from around it (globals, closures, defaults,
    class attributes) is written leniently: such a value there, a lock or an
    open file, say, counts by its type, since it is a resource of the code
    rather than data given to it.
    """

    def __init__(self, files=None):
        self.out = []
        self.files = files
        self.active = {}
        self.written = {}
        self.keep = []  # what `written` refers to by id, alive until we are done
        self.lenient = False
        self.checking = False  # within an object whose reduction is checked
        self.checks = None  # while tokens are recorded for _FUNCTION_TOKENS
        self.volatile = False  # whether they hold data that may change unseen
        self.inline = False  # whether classes are written in full (see _class_digest)

    def value(self, obj):
        write = _WRITERS.get(type(obj))
        if write is None:
            write = _writer_of(obj)
        write(self, obj)

    def text(self, tag, text):
        data = text.encode('utf-8', 'surrogatepass')
        self.out.append(b'%s%d:%s' % (tag, len(data), data))

    def refuse(self, obj, reason):
        if not self.lenient:
            raise NotKeyable(reason, type_name=type(obj).__name__, path=[])
        self.out.append(b'R')
        self.value(type(obj))

    # -- plain data

    def constant(self, obj):
        self.out.append(_CONSTANTS[obj])

    def integer(self, obj):
        self.out.append(b'i%d;' % obj)

    def floating(self, obj):
        import struct
        self.out.append(b'f' + struct.pack('<d', obj))

    def complex_number(self, obj):
        import struct
        self.out.append(b'c' + struct.pack('<dd', obj.real, obj.imag))

    def string(self, obj):
        self.text(b's', obj)

    def binary(self, obj):
        tag = b'b' if type(obj) is bytes else b'y'
        self.volatile |= tag == b'y'
        if len(obj) >= _SHARED_ARRAY_BYTES:
            self.out.append(tag + b'#' + _buffer_digest(obj))
        else:
            self.out.append(b'%s%d:%s' % (tag, len(obj), obj))

    def sequence(self, obj):
        self.volatile |= type(obj) is list
        identity = id(obj)
        if identity in self.active:
            self.out.append(b'@%d;' % self.active[identity])
            return
        self.active[identity] = len(self.active)
        self.out.append(b'%s%d;' % (_SEQUENCE_TAGS[type(obj)], len(obj)))
        try:
            for index, item in enumerate(obj):
                try:
                    self.value(item)
                except NotKeyable as error:
                    error.path.insert(0, f'[{index}]')
                    raise
        finally:
            del self.active[identity]

    def mapping(self, obj):
        # In order: a dict's order is part of its value to the code that
        # iterates over it, so two orders are two keys, never one.
        self.volatile = True
        identity = id(obj)
        if identity in self.active:
            self.out.append(b'@%d;' % self.active[identity])
            return
        self.active[identity] = len(self.active)
        self.out.append(b'{%d;' % len(obj))
        try:
            for key, item in obj.items():
                self.value(key)
                try:
                    self.value(item)
                except NotKeyable as error:
                    error.path.insert(0, f'[{_abbreviate(key, 30)}]')
                    raise
        finally:
            del self.active[identity]

    def unordered(self, obj):
        # Sorted by their tokens: a set's order varies with the hash seed.
        self.volatile |= type(obj) is set
        out, items = self.out, []
        try:
            for item in obj:
                self.out = []
                self.value(item)
                items.append(b''.join(self.out))
        finally:
            self.out = out
        items.sort()
        self.out.append(b'%s%d;' % (b'<' if type(obj) is set else b'>', len(items)))
        self.out.extend(items)

    def array(self, array):
        self.volatile = True
        header = b'%s;%s;%s;' % (type(array).__name__.encode(), str(array.dtype.descr).encode(),
                                 str(array.shape).encode())
        if array.dtype.hasobject:
            self.out.append(b'A' + header)
            self.value(array.tolist())
            return
        import numpy
        if array.flags.c_contiguous:
            raw, order = array, b'C'
        elif array.flags.f_contiguous:
            raw, order = array.T, b'F'
        else:
            raw, order = numpy.ascontiguousarray(array), b'C'
        raw = raw.reshape(-1).view(numpy.uint8)
        self.out.append(b'a' + order + header + _array_digest(raw, array))

    def file(self, file):
        path = file._args[0]
        self.volatile = True
        self.out.append(b'p')
        self.value(path)  # as the task receives it: a task may use the name
        try:
            self.out.append(_file_digest(path, self.files))
        except OSError as error:
            raise type(error)(error.errno, f'cannot key the input file {os.fsdecode(path)!r}: '
                                           f'{error.strerror}. File() names a file that a task '
                                           f'reads: it must be there when the task is scheduled',
                              error.filename) from None

    def task(self, obj):
        self.refuse(obj, 'it is a task inside a value that runforrest does not look into '
                         '(a set, or an attribute of an object); pass the task as an '
                         'argument, or inside a list, tuple or dict')

    # -- code

    def function(self, fun):
        if self.written or self.active or self.checks is not None \
                or fun.__globals__.get(fun.__name__) is not fun:
            self.code_of(fun)
            return
        # A module's function, written first: its tokens do not depend on
        # what came before, so they are kept, with checks that tell whether
        # they still hold (see _FUNCTION_TOKENS).
        cached = _FUNCTION_TOKENS.get(fun)
        if cached is not None and all(holds() for holds in cached[2]):
            tokens, written, checks = cached
            self.out.append(tokens)
            self.written = {id(obj): index for index, obj in enumerate(written)}
            self.keep = list(written)
            return
        mark, self.checks, self.volatile = len(self.out), [], False
        try:
            self.code_of(fun)
            if not self.volatile:
                _FUNCTION_TOKENS[fun] = (b''.join(self.out[mark:]), list(self.keep), self.checks)
        finally:
            self.checks = None

    def code_of(self, fun):
        code = fun.__code__
        if _is_library_file(code.co_filename):
            self.text(b'L', f'{fun.__module__}.{fun.__qualname__}')
            self.surrounding(getattr(fun, '__wrapped__', None))  # a library's decorator
            return
        if self.seen(fun):
            return
        digest, names = _code_info(code, fun.__globals__)
        self.out.append(b'U' + digest)
        defaults, kwdefaults = fun.__defaults__, fun.__kwdefaults__
        contents = tuple(_contents(cell) for cell in fun.__closure__ or ())
        if self.checks is not None:
            self.checks.append(lambda: fun.__code__ is code and fun.__defaults__ is defaults
                               and fun.__kwdefaults__ is kwdefaults
                               and all(_contents(cell) is value for cell, value
                                       in zip(fun.__closure__ or (), contents)))
        lenient, self.lenient = self.lenient, True
        try:
            self.value(defaults)
            self.value(kwdefaults)
            for value in contents:
                self.value(value)
            for dotted in names:
                self.global_value(fun.__globals__, dotted)
        finally:
            self.lenient = lenient

    def global_value(self, namespace, dotted):
        """Writes what a dotted name read from globals refers to: through
        the user's own modules, down to the object; into a library's module,
        not at all (the module counts by its name)."""
        obj, walked = _look_up_global(namespace, dotted)
        if self.checks is not None:
            if walked == 1 and dotted[0] in namespace:  # the common case, made quick
                name = dotted[0]
                self.checks.append(lambda: namespace.get(name, _ABSENT) is obj)
            else:
                self.checks.append(lambda: _look_up_global(namespace, dotted)[0] is obj)
        self.text(b'g', '.'.join(dotted[:walked]))
        self.value(obj)

    def surrounding(self, obj):
        lenient, self.lenient = self.lenient, True
        try:
            self.value(obj)
        finally:
            self.lenient = lenient

    def seen(self, obj):
        """Whether obj, a function or class, is written already; writes a
        reference to it if so."""
        index = self.written.get(id(obj))
        if index is not None:
            self.out.append(b'@f%d;' % index)
            return True
        self.written[id(obj)] = len(self.written)
        self.keep.append(obj)
        return False

    def bytecode(self, code):
        """A code object without a source: its instructions, names and
        constants, not its file name or positions."""
        self.out.append(b'X' + code.co_code)
        self.value((code.co_name, code.co_argcount, code.co_posonlyargcount,
                    code.co_kwonlyargcount, code.co_flags, code.co_names,
                    code.co_varnames, code.co_freevars, code.co_cellvars))
        for const in code.co_consts:
            if isinstance(const, type(code)):
                self.bytecode(const)
            else:
                self.value(const)

    def builtin(self, fun):
        owner = fun.__self__
        module = getattr(fun, '__module__', None)
        if owner is None or type(owner) is type(sys):
            self.text(b'B', f'{module}.{fun.__qualname__}')
        else:  # a bound method of an object: [].append, '-'.join
            self.text(b'o', f'{module or type(owner).__module__}.{fun.__qualname__}')
            self.value(owner)

    def method(self, method):
        self.out.append(b'm')
        self.value(method.__func__)
        self.value(method.__self__)

    def descriptor(self, obj):  # str.upper, object.__init__, (1).__add__
        owner = getattr(obj, '__objclass__', None) or type(obj.__self__)
        self.text(b'd', f'{owner.__module__}.{owner.__qualname__}.{obj.__name__}')
        if hasattr(obj, '__self__'):
            self.value(obj.__self__)

    def module(self, module):
        self.text(b'M', module.__name__)

    def cls(self, cls):
        if _is_library_class(cls):
            self.text(b'C', f'{cls.__module__}.{cls.__qualname__}')
            return
        if self.seen(cls):
            return
        if self.inline:
            self.class_body(cls)
            return
        cached = _CLASS_DIGESTS.get(cls)
        if cached is None or not all(holds() for holds in cached[1]):
            cached = _class_digest(cls)
        digest, checks, volatile = cached
        self.out.append(b'K' + digest)
        self.volatile |= volatile
        if self.checks is not None:
            self.checks.extend(checks)

    def class_body(self, cls):
        # Attributes sorted by name: dill may rebuild a namespace in another order.
        self.text(b'K', cls.__qualname__)
        bases, members = cls.__bases__, tuple(vars(cls).values())
        self.checks.append(lambda: cls.__bases__ is bases and _same(vars(cls).values(), members))
        self.value(type(cls))
        self.value(bases)
        lenient, self.lenient = self.lenient, True
        try:
            namespace = vars(cls)
            for name in sorted(set(namespace) - _CLASS_SKIP):
                member = namespace[name]
                self.text(b'n', name)
                if isinstance(member, (staticmethod, classmethod)):
                    self.out.append(b'S' if isinstance(member, staticmethod) else b'Q')
                    member = member.__func__
                elif isinstance(member, property):
                    self.out.append(b'P')
                    member = (member.fget, member.fset, member.fdel)
                volatile = self.volatile
                self.value(member)
                if not callable(member) and type(member) is not tuple:
                    self.volatile = volatile  # the class's data: checked by identity only
        finally:
            self.lenient = lenient

    def other(self, obj):
        """Any other object, by its reduction, as pickle would store it: the
        callable that rebuilds it, with its arguments and state. Refused if
        it cannot be pickled, or if it pickles differently a second time."""
        self.volatile = True
        reduced = self.reduce(obj)
        if reduced is None:
            return
        if isinstance(reduced, str):  # stored by name, as a global
            import pickle as pickling
            module = getattr(obj, '__module__', None) or pickling.whichmodule(obj, reduced)
            self.text(b'G', f'{module}.{reduced}')
            self.surrounding(getattr(obj, '__wrapped__', None))  # functools.lru_cache, ...
            return
        identity = id(obj)
        if identity in self.active:
            self.out.append(b'@%d;' % self.active[identity])
            return
        self.active[identity] = len(self.active)
        mark, written = len(self.out), self.written.copy()
        checking, self.checking = self.checking, True
        try:
            self.reduction(obj, reduced)
            if not checking:  # the outermost such object checks all within it
                first = self.out[mark:]
                del self.out[mark:]
                self.written = written
                again = self.reduce(obj)
                if again is not None:
                    self.reduction(obj, again)
                if self.out[mark:] != first:
                    del self.out[mark:]
                    self.refuse(obj, 'it pickles differently each time, so its '
                                     'value cannot be known from one run to the next')
        finally:
            self.checking = checking
            del self.active[identity]

    def reduce(self, obj):
        import copyreg
        try:
            reducer = copyreg.dispatch_table.get(type(obj))
            return reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as error:
            self.refuse(obj, f'it cannot be pickled ({type(error).__name__}: {error})')

    def reduction(self, obj, reduced):
        rebuild, arguments, state, items, pairs = (tuple(reduced) + (None,) * 5)[:5]
        self.out.append(b'r')
        self.value(rebuild)
        try:
            self.value(arguments)
            self.value(state)
            self.value(None if items is None else list(items))
            self.value(None if pairs is None else list(pairs))
        except NotKeyable as error:
            error.path.insert(0, f'<{type(obj).__name__}>')
            raise


_CLASS_DIGESTS = {}  # the user's class -> (digest, checks that it still holds, volatile)


def _class_digest(cls):
    """(digest, checks, volatile) of a user's class: its name, metaclass,
    bases and attributes, methods by their code.

    Worked out on a _Keyer of its own, which writes every class it meets in
    full, so that the digest depends on nothing but the class and what it
    reaches, not on where or when the class is met; kept while its
    attributes are the same objects and what its methods read is unchanged
    (see _FUNCTION_TOKENS). Data in a class's attributes counts by its value
    when the class is first keyed in a process: changed in place later, it
    is not seen again in that process.
    """
    import hashlib
    keyer = _Keyer()
    keyer.checks, keyer.inline = [], True
    keyer.seen(cls)  # a method that names its class refers back to it
    keyer.class_body(cls)
    result = (hashlib.sha256(b''.join(keyer.out)).digest(), keyer.checks, keyer.volatile)
    if not keyer.volatile:
        _CLASS_DIGESTS[cls] = result
    return result


_CONSTANTS = {None: b'N', True: b'T', False: b'F', Ellipsis: b'E', NotImplemented: b'I'}
_SEQUENCE_TAGS = {tuple: b'(', list: b'['}


def _writer_of(obj):
    """The _Keyer method for obj's type, found by what it is; remembered for
    types that can only be written one way."""
    import types
    kind = type(obj)
    numpy = sys.modules.get('numpy')
    if numpy is not None and kind in (numpy.ndarray, numpy.memmap):  # subclasses: by reduction
        write = _WRITERS[kind] = _Keyer.array
    elif isinstance(obj, type):
        write = _Keyer.cls  # a metaclass's instance: ABCMeta, EnumMeta, ...
    elif kind is File:
        write = _WRITERS[kind] = _Keyer.file
    elif isinstance(obj, Task):
        write = _Keyer.task
    elif isinstance(obj, (types.WrapperDescriptorType, types.MethodDescriptorType,
                          types.ClassMethodDescriptorType, types.MethodWrapperType)):
        write = _WRITERS[kind] = _Keyer.descriptor
    else:
        write = _Keyer.other
    return write


def _writers():
    import types
    writers = {kind: _Keyer.constant for kind in (type(None), bool, type(Ellipsis),
                                                  type(NotImplemented))}
    writers.update({int: _Keyer.integer, float: _Keyer.floating,
                    complex: _Keyer.complex_number, str: _Keyer.string,
                    bytes: _Keyer.binary, bytearray: _Keyer.binary,
                    tuple: _Keyer.sequence, list: _Keyer.sequence, dict: _Keyer.mapping,
                    set: _Keyer.unordered, frozenset: _Keyer.unordered,
                    type: _Keyer.cls, types.FunctionType: _Keyer.function,
                    types.BuiltinFunctionType: _Keyer.builtin,
                    types.MethodType: _Keyer.method, types.ModuleType: _Keyer.module,
                    _Absent: lambda keyer, absent: keyer.out.append(b'?')})
    return writers


_WRITERS = _writers()  # type -> _Keyer method; see also _writer_of

# A module's function -> (its tokens when written first, the functions and
# classes written with it, checks that they still hold: the code, defaults and
# closures of the functions, the objects their globals name, the attributes of
# the classes). Not kept when the tokens include data that may change in place
# (lists, dicts, arrays, objects), which is then written anew every time; nor
# for functions made on the fly (lambdas, closures), which would be kept alive.
_FUNCTION_TOKENS = {}


def _tokens(value):
    keyer = _Keyer()
    keyer.value(value)
    return b''.join(keyer.out)


# The extra key values (see `TaskList._key`) of a task with no version, no
# after= and no outputs, as most tasks are: written once, not once per task.
_NO_EXTRA = (None, [], [])
_NO_EXTRA_TOKENS = _tokens(_NO_EXTRA)


def _key_of(out):
    import hashlib
    return hashlib.sha256(b''.join(out)).hexdigest()[:_KEY_DIGITS]


def _write(keyer, obj, describe):
    """keyer.value(obj), with a refusal that says which value: describe()."""
    try:
        keyer.value(obj)
    except NotKeyable as error:
        raise _refusal(error, describe()) from None


def _refusal(error, what):
    """The NotKeyable to raise for error, raised by a _Keyer, in what."""
    where = what + (f', at {"".join(error.path)}' if error.path else '')
    article = 'an' if error.type_name[:1].lower() in 'aeiou' else 'a'
    return NotKeyable(
        f'cannot key {where}: {article} {error.type_name} cannot be part of a '
        f"task's key, since {error}. A task's key is made from the values it is "
        f'given, by which a task list knows whether it has run already; pass '
        f'plain values instead (a list rather than a generator, a file name '
        f'rather than an open file, in File() if the task reads it), or create '
        f'such objects inside the task', type_name=error.type_name, where=where)


def _value_key(obj, files=None):
    """The key of a value: equal for equal values, in any process, any run.

    Plain data counts by its structure and contents: None, bools, numbers,
    str, bytes, tuples, lists and dicts in their order (a dict's order is
    part of its value to code that iterates over it), and sets and frozensets
    in no order. NumPy arrays count by dtype, shape and bytes, hashed in
    parallel threads, once per array object (see `_array_digest`); bytes
    objects of 64 KiB or more are hashed that way too, every time.
    Functions and classes count by their code (`_code_key`), File objects
    by their path and content (files: see `_file_digest`). Anything else
    counts by its pickle's parts (`__reduce_ex__`): what rebuilds it, with
    its arguments and state, keyed in turn.

    Raises NotKeyable for a value that cannot be pickled (an open file, a
    lock, a generator, a socket), or that pickles differently a second time.
    An object whose pickle stays the same within a run but not across runs
    (one that pickles its id(), say) is beyond what can be checked here.

    >>> _value_key({'a': [1, 2.5], 'b': {3, 4}}) == _value_key({'a': [1, 2.5], 'b': {4, 3}})
    True
    >>> _value_key({'a': 1, 'b': 2}) == _value_key({'b': 2, 'a': 1})
    False
    """
    keyer = _Keyer(files)
    _write(keyer, obj, lambda: 'the value')
    return _key_of(keyer.out)


def _code_key(fun):
    """The key of what calling fun runs.

    A function of the user's own code (see `_is_library_file`) counts by the
    syntax of its source (see `_code_info`), its defaults, the contents of
    its closure, and what it reads from its globals: the user's functions
    and classes transitively (recursion and cycles included), modules by
    name, and module-level data by value, read anew on every call, so that a
    constant changed between two schedules is seen. A function or class of
    the standard library or an installed package counts by its qualified
    name only, as do builtins; so changing a library's version changes no
    key (add its `__version__` to the task's extra values if it should).
    A class of the user's counts by its name, metaclass, bases and
    attributes (methods by their code). A bound method counts by its
    function and the value of its object; a functools.partial by its
    function and arguments. Lambdas count by their syntax where their line
    tells which lambda they are, else by their code object.

    Functions that dill brought from another process's __main__ have the
    same code, so the same key, as long as their source file is there to be
    read. Results are cached per code object, so that keying 100,000 tasks
    of one function reads its source once.
    """
    keyer = _Keyer()
    _write(keyer, fun, lambda: f'the function {_abbreviate(fun)}')
    return _key_of(keyer.out)


def _task_key(task, dependency_keys=None, extra=None, files=None):
    """The key of a task graph: a Merkle tree over its tasks.

    Each task's key covers the code it calls, its arguments' values and its
    dependencies' keys. dependency_keys maps the `_key` of tasks scheduled
    on their own to their task keys: such a task counts by that key, not by
    its value or its graph, which is not walked again. extra, if not None,
    is a value added to the key of the root task: the escape hatch for what
    a key cannot see (a version string bumped by hand, a library's
    `__version__`, File() objects for files read by name). files is the
    record of earlier file hashing (see `_file_digest`).

    >>> prepare = defer(pow, 2, 10)
    >>> key = _task_key(defer(abs, prepare))
    >>> key == _task_key(defer(abs, defer(pow, 2, 10)))
    True
    >>> key == _task_key(defer(abs, prepare), {prepare._key: 'its key'})
    False
    >>> key == _task_key(defer(abs, prepare), extra='version 2')
    False
    """
    known = dependency_keys if dependency_keys is not None else {}
    keys = {}

    def key_of(node):
        return keys.get(node._key) or known.get(node._key)

    stack = [task]
    while stack:  # in postorder, stopping at the tasks whose keys are known
        node = stack[-1]
        if key_of(node) is not None:
            stack.pop()
            continue
        missing = [dependency for dependency in node._dependencies()
                   if key_of(dependency) is None]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        keys[node._key] = _node_key(node, key_of, files, extra if node is task else None)
    return key_of(task)


def _node_key(node, key_of, files, extra):
    keyer = _Keyer(files)
    out, write = keyer.out, keyer.value
    if type(node) is File:
        keyer.file(node)
    else:
        which = None  # the function; then an argument's position or name
        out.append(b'%d;' % len(node._args))
        try:
            for which, value in ((None, node._fun), *enumerate(node._args),
                                 *sorted(node._kwargs.items())):
                if type(which) is str:
                    keyer.text(b'k', which)
                if isinstance(value, Task):
                    out.append(b'D' + key_of(value).encode())
                else:
                    write(value)
        except NotKeyable as error:
            raise _refusal(error, _argument_name(node, which)) from None
    if extra is _NO_EXTRA:
        out.append(b'+' + _NO_EXTRA_TOKENS)
    elif extra is not None:
        out.append(b'+')
        _write(keyer, extra, lambda: "the task's extra key values")
    return _key_of(out)


def _argument_name(node, which):
    """Which argument of a task's node, in the words of the user's call;
    which=None for its function."""
    if which is None:
        return f'the function {_abbreviate(node._fun)}'
    if isinstance(node, Value):
        return 'the data'
    if node._fun is _build:
        return f'item {which - 1} of a {node._args[0].__name__} given to a task'
    if node._fun is _build_dict:
        return f'the value for {node._args[0][which - 1]!r} in a dict given to a task'
    argument = f'argument {which}' if isinstance(which, int) else f'argument {which}='
    fun = node._fun
    return f'{argument} of {_describe(fun, 0) if isinstance(fun, Task) else _abbreviate(fun)}'


# ---------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------
#
# Every task file, in todo/, done/ or fail/ alike, begins with one pickle
# that plain `pickle.load` (or `dill.load`) turns into the Task, with its
# metadata and, once it ran, its outcome:
#
#   _restore(RECORD, OUTCOME)
#     RECORD: the bytes of two pickles, as schedule() made them: the head,
#             (the task's class, its key, its metadata), and then the task
#             (`_Graph`); copied unchanged from todo/ into the result;
#     OUTCOME: None in todo/; in a result {'returnvalue': ...} or
#             {'errorvalue': ..., 'traceback': ...}, and 'runtime'.
#
# An index of builtins only follows: the state, where the record lies, the
# error's type and summary, the runtime, the names of the tasks it depends
# on (one string, a name a line: see `_each_name`), and the driver's
# sys.path and directory. Then the index's size, and an end mark:
#
#   [ _restore(...) pickle ][ index pickle ][ index size: 8 bytes ][ _END ]
#
# Listing, counting and `status` read the index from the end of the file,
# so they import nothing that a task needs. A file without the end mark was
# cut short: a result that a power cut caught before it reached the disk.
# The RECORD is written as raw bytes and the outcome is pickled straight
# after it, with its own end opcode replaced by the call's, so that neither
# is pickled twice nor held twice in memory. The outcome, read alone, is
# its own pickle again with that opcode put back (`_read_outcome`); the head
# is read alone too (`read_task`): reading what a task is named, holds and
# returned reads no graph, however many tasks it depends on, until its call
# is used.

FORMAT = 2
_END = b'\nrunforrest end\n'
_TRAILER_SIZE = 8 + len(_END)
_OPENING = (pickle.PROTO + bytes([4]) + pickle.SHORT_BINUNICODE + bytes([10]) + b'runforrest'
            + pickle.SHORT_BINUNICODE + bytes([8]) + b'_restore' + pickle.STACK_GLOBAL
            + pickle.BINBYTES8)
_RECORD_OFFSET = len(_OPENING) + 8
_CLOSING = pickle.TUPLE2 + pickle.REDUCE + pickle.STOP  # _restore(RECORD, OUTCOME)
_CLOSING_DAMAGED = pickle.NEWTRUE + pickle.TUPLE3 + pickle.REDUCE + pickle.STOP
_MAIN_MODULE = '__main__'
# Bytes of a record that read_task reads with its head. A record unpickles
# to ten or twenty times its size: a larger one waits until the task's call
# is used, so that yielding a task that takes the results of a hundred tasks
# or more, or large arguments, builds none of them in the driver.
_EAGER_RECORD = 1 << 12


def _restore(record, outcome, damaged=False):
    """The task of a task file, as unpickling the file makes it (see above);
    a damaged file, whose bytes are kept but hold no task, gives Value(None)."""
    task = Value(None) if damaged else _unpack(record, 'the task file')
    task.__dict__.update(outcome or {})
    return task


def _index_bytes(index):
    data = pickle.dumps({'format': FORMAT, 'record_offset': _RECORD_OFFSET, **index},
                        pickle.HIGHEST_PROTOCOL)
    return data + len(data).to_bytes(8, 'little') + _END


def _each_name(after):
    """The names in the 'after' of an index, one at a time. One string holds
    them, not a list, so that the index of a task that takes the results of
    thousands unpickles to one object, not thousands."""
    start = 0
    while start < len(after):
        end = after.find('\n', start)
        end = len(after) if end < 0 else end
        yield after[start:end]
        start = end + 1


def _todo_bytes(parts, index):
    """A todo file: its task, whose record is the pickles of parts, with no
    outcome yet, and its index, with the record's size. All in one buffer:
    a large record is never copied."""
    import io
    buffer = io.BytesIO()
    buffer.write(_OPENING + bytes(8))
    for part in parts:
        _dump(part, buffer)
    size = buffer.tell() - _RECORD_OFFSET
    buffer.write(pickle.NONE + _CLOSING + _index_bytes({**index, 'record_size': size}))
    with buffer.getbuffer() as view:
        view[len(_OPENING):_RECORD_OFFSET] = size.to_bytes(8, 'little')
    return buffer.getvalue()


class _FastPickler(pickle.Pickler):
    """The C pickler, refusing what only dill can carry to a task process:
    functions and classes of __main__ (which is runforrest in the task).
    runforrest's errors pickle by its own rule, which libraries that
    re-register how all exceptions pickle (tblib, with Dask) cannot break."""

    def reducer_override(self, obj):
        if isinstance(obj, RunforrestError):
            return _rebuild_error, (type(obj), obj.args, vars(obj))
        if (isinstance(obj, type) or callable(obj)) and \
                getattr(obj, '__module__', None) == _MAIN_MODULE:
            raise pickle.PicklingError('defined in __main__')
        return NotImplemented


def _rebuild_error(cls, args, details):
    error = cls(*args)
    error.__dict__.update(details)
    return error


class _Discard:
    """A file that forgets what it is given, for checking picklability."""

    def write(self, data):
        return len(data)

    def tell(self):
        return 0

    def seek(self, position):
        pass

    def truncate(self):
        pass


_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _dump(obj, file, tasks_aside=False):
    """Pickle obj into file: with the fast C pickler where it can, with dill
    where it must (lambdas, closures, objects of __main__). tasks_aside:
    leave the tasks in obj out, as references (to check what else it holds,
    without the graphs behind its tasks, which were checked already)."""
    start = file.tell()

    def pickler(cls, **options):
        made = cls(file, pickle.HIGHEST_PROTOCOL, **options)
        if tasks_aside:
            made.persistent_id = lambda value: id(value) if isinstance(value, Task) else None
        return made

    def undo(error):
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRORS:
            raise error  # the file's fault (a full disk, say), not the object's
        file.seek(start)
        file.truncate()

    try:
        pickler(_FastPickler).dump(obj)
        return
    except Exception as error:
        undo(error)
    import dill
    try:
        pickler(dill.Pickler, recurse=True).dump(obj)
    except Exception as error:
        undo(error)
        raise NotPicklable(f'{type(obj).__name__} cannot be pickled: {error}',
                           type_name=type(obj).__name__) from None


def _dumps(obj):
    import io
    buffer = io.BytesIO()
    _dump(obj, buffer)
    return buffer.getvalue()


_PLAIN_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})


_picklable_functions = None  # a WeakSet of the functions found picklable before


def _check_picklable(obj, describe):
    """Raise NotPicklable, with what describe() says obj is, if it is not picklable.

    A function is checked once: pickling one of a script with dill costs
    half a millisecond, and should what it reads turn unpicklable later,
    schedule() says so."""
    global _picklable_functions
    if type(obj) in _PLAIN_TYPES:
        return
    function = type(obj).__name__ == 'function'
    if function and _picklable_functions is not None and obj in _picklable_functions:
        return
    try:
        _dump(obj, _Discard(), tasks_aside=True)
    except NotPicklable as error:
        raise NotPicklable(
            f'cannot defer {describe()}: {error}. A task travels to its process as '
            f'a pickle; pass something picklable instead (a file name rather '
            f'than an open file, say), or create it inside the task',
            type_name=error.type_name) from None
    if function:
        if _picklable_functions is None:
            import weakref
            _picklable_functions = weakref.WeakSet()
        _picklable_functions.add(obj)


def _write_atomically(path, write, durable=True, temporary=None):
    """Write a file through a hidden temporary file, so that nobody ever sees
    half of it. durable: on disk before it appears. temporary: the path of
    the temporary file, if only one process ever writes path; a file there
    is reused (see `TaskList._use_spare`)."""
    if temporary is None:
        temporary = _temporary(path)
    try:
        # Overwritten, and cut to length after: truncating a reused file
        # first can cost more than the writing.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with open(fd, 'wb') as file:
            write(file)
            file.truncate()
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise


def _create(path, data):
    """Create the file path with data in it, whole or not at all, and never
    in place of an existing one (FileExistsError instead). Returns its
    status, as it is once created: of the very file written here, which no
    later os.stat of path can promise.

    The file is written nameless (O_TMPFILE) and then linked in: cheaper
    than a temporary name, which is created, linked and removed again. Where
    the filesystem or a missing /proc does not allow that, through a
    temporary name after all."""
    try:
        fd = os.open(os.path.dirname(path), os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644)
    except OSError:
        pass  # the same again below, where an error that is real recurs
    else:
        try:
            _write_all(fd, data)
            # A descriptor for src_dir_fd, though unused with an absolute path,
            # has os.link call linkat(), which follows the /proc link to the file.
            os.link(f'/proc/self/fd/{fd}', path, src_dir_fd=fd)
            return os.fstat(fd)  # after the link, which sets the change time
        except FileExistsError:
            raise
        except OSError:
            pass  # as above
        finally:
            os.close(fd)
    temporary = _temporary(path)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.link(temporary, path)
        finally:
            _unlink(temporary)
        return os.fstat(fd)  # after both links changed, each of which sets the change time
    finally:
        os.close(fd)


def _write_all(fd, data):
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


def _temporary(path):
    """A hidden name beside path, for this process to write path's content first."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f'.{base}.{os.getpid()}.tmp')


def _scratch(path):
    """Where the one process that writes the result file at path writes it first."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f'.{base}.tmp')


def _read_header(file, path):
    """The index of an open task file (see the format above), read from its end."""
    return _read_index(file, path)[0]


def _read_index(file, path):
    """The index of an open task file, and the offset where it begins."""
    fd = file.fileno()
    size = os.fstat(fd).st_size
    tail = os.pread(fd, min(size, 1 << 12), max(0, size - (1 << 12)))
    if len(tail) < _TRAILER_SIZE or not tail.endswith(_END):
        raise _not_whole(fd, path)
    index_size = int.from_bytes(tail[-_TRAILER_SIZE:-len(_END)], 'little')
    if index_size + _TRAILER_SIZE > len(tail):
        tail = os.pread(fd, index_size + _TRAILER_SIZE, max(0, size - index_size - _TRAILER_SIZE))
    try:
        header = pickle.loads(tail[-_TRAILER_SIZE - index_size:-_TRAILER_SIZE])
        if header['format'] == FORMAT:
            return header, size - _TRAILER_SIZE - index_size
    except Exception:
        pass
    raise TaskFileError(f'{path} is not a readable task file: its index is damaged',
                        path=path, reason='damaged index')


def _not_whole(fd, path):
    """The error for a file that lacks the end of a task file."""
    start = os.pread(fd, 1 << 12, 0)
    if start.startswith(_OPENING):
        return TaskFileError(f'{path} is truncated: it lacks the end of a task file',
                             path=path, reason='truncated')
    try:
        older = pickle.loads(start).get('format') == 1
    except Exception:
        older = False
    if older:
        return TaskFileError(f'{path} was written by runforrest 1.0, whose files this '
                             f'version cannot read; finish its task list with runforrest '
                             f'1.0 (pip install runforrest==1.0.0)',
                             path=path, reason='older format')
    return TaskFileError(f'{path} is not a runforrest task file', path=path,
                         reason='unknown format')


def _open_taskfile(path):
    try:
        return open(path, 'rb')
    except FileNotFoundError:
        raise TaskFileError(f'task file {path} does not exist',
                            path=path, reason='missing') from None


def _read_parts(file, path):
    """(header, record bytes) of an open task file."""
    header = _read_header(file, path)
    record = os.pread(file.fileno(), header['record_size'], header['record_offset'])
    if len(record) < header['record_size']:
        raise TaskFileError(f'{path} is truncated: its task needs '
                            f'{header["record_size"]} bytes, {len(record)} '
                            f'are there', path=path, reason='truncated')
    return header, record


def _load(data, path, what):
    try:
        return data() if callable(data) else pickle.loads(data)
    except Exception as error:
        raise TaskFileError(f'cannot load the {what} in {path}: '
                            f'{type(error).__name__}: {error}',
                            path=path, reason=f'{type(error).__name__}: {error}') from error


def _unpack(record, path):
    """The task, with its metadata, from a task file's record."""
    import io
    stream = io.BytesIO(record)
    task = _read_head(stream, path)
    task.__dict__.update(_read_call(stream, path, task))
    return task


def _read_head(stream, path):
    """The task of a record read from stream (see the file format), from its
    head: with its metadata and key, without its call."""
    head = _load(lambda: pickle.load(stream), path, 'task')
    if not (type(head) is tuple and len(head) == 3 and isinstance(head[0], type)
            and issubclass(head[0], Task)):
        raise TaskFileError(f'{path} holds no runforrest task', path=path,
                            reason='no task in the record')
    cls, key, metadata = head
    task = cls.__new__(cls)
    task.__dict__.update(_key=key, metadata=metadata)
    return task


def _read_call(stream, path, task):
    """The call of a task whose head was read from stream: the attributes of
    `_CALL`, with the graph behind them, from the record's second pickle."""
    root = _load(lambda: pickle.load(stream), path, 'task')
    if not isinstance(root, Task) or root._key != task._key:
        raise TaskFileError(f'{path} holds no runforrest task', path=path,
                            reason='no task in the record')
    return {name: root.__dict__[name] for name in _CALL}


def _load_call(path):
    """The call of the task in the task file at path, or, as its record is
    the same in every state, in the file of the same name in another
    state of its list, if it moved since (run, retry)."""
    directory, base = os.path.split(path)
    elsewhere = [os.path.join(os.path.dirname(directory), state, base) for state in STATES]
    for candidate in [path, *elsewhere]:
        try:
            with _open_taskfile(candidate) as file:
                header = _read_header(file, candidate)
                file.seek(header['record_offset'])
                return _read_call(file, candidate, _read_head(file, candidate))
        except TaskFileError as error:
            if error.reason != 'missing':
                raise
    raise TaskFileError(f'task file {path} does not exist, nor in another state of its list',
                        path=path, reason='missing')


def read_task(path, outcome=True):
    """The task stored in a task file of any state, with its metadata and
    taskname, and with returnvalue, errorvalue, traceback and runtime if it
    has run. With outcome=False, the outcome is read from the file only when
    it is first asked for. What a large task calls (its function and
    arguments, and the graph of tasks behind them: a hundred dependencies or
    more, or large arguments) is read from the file when first used. Pickle
    or dill load the same task from the file, without the checks.

    A task read from a task list's file is that list's task: scheduled in a
    graph on the list, it passes its stored returnvalue on (see
    `TaskList.schedule`).

    Raises `TaskFileError` if the file is missing or cannot be loaded.
    """
    where = os.path.abspath(path)  # for what is read later, whatever the directory then
    with _open_taskfile(path) as file:
        header, index_start = _read_index(file, path)
        ran = header['state'] != 'todo'
        if header.get('damaged'):
            task = Value(None)
        else:
            file.seek(header['record_offset'])
            task = _read_head(file, path)
            if header['record_size'] <= _EAGER_RECORD:
                task.__dict__.update(_read_call(file, path, task))
            else:
                task.__dict__['_load_call'] = lambda: _load_call(where)
        if outcome and ran:
            task.__dict__.update(_read_outcome(file, path, header, index_start))
    task.taskname = _name_of(path)
    directory = os.path.dirname(os.path.dirname(where))
    task.__dict__.update(_scheduled=((directory, task.taskname),),
                         _after=header.get('after', ''))
    if ran:
        task.runtime = header.get('runtime')
        if not outcome:
            task.__dict__.update({'errorvalue': None, 'traceback': None}
                                 if header['state'] == 'done' else {'returnvalue': None})
            task.__dict__['_load_outcome'] = lambda: _load_outcome(where)
    return task


def _load_outcome(path):
    with _open_taskfile(path) as file:
        return _read_outcome(file, path, *_read_index(file, path))


def _read_outcome(file, path, header, index_start):
    """returnvalue, errorvalue and traceback of an open result file, read
    from its outcome alone (see the file format); header is its index, which
    begins at index_start."""
    closing = _CLOSING_DAMAGED if header.get('damaged') else _CLOSING
    start, end = header['record_offset'] + header['record_size'], index_start - len(closing)
    outcome = None
    if start < end and os.pread(file.fileno(), len(closing), end) == closing:
        outcome = _load(lambda: pickle.load(_Stopped(file, start, end)), path, 'outcome')
    if not isinstance(outcome, dict):
        raise TaskFileError(f'{path} holds no outcome where its index says', path=path,
                            reason='no outcome in the file')
    return {name: outcome.get(name) for name in ('returnvalue', 'errorvalue', 'traceback')}


class _Stopped:
    """An open file from start to end, and then STOP: the outcome of a
    result file, which the closing took its STOP from, read as the pickle
    it was. readinto lets pickle read a large value straight into place."""

    def __init__(self, file, start, end):
        file.seek(start)
        self.file, self.left, self.stop = file, end - start, pickle.STOP

    def read(self, size):
        data = self.file.read(min(size, self.left))
        self.left -= len(data)
        if len(data) < size and not self.left:
            data, self.stop = data + self.stop, b''
        return data

    def readinto(self, buffer):
        view = memoryview(buffer)
        count = self.file.readinto(view[:self.left])
        self.left -= count
        if count < len(view) and not self.left and self.stop:
            view[count], self.stop = self.stop[0], b''
            count += 1
        return count

    def readline(self):
        line = self.file.readline(self.left)
        self.left -= len(line)
        if not line.endswith(b'\n') and not self.left:
            line, self.stop = line + self.stop, b''
        return line


def _name_of(path):
    return os.path.basename(path)[:-len('.pkl')]


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------

STATES = ('todo', 'done', 'fail')
# Besides todo/, done/ and fail/, a list holds output/ (what tasks printed,
# there only while a run goes on or some task printed something), and one
# hidden directory, .runforrest/, for the working state of its drivers, out
# of the way of code that walks the three: collect/ (results waiting to be
# filed, and spare files; see _settle), running/ (a mark per task in flight
# on a cluster or an executor, by which a later driver finds its job), the
# driver's lock, the scheduling mark (see `TaskList.schedule`), what a
# reuse list knows of its tasks (files, current and keys; see `_Ledger`), a
# saved session and SLURM's logs.
_WORKDIR = '.runforrest'
_WORKDIRS = ('collect', 'running')
_LOCKFILE = 'driver.lock'
_SCHEDULING = 'scheduling'
_KEYS = 'keys'  # see _Ledger._learn_keys
_KEYS_FORMAT = 1


def _sync(path):
    """Flush what was written to the filesystem that holds path to disk."""
    import ctypes
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _is_whole(path):
    """Whether a task file was written to its end (see _END)."""
    try:
        with open(path, 'rb') as file:
            file.seek(-len(_END), os.SEEK_END)
            return file.read() == _END
    except OSError:
        return False


def _header_of(path):
    """The index of the task file at path (see the file format)."""
    with open(path, 'rb') as file:
        return _read_header(file, path)


def _state_of(path):
    try:
        return _header_of(path)['state']
    except (OSError, TaskFileError):
        return None


def _schedule_order(name):
    return (_prefix_length(name), name)


def _prefix_length(name):
    """The length of the number that a task's name begins with, or 0."""
    prefix = name.partition('-')[0]
    return len(prefix) if prefix.isdigit() else 0


def _in_schedule_order(names):
    """The list names, sorted in place as by `_schedule_order`, with no key
    object made for each of thousands: by name, and then, stably, by the
    length of its number, a small int, of which Python keeps one each."""
    names.sort()
    names.sort(key=_prefix_length)
    return names


def _index_of(name):
    """The number a task's name begins with, which counts schedule() calls."""
    prefix = name.partition('-')[0]
    return int(prefix) if prefix.isdigit() else 0


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _now():
    return time.strftime('%Y-%m-%d %H:%M:%S')


def _finish_scheduling(directory, ledger, durable):
    """What ends a script's scheduling: its tasks made durable, what a reuse
    list learned saved, and the scheduling mark removed (see
    `TaskList.schedule`)."""
    if os.path.isdir(directory):
        if ledger is not None:
            ledger.save()
        if durable:
            _sync(directory)
    _unlink(os.path.join(directory, _WORKDIR, _SCHEDULING))


class _Ledger:
    """What a list opened with reuse=True knows of the work it holds: the
    key of each of its tasks (from the files' indexes, or from their record
    in .runforrest/keys; see `_learn_keys`), the digests of the files it
    hashed before (kept in .runforrest/files, so that an unchanged file
    costs a stat), and the names that the script schedules, in order (kept
    in .runforrest/current at the end of its scheduling: every other task of
    the list is stale)."""

    def __init__(self, directory):
        self.directory = directory
        self.latest = {}  # key: (state, name) of the newest task with that key
        self.found = {}  # name: (state, key, whether it has outputs), of the tasks there were
        self.files = self._load('files', {})
        earlier = self._load('current', {}).get('scheduled', [])
        self.slots = {}  # label: the names that the previous script scheduled with it
        for name in earlier:
            self.slots.setdefault(name.partition('-')[2], []).append(name)
        self.counts = {}  # label: how often this script scheduled it yet
        self.scheduled = []  # names, in the order this script schedules them
        self.keys = {}  # name: key, of those
        self.reused = set()
        self.entries = {}  # state: {name: (*signature, key, outputs)}, for .runforrest/keys
        self.written = []  # (name, entry) of the todo files this script wrote, not yet recorded
        self.changed = False  # whether entries differ from .runforrest/keys
        self._learn_keys()

    def _learn_keys(self):
        """Learn the key of every task from the index of its file, or, where
        .runforrest/keys records it for a file of the very signature (see
        `_file_signature`) under that name in that directory, from there:
        a stat instead of reading the file. A task file is never written in
        place, so a file that was replaced, moved between todo/, done/ and
        fail/, or put there by another machine sharing the list, has a new
        signature or an unrecorded name, and is read; a record that cannot be
        read counts for nothing. Files are recorded only once settled (see
        `_settled`)."""
        recorded, used = self._recorded_keys(), 0
        for state in STATES:
            folder = os.path.join(self.directory, state)
            before, entries = recorded.get(state, {}), self.entries.setdefault(state, {})
            for listed in _task_entries(folder):
                name = listed.name[:-4]
                try:
                    signature = _signature(listed.stat())
                except FileNotFoundError:
                    continue
                entry = before.get(name)
                if type(entry) is tuple and len(entry) == 6 and entry[:4] == signature:
                    entries[name] = entry
                    used += 1
                else:
                    entry = _key_entry(os.path.join(folder, name + '.pkl'))
                    if entry is None:
                        continue
                    if _settled(entry):
                        entries[name] = entry
                        self.changed = True
                self.found[name] = (state, *entry[4:])
                key = entry[4]
                if key and state != 'fail':  # failures are never reused
                    # The newest task with the key, and a done one before any in todo/.
                    other = self.latest.get(key, (None, ''))
                    if other[0] != state or _schedule_order(other[1]) < _schedule_order(name):
                        self.latest[key] = (state, name)
        if used < sum(map(len, recorded.values())):
            self.changed = True  # some recorded files are gone or changed

    def _recorded_keys(self):
        """{state: {name: entry}} from .runforrest/keys, each entry yet to be
        checked against its file (see `_learn_keys`); empty if unreadable."""
        try:
            with open(self._path(_KEYS), 'rb') as file:
                recorded = pickle.load(file)
            if recorded['format'] == _KEYS_FORMAT and \
                    all(type(entries) is dict for entries in recorded['states'].values()):
                return recorded['states']
        except Exception:  # whatever a damaged pickle raises
            pass
        return {}

    def wrote(self, name, key, outputs, status):
        """Learn of the todo file name that this script wrote, of status."""
        self.latest[key] = ('todo', name)
        self.written.append((name, (*_signature(status), key, bool(outputs))))

    def _index(self, name):
        state = self.found[name][0]
        return _header_of(os.path.join(self.directory, state, name + '.pkl'))

    def _path(self, what):
        return os.path.join(self.directory, _WORKDIR, what)

    def _load(self, what, default):
        try:
            with open(self._path(what), 'rb') as file:
                return pickle.load(file)
        except (OSError, pickle.UnpicklingError, EOFError):
            return default

    def save(self):
        """Write what the ledger learned, each file replaced at once, never
        seen half-written. None is flushed to disk by itself:
        `_finish_scheduling` syncs the file system next, and a ledger file
        that a crash loses or empties costs work (hashing and keying again),
        never a result."""
        current = {'scheduled': self.scheduled, 'reused': sorted(self.reused)}
        for what, value in (('files', self.files), ('current', current)):
            _write_atomically(self._path(what), lambda file: file.write(
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)), durable=False)
        unsettled = []
        for name, entry in self.written:
            if _settled(entry):
                self.entries['todo'][name] = entry
                self.changed = True
            else:
                unsettled.append((name, entry))
        self.written = unsettled
        if self.changed:
            keys = {'format': _KEYS_FORMAT, 'states': self.entries}
            _write_atomically(self._path(_KEYS), lambda file: pickle.dump(
                keys, file, pickle.HIGHEST_PROTOCOL), durable=False)
            self.changed = False

    def match(self, key):
        """(state, name) of a task with this key that need not run again,
        or None; a done task only while its outputs are as it left them."""
        state, name = self.latest.get(key, (None, None))
        if state == 'done' and self.found.get(name, (0, 0, False))[2] and \
                self._changed_output(self._index(name)):
            return None
        return (state, name) if state else None

    def _changed_output(self, index):
        for path, digest in (index.get('output_digests') or {}).items():
            try:
                if _file_digest(path, self.files) != digest:
                    return path
            except OSError:
                return path
        return None

    def add(self, name, key, reused):
        self.scheduled.append(name)
        self.keys[name] = key
        if reused:
            self.reused.add(name)

    def counterpart(self, task):
        """The task that the same call of the previous script scheduled: the
        one with the same function, as often scheduled before it; or None."""
        label = _label(task)
        ordinal = self.counts[label] = self.counts.get(label, 0) + 1
        earlier = self.slots.get(label, [])
        return earlier[ordinal - 1] if ordinal <= len(earlier) else None

    def why(self, counterpart, key, parts):
        """Why a task with a new key runs: what differs from its counterpart."""
        if counterpart not in self.found:
            return 'new'
        try:
            index = self._index(counterpart)
        except (OSError, TaskFileError):
            return 'new'  # gone since
        if index.get('key') == key:
            if index['state'] == 'fail':
                return 'failed before'
            return f'output {self._changed_output(index)} missing or changed'
        before = index.get('parts') or {}
        if before.get('code') != parts['code']:
            return f'code of {parts["function"]} changed'
        for which, (kind, detail, part) in parts['arguments'].items():
            if before.get('arguments', {}).get(which) == (kind, detail, part):
                continue
            if kind == 'dependency':
                return f'dependency {detail} ran again'
            return f'input file {detail} changed' if kind == 'file' else f'argument {which} changed'
        return 'its extra key values changed'


def _key_parts(task, cut, dependency_keys, files, extra):
    """The parts of a task's key that `_Ledger.why` compares: the code that
    its root calls, the key of each of its arguments, with the dependency
    each depends on, or the input file it is, and the extra values."""
    fun = task._fun
    if isinstance(fun, Task):
        code, function = _task_key(fun, dependency_keys, files=files), _label(task)
    else:
        code = _code_key(fun)
        function = f'{getattr(fun, "__module__", "?")}.{getattr(fun, "__qualname__", _label(task))}'
    arguments = {}
    for which, arg in [*enumerate(task._args), *sorted(task._kwargs.items())]:
        if not isinstance(arg, Task):
            arguments[str(which)] = ('value', None, _value_key(arg, files))
            continue
        inside = [cut[node._key] for node in _postorder(arg, lambda node: node._key in cut)
                  if node._key in cut]
        kind, detail = ('dependency', inside[0]) if inside else \
            ('file', os.fspath(arg._args[0])) if type(arg) is File else ('value', None)
        arguments[str(which)] = (kind, detail, _task_key(arg, dependency_keys, files=files))
    return {'function': function, 'code': code, 'arguments': arguments,
            'extra': _value_key(extra, files)}


def _key_entry(path):
    """(*signature, key, whether it has outputs) of the task file at path,
    as .runforrest/keys records it, or None if it cannot be read."""
    try:
        with open(path, 'rb') as file:
            # Taken first, so that a file written as it is read is read again next time.
            signature = _signature(os.fstat(file.fileno()))
            index = _read_header(file, path)
    except (OSError, TaskFileError):
        return None
    return (*signature, index.get('key'), bool(index.get('outputs')))


def _task_entries(folder):
    """The directory entries of the task files in folder, as os.scandir gives them."""
    try:
        with os.scandir(folder) as entries:
            return [entry for entry in entries
                    if entry.name.endswith('.pkl') and not entry.name.startswith('.')]
    except FileNotFoundError:
        return []


def _names_in(folder):
    return [entry.name[:-4] for entry in _task_entries(folder)]


class TaskList:
    """A directory of tasks, one file each, in todo/, done/ and fail/.

    >>> tasklist = TaskList('tasklist', exist_ok=True)
    >>> tasklist.schedule(defer(pow, 2, 10))
    '00000001-pow'
    >>> [task.returnvalue for task in tasklist.run(nprocesses=2)]
    [1024]

    directory: refused if it exists (and is not empty), unless `exist_ok`;
        then `pre_clean` empties it first. A directory that holds something other than a
        task list is never touched (`NotATaskList`).
    post_clean: remove the directory when this object is discarded (or at
        the end of a `with` block).
    logfile: write the tasks' output and a line per schedule, start,
        success and failure there, instead of to the terminal.
    reuse: keep the list as it is if it exists (else create it), and run
        again only what is new or changed: a task whose key (see
        `schedule`) matches a task that is done, or waiting in todo/, is
        not scheduled again, and `run` yields it with its stored result and
        `reused` True. Tasks of the list that the script does not schedule
        (any more) are stale: `run` leaves them alone, and
        `clean(stale=True)` removes them.
    noschedule_if_exist: if the directory already holds a task list, keep
        it as it is and make `schedule` do nothing, so that the same script
        resumes the remaining todo tasks after a crash. If the script that
        scheduled the list was killed while it was scheduling, `schedule`
        takes up where it stopped instead: each call stands for the task
        that the same call made before (the n-th call for the task whose
        name begins with n), and the calls past the last of them schedule
        anew. Nothing is ever removed.

    Use `TaskList.open(directory)` for an existing list, as it is.
    """

    # What is scheduled and filed reaches the disk before it counts; not in a
    # map's temporary list, which nobody takes up after a crash.
    _durable = True

    def __init__(self, directory, exist_ok=False, pre_clean=True,
                 post_clean=False, logfile=None, noschedule_if_exist=False, reuse=False):
        if reuse and noschedule_if_exist:
            raise ValueError('reuse=True runs again what changed, noschedule_if_exist=True '
                             'schedules nothing: choose one of them')
        self.directory = os.path.abspath(os.fspath(directory))
        self.logfile = logfile
        self._reusing, self._ledger = reuse, None  # see _Ledger
        self._noschedule = False
        self._replay = None  # index: name, for schedule() to take up (see noschedule_if_exist)
        self._calls = 0  # of schedule(), while it takes them up
        if os.path.exists(self.directory) and not self._is_empty_directory():
            if not self._is_tasklist():
                raise NotATaskList(
                    f'{self.directory} exists and is not a task list (it has '
                    f'no todo/ directory); runforrest leaves it alone: choose '
                    f'another directory, or empty this one yourself')
            if noschedule_if_exist:
                self._replay = self._scheduled_before_the_cut()
                self._noschedule = self._replay is None
            elif reuse:
                pass
            elif not exist_ok:
                raise TaskListExists(
                    f'task list {self.directory} exists already; pass '
                    f'exist_ok=True to reuse it (its tasks are removed unless '
                    f'pre_clean=False), or use TaskList.open() to add to it')
            elif pre_clean:
                self._remove()
        self._make_layout()
        self._next_index = self._highest_index() + 1
        self._scheduling = None  # see schedule()
        self._joining = None  # while a run of this object is iterated: its queue
        self._finalizer = None
        if post_clean:
            import shutil
            import weakref
            self._finalizer = weakref.finalize(
                self, shutil.rmtree, self.directory, ignore_errors=True)

    @classmethod
    def open(cls, directory):
        """An existing task list, with all its tasks."""
        path = os.path.abspath(os.fspath(directory))
        if not os.path.isdir(os.path.join(path, 'todo')):
            raise NotATaskList(f'{path} is not a task list (no todo/ inside); '
                               f'create one with TaskList({str(directory)!r})')
        return cls(path, exist_ok=True, pre_clean=False)

    def __repr__(self):
        return f'TaskList({self.directory!r})'

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        if exc_type is None:
            self.flush()
        elif self._scheduling is not None:  # cut short: keep the mark
            self._scheduling.detach()
            self._scheduling = None
            if self._durable:
                _sync(self.directory)
        if self._finalizer is not None:
            self._finalizer()

    # -- layout and names ----------------------------------------------------

    def _is_tasklist(self):
        return os.path.isdir(os.path.join(self.directory, 'todo'))

    def _is_empty_directory(self):
        return os.path.isdir(self.directory) and not os.listdir(self.directory)

    def _folder(self, state):
        """The directory of a state, or of output/ or a working directory."""
        if state in _WORKDIRS:
            return os.path.join(self.directory, _WORKDIR, state)
        return os.path.join(self.directory, state)

    def _make_layout(self):
        for state in STATES + _WORKDIRS:
            os.makedirs(self._folder(state), exist_ok=True)

    def _path(self, state, name):
        suffix = '.log' if state == 'output' else '' if state == 'running' else '.pkl'
        return os.path.join(self._folder(state), name + suffix)

    def _work_path(self, name):
        return os.path.join(self.directory, _WORKDIR, name)

    def _names(self, state):
        """The task names in one directory, in schedule order; loads nothing."""
        if state != 'running':
            return _in_schedule_order(_names_in(self._folder(state)))
        try:
            entries = os.listdir(self._folder(state))
        except FileNotFoundError:
            return []
        return _in_schedule_order([n for n in entries if not n.startswith('.')])

    def _highest_index(self):
        return max((_index_of(name) for state in STATES + ('collect',)
                    for name in _names_in(self._folder(state))), default=0)

    def _scheduled_before_the_cut(self):
        """If the script that scheduled this list was killed while it did,
        the names it scheduled, by their index (which counts its schedule()
        calls), for schedule() to take up again; else None."""
        if not os.path.exists(self._work_path(_SCHEDULING)):
            return None
        return {_index_of(name): name
                for state in STATES + ('collect',) for name in self._names(state)}

    # -- scheduling ----------------------------------------------------------

    def schedule(self, task, metadata=None, after=(), outputs=(), version=None):
        """Write task, with optional metadata, to todo/; return its name.

        Names sort in schedule order, and `run` starts tasks in that order.

        A task that was scheduled on this list and appears in a graph
        scheduled later (as an argument, indexed, as an attribute, inside
        lists, tuples and dicts) is a dependency: it runs first, in a
        process of its own, and the later task gets its stored returnvalue.
        `after` names more tasks (task objects or names) that must be done
        first, for dependencies that pass no data. If a dependency fails,
        the tasks that depend on it fail with `DependencyFailed`, unrun:

        >>> tasklist = TaskList('pipeline', exist_ok=True)
        >>> squares = [defer(pow, x, 2) for x in range(4)]
        >>> for square in squares:
        ...     _ = tasklist.schedule(square)
        >>> tasklist.schedule(defer(sum, squares))
        '00000005-sum'
        >>> [task.returnvalue for task in tasklist.run(nprocesses=2)][-1]
        14

        On a list opened with reuse=True, every task gets a key, which
        covers the code it calls (the syntax of the user's own functions,
        and of what they reach), its arguments' values, the contents of its
        input files (wrapped in `File`), its dependencies' keys, `version`
        (any value, for what the key cannot see: a string bumped by hand, a
        library's __version__, File objects of files read by name) and
        `outputs`. A task whose key matches a done or todo task is not
        scheduled again (see `TaskList`); the name of that task is returned.
        `outputs` names the files the task writes: they must exist when it
        ends (else it fails with `MissingOutput`), and it is reused only
        while they are unchanged. An argument that cannot be keyed raises
        `NotKeyable`.

        A task scheduled while a run of this object is being iterated (from
        the loop's body, say) joins that run. On a list opened with
        `noschedule_if_exist=True` that existed already, schedule does
        nothing and returns None (but see `TaskList` for a list whose
        scheduling was cut short).
        """
        if not isinstance(task, Task):
            raise TypeError(f'schedule() takes a task made by defer(), not '
                            f'{type(task).__name__} {_abbreviate(task)}; '
                            f'wrap the call: tasklist.schedule(defer(fun, *args))')
        if self._noschedule:
            return None
        if self._replay is not None:
            taken_up, name = self._take_up(task)
            if taken_up:
                return name
        cut, dependencies = self._dependencies(task, after)
        if isinstance(outputs, (str, os.PathLike)):
            outputs = [outputs]
        outputs = [os.path.abspath(os.fspath(path)) for path in outputs]
        key = None
        if self._reusing:
            key, dependency_keys, extra = self._key(task, cut, dependencies, outputs, version)
            counterpart = self._ledger.counterpart(task)
            match = self._ledger.match(key)
            if match is not None:
                return self._reuse_task(task, key, *match)
            parts = _key_parts(task, cut, dependency_keys, self._ledger.files, extra)
        index = {'state': 'todo', 'sys_path': list(sys.path), 'cwd': os.getcwd(),
                 'tasklist': self.directory}
        if dependencies:
            index['after'] = '\n'.join(dependencies)
        if outputs:
            index['outputs'] = outputs
        if key is not None:
            index.update(key=key, parts=parts, why=self._ledger.why(counterpart, key, parts))
        try:
            data = _todo_bytes([(type(task), task._key, metadata), _Graph(_flatten(task, cut))],
                               index)
        except NotPicklable as error:
            raise NotPicklable(f'cannot schedule {task!r} with metadata '
                               f'{_abbreviate(metadata)}: {error}',
                               type_name=error.type_name) from None
        label = _label(task)
        self._begin_scheduling()
        while True:
            name = f'{self._next_index:08d}-{label}'
            self._next_index += 1
            try:
                status = _create(self._path('todo', name), data)
                break
            except FileExistsError:  # another process schedules into this list too
                self._next_index = self._highest_index() + 1
            except FileNotFoundError:  # the list was cleaned away; start it anew
                self._make_layout()
        self._mark(task, name)
        if self._ledger is not None:
            self._ledger.add(name, key, reused=False)
            self._ledger.wrote(name, key, outputs, status)
        if self._joining is not None:
            self._joining.append(name)
        if self.logfile:
            with open(self.logfile, 'a') as log:
                log.write(f'{_now()} schedule {name}\n')
        return name

    def _key(self, task, cut, dependencies, outputs, version):
        """task's key on a list opened with reuse=True, with the keys of its
        dependencies in its graph and the extra values that it covers."""
        if self._ledger is None:
            self._make_layout()
            self._ledger = _Ledger(self.directory)
        keys = {name: self._key_of(name) for name in dependencies}
        dependency_keys = {node: keys[name] for node, name in cut.items()}
        in_graph = set(cut.values())
        after = [keys[name] for name in dependencies if name not in in_graph]
        extra = (version, after, outputs) if version is not None or after or outputs else _NO_EXTRA
        key = _task_key(task, dependency_keys, extra=extra, files=self._ledger.files)
        return key, dependency_keys, extra

    def _key_of(self, name):
        key = self._ledger.keys.get(name) or self._ledger.found.get(name, (0, None))[1]
        if key is None:
            raise NotKeyable(f'the task depends on {name}, which has no key, as it was '
                             f'scheduled on a list without reuse=True: schedule it again '
                             f'on this one', type_name='Task', where=name)
        return key

    def _reuse_task(self, task, key, state, name):
        """Stand for the task name, which has the same key, instead of
        scheduling task again."""
        self._mark(task, name)
        self._begin_scheduling()
        self._ledger.add(name, key, reused=state == 'done')
        if self._joining is not None:
            self._joining.append(name)
        return name

    def _begin_scheduling(self):
        """Mark the list as being scheduled, until this script's scheduling
        ends: at flush(), at the end of a `with` block, or when this object
        or the interpreter goes. A script killed before that leaves the
        mark, for noschedule_if_exist to take its scheduling up."""
        if self._scheduling is not None:
            return
        import weakref
        self._make_layout()  # the list may have been cleaned away
        open(self._work_path(_SCHEDULING), 'w').close()
        self._scheduling = weakref.finalize(self, _finish_scheduling, self.directory,
                                            self._ledger, self._durable)

    def _take_up(self, task):
        """Stand for the task that this call scheduled in the script that was
        cut short (see noschedule_if_exist), instead of scheduling it again:
        the task of the same index, or none, if it was removed since. Past
        the last of them, (False, None): schedule it now."""
        self._calls += 1
        if self._calls > max(self._replay, default=0):
            self._replay = None
            return False, None
        name = self._replay.get(self._calls)
        if name is None:
            return True, None
        if name.partition('-')[2] != _label(task):
            raise TaskListError(
                f'the scheduling of {self.directory} was cut short, and '
                f'noschedule_if_exist takes it up where it stopped, one task for '
                f'each schedule() call of the same script: but this call '
                f'schedules {_label(task)}, where the script scheduled {name}. '
                f'Run the script that scheduled the list, or start it anew with '
                f'TaskList({self.directory!r}, exist_ok=True)')
        self._mark(task, name)
        self._begin_scheduling()
        return True, name

    def _mark(self, task, name):
        """Note on task that it is the task name of this list, for the graphs
        that use it later (see `_dependencies`). A tuple in an attribute: a
        dict, in the __dict__ that asking for makes, cost as much again as
        the task itself, for each of thousands."""
        task._scheduled = (*(place for place in task._scheduled if place[0] != self.directory),
                           (self.directory, name))

    def _dependencies(self, task, after):
        """The tasks that task depends on: {key: name} of those in its graph
        (see `_flatten`), and the names of all of them, and of after's."""
        if type(after) in (tuple, list) and not after and not task._dependencies():
            return {}, []  # a call on plain values, as most are: no graph to walk
        cut, names = {}, []
        for node in _postorder(task, lambda node: node._scheduled):
            if node is task or not node._scheduled:
                continue
            places = dict(node._scheduled)
            if self.directory not in places:
                raise TaskListError(
                    f'{task!r} uses {node!r}, which was scheduled on another task '
                    f'list ({", ".join(places)}); a task can depend only on tasks '
                    f'of its own list: schedule that task on {self.directory} too')
            cut[node._key] = places[self.directory]
            names.append(places[self.directory])
        if isinstance(after, (Task, str)):
            after = [after]
        for other in after:
            if isinstance(other, Task):
                name = dict(other._scheduled).get(self.directory)
                if name is None:
                    raise TaskListError(
                        f'after= names {other!r}, which was never scheduled on '
                        f'{self.directory}; schedule it first')
            elif isinstance(other, str) and any(
                    os.path.exists(self._path(state, other)) for state in STATES + ('collect',)):
                name = other
            else:
                raise TaskListError(f'after= takes scheduled tasks or their names; '
                                    f'{other!r} is no task of {self.directory}')
            names.append(name)
        return cut, _in_schedule_order(list(dict.fromkeys(names)))

    def flush(self):
        """Make every scheduled task durable on disk, and mark the scheduling
        as complete (`run` does this first, and so does the script's end)."""
        if self._scheduling is not None:
            self._scheduling()
            self._scheduling = None

    # -- reading -------------------------------------------------------------

    def todo_tasks(self, skip_damaged=False):
        """The tasks waiting in todo/, in schedule order.

        A file that cannot be read raises `TaskFileError`, which names it;
        with skip_damaged=True it is skipped with a warning instead.
        """
        return self._tasks('todo', skip_damaged)

    def done_tasks(self, skip_damaged=False):
        """The tasks in done/, with their returnvalue (see `todo_tasks`)."""
        return self._tasks('done', skip_damaged)

    def fail_tasks(self, skip_damaged=False):
        """The tasks in fail/, with their errorvalue (see `todo_tasks`)."""
        return self._tasks('fail', skip_damaged)

    def _tasks(self, state, skip_damaged):
        for name in self._names(state):
            try:
                yield read_task(self._path(state, name))
            except TaskFileError as error:
                if error.reason == 'missing':
                    continue  # moved on by a running driver since listing
                if not skip_damaged:
                    raise
                import warnings
                warnings.warn(f'skipping damaged task file: {error}', stacklevel=3)

    def output(self, task):
        """What the task (or the task of that name) printed to stdout and
        stderr when it last ran: '' if nothing, None if it has not run.
        While it runs, output/NAME.log grows (`tail -f` works)."""
        name = task.taskname if isinstance(task, Task) else task
        try:
            with open(self._path('output', name), 'rb') as file:
                return file.read().decode(errors='replace')
        except FileNotFoundError:  # kept only if the task printed something
            finished = any(os.path.exists(self._path(state, name)) for state in ('done', 'fail'))
            return '' if finished else None

    def rows(self):
        """One dict per finished task, in schedule order: name, state,
        metadata, returnvalue, errorvalue, runtime, and dependencies (the
        names of the tasks it depended on)."""
        tasks = sorted(self._finished(), key=lambda task: _schedule_order(task.taskname))
        return [{'name': task.taskname,
                 'state': 'done' if task.errorvalue is None else 'fail',
                 'metadata': task.metadata, 'returnvalue': task.returnvalue,
                 'errorvalue': task.errorvalue, 'runtime': task.runtime,
                 'dependencies': list(_each_name(task.__dict__['_after']))}
                for task in tasks]

    def dataframe(self):
        """`rows()` as a pandas DataFrame, with dict metadata spread into
        columns of their own. Needs pandas."""
        try:
            import pandas
        except ImportError:
            raise ImportError('dataframe() needs pandas: pip install pandas '
                              '(or use rows(), which needs nothing)') from None
        records = []
        for row in self.rows():
            metadata = row.pop('metadata')
            if isinstance(metadata, dict):
                row.update(metadata)
            else:
                row['metadata'] = metadata
            records.append(row)
        return pandas.DataFrame(records)

    def _finished(self):
        yield from self.done_tasks()
        yield from self.fail_tasks()

    def _reused(self, name):
        """The done task name, which a run yields instead of running it
        again, or None if its file is gone since."""
        try:
            task = read_task(self._path('done', name), outcome=False)
        except TaskFileError:
            return None
        task.reused = True
        return task

    def _current(self, reused=False):
        """The names that the script of a reuse list schedules (with
        reused=True, those of them that were done before; see `_Ledger`),
        or None if no script ever scheduled it with reuse=True."""
        try:
            with open(self._work_path('current'), 'rb') as file:
                return set(pickle.load(file)['reused' if reused else 'scheduled'])
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError):
            return None

    def _dependents(self, name):
        """The tasks that depend on the task name, in schedule order."""
        dependents = []
        for state in STATES:
            for other in self._names(state):
                try:
                    if name in _each_name(_header_of(self._path(state, other)).get('after', '')):
                        dependents.append(other)
                except (OSError, TaskFileError):
                    continue
        return sorted(dependents, key=_schedule_order)

    # -- moving and cleaning -------------------------------------------------

    def retry(self, names=None, error_type=None):
        """Move failed tasks back to todo/: all of them, those named, or
        those whose error is of the type named (e.g. 'TaskTimeout'), and
        with each the tasks that failed with `DependencyFailed` because of
        it. Returns the names moved."""
        failed = {}  # name: the index of its file
        for name in self._names('fail'):
            try:
                failed[name] = _header_of(self._path('fail', name))
            except FileNotFoundError:
                continue  # moved on since listing
            except TaskFileError:
                failed[name] = {}
        for name in names or ():
            if name not in failed:
                raise TaskFileError(f'no failed task {name} in {self.directory}',
                                    path=self._path('fail', name), reason='missing')
        chosen = {name for name in (failed if names is None else names)
                  if error_type is None or failed[name].get('error_type') == error_type}
        blocked = {}  # name: the failed tasks that failed because of it
        for name, header in failed.items():
            if header.get('dependency'):
                blocked.setdefault(header['dependency'], []).append(name)
        unvisited = list(chosen)
        while unvisited:
            for name in blocked.get(unvisited.pop(), ()):
                if name not in chosen:
                    chosen.add(name)
                    unvisited.append(name)
        moved = sorted(chosen, key=_schedule_order)
        for name in moved:
            try:
                os.replace(self._path('fail', name), self._path('todo', name))
            except FileNotFoundError:
                raise TaskFileError(f'no failed task {name} in {self.directory}',
                                    path=self._path('fail', name), reason='missing') from None
        return moved

    def clean(self, clean_todo=True, clean_done=True, clean_fail=True, stale=False):
        """Remove the tasks of the chosen states (and their output). Removing
        all of them removes the directory; the list stays usable. With
        stale=True, remove only the stale tasks of a reuse list, those that
        its script no longer schedules (see `TaskList`), in every state."""
        with self._driver_lock():
            if stale:
                current = self._current() or set()
                for state in STATES:
                    for name in self._names(state):
                        if name not in current:
                            _unlink(self._path(state, name))
                            _unlink(self._path('output', name))
                return
            if clean_todo and clean_done and clean_fail:
                import shutil
                shutil.rmtree(self.directory, ignore_errors=True)
                return
            chosen = [state for state, yes in zip(STATES, (clean_todo, clean_done, clean_fail)) if yes]
            for state in chosen:
                for name in self._names(state):
                    _unlink(self._path(state, name))
                    _unlink(self._path('output', name))

    def _remove(self):
        """Remove every task, result and output, for pre_clean."""
        for state in STATES + _WORKDIRS + ('output',):
            directory = self._folder(state)
            if os.path.isdir(directory):
                for entry in os.listdir(directory):
                    _unlink(os.path.join(directory, entry))
        _unlink(self._work_path(_SCHEDULING))

    # -- the driver's part ---------------------------------------------------

    def _driver_lock(self):
        self._make_layout()
        return _DriverLock(self._work_path(_LOCKFILE), self.directory)

    def _driver(self):
        """Who runs this list now, as a dict (pid, host, started), or None."""
        return _DriverLock.holder(self._work_path(_LOCKFILE))

    def _tidy(self):
        """Make the list whole again after a driver that died: remove
        half-written files, drop results that a power cut caught before they
        reached the disk (their tasks run again), drop the todo files of
        results that did reach it, and return the results left in collect/."""
        for state in STATES + _WORKDIRS + ('output',):
            try:
                with os.scandir(self._folder(state)) as entries:
                    half_written = [entry.path for entry in entries
                                    if entry.name.startswith('.') and entry.name.endswith('.tmp')]
            except FileNotFoundError:
                continue
            for path in half_written:
                _unlink(path)
        for name in self._names('collect'):
            if not _is_whole(self._path('collect', name)):
                _unlink(self._path('collect', name))
        todo = set(_names_in(self._folder('todo')))
        for state in ('done', 'fail'):
            for name in todo.intersection(_names_in(self._folder(state))):
                # A result in todo/ was put back to run again (by retry(), or
                # by hand); a result filed since is newer, and means it did.
                put_back = self._path('todo', name)
                if _state_of(put_back) != 'todo' and os.stat(put_back).st_mtime_ns >= \
                        os.stat(self._path(state, name)).st_mtime_ns:
                    continue
                if _is_whole(self._path(state, name)):
                    _unlink(self._path('todo', name))
                else:
                    _unlink(self._path(state, name))
        return self._names('collect')

    def _file(self, name):
        """Move a result from collect/ to done/ or fail/; returns the new path
        and the header. Its todo file stays until `_settle`."""
        source = self._path('collect', name)
        try:
            with open(source, 'rb') as file:
                header = _read_header(file, source)
            state = 'done' if header['state'] == 'done' else 'fail'
        except TaskFileError:
            header, state = {'state': 'fail'}, 'fail'
        target = self._path(state, name)
        os.replace(source, target)
        _unlink(self._path('fail' if state == 'done' else 'done', name))
        _unlink(self._path('running', name))
        return target, header

    def _settle(self, names, spares=None):
        """Once filed results are on disk, remove their tasks from todo/.

        One sync for many results is the cheap way to make them durable;
        until it happens, a task stays in todo/, so that nothing is lost.
        With a deque of spares, the todo files are kept there for `_use_spare`:
        on some filesystems (ext4 without a journal, after many removals),
        creating a file costs a millisecond, and renaming one microseconds."""
        if names:
            if self._durable:
                _sync(self.directory)
            for name in names:
                todo = self._path('todo', name)
                if spares is None:
                    _unlink(todo)
                    continue
                spare = os.path.join(self._folder('collect'), f'.spare-{name}.tmp')
                try:
                    os.replace(todo, spare)
                    spares.append(spare)
                except FileNotFoundError:
                    pass

    def _use_spare(self, spares, name):
        """Put a spare file (see `_settle`) where the task's result is written first."""
        while spares:
            try:
                os.replace(spares.popleft(), _scratch(self._path('collect', name)))
                return
            except FileNotFoundError:
                continue

    def _discard(self, spares, names=()):
        """Remove the spares left, and what was put aside for these tasks' results."""
        for path in [*spares, *(_scratch(self._path('collect', name)) for name in names)]:
            _unlink(path)
        spares.clear()

    def run(self, nprocesses=None, print_errors=False, save_session=False,
            autokill=None, memory_limit=None, retries=0, progress=False,
            start_method='forkserver', preload=(), executor=None):
        """Run every todo task in a process of its own; see `Run`."""
        return Run(self, nprocesses=nprocesses, print_errors=print_errors,
                   save_session=save_session, autokill=autokill,
                   memory_limit=memory_limit, retries=retries, progress=progress,
                   start_method=start_method, preload=preload, executor=executor)


class _DriverLock:
    """An exclusive lock on a task list, held by the one driver that runs it.

    The kernel releases it when the driver dies, however it dies."""

    def __init__(self, path, directory):
        self.path = path
        self.directory = directory
        self.fd = None
        self.width = 0

    def __enter__(self):
        import fcntl
        import socket
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            holder = self.holder(self.path) or {}
            raise TaskListBusy(
                f'another driver (pid {holder.get("pid", "?")} on '
                f'{holder.get("host", "?")}, since {holder.get("started", "?")}) '
                f'is running {self.directory}; wait for it to finish, or stop '
                f'it, and run again') from None
        self.info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': _now()}
        try:
            os.ftruncate(self.fd, 0)
            self.publish()
        except BaseException:  # a full disk, say: the lock must not outlive the error
            os.close(self.fd)
            raise
        return self

    def publish(self, **fields):
        """Tell `status` about this run, in place: cheaper than a file per fact."""
        import json
        self.info.update(fields)
        data = json.dumps(self.info).encode()
        # Never shorter than before, so that no reader sees the tail of an
        # older text (JSON allows the padding).
        self.width = max(self.width, len(data))
        os.pwrite(self.fd, data.ljust(self.width), 0)

    def __exit__(self, *exc_info):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)

    @staticmethod
    def holder(path):
        import fcntl
        import json
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            try:
                return json.loads(os.read(fd, 4096) or b'{}')
            except ValueError:
                return {}
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------
# The task process
# ---------------------------------------------------------------------------

def execute(taskfile, resultfile, do_raise=False, do_print=False, sessionfile=None,
            durable=True, go=None):
    """Run the task in taskfile in this process, write its result file, and
    return whether it succeeded: what `python -m runforrest TASKFILE
    RESULTFILE` does.

    The task runs with the import path and working directory of the driver
    that scheduled it. do_print prints a failure's traceback to stderr;
    do_raise re-raises the task's exception, with its real traceback, after
    the result is written (for a debugger: python -m pdb -m runforrest ...).
    durable=False leaves flushing the result to disk to the caller. go, if
    given, is called once the task is read, its function imported and the
    results it takes that are done read, and returns when the task may run
    (see `_ForkServer.stage`); its runtime counts from then.
    """
    global _dependency_list
    resultfile = os.path.abspath(resultfile)
    sessionfile = sessionfile and os.path.abspath(sessionfile)  # before the chdir
    home = os.path.dirname(os.path.dirname(os.path.abspath(taskfile)))
    header, record, damaged, fields = {}, b'', False, {}
    task = raised = None
    started = time.monotonic()
    try:
        with _open_taskfile(taskfile) as file:
            try:
                header, record = _read_parts(file, taskfile)
            except TaskFileError:
                file.seek(0)
                record, damaged = file.read(), True  # kept as it is, for a human
                raise
        # The results it depends on: in the list its file lies in, or else
        # in the one that scheduled it.
        _dependency_list = home if os.path.isdir(os.path.join(home, 'done')) \
            else header.get('tasklist')
        _adopt(header)
        if sessionfile:
            import dill
            dill.load_module(sessionfile)
        try:
            task = _unpack(record, taskfile)
        except TaskFileError:
            damaged = True
            raise
    except BaseException as error:
        if isinstance(error, TaskFileError) and error.reason == 'missing':
            raise
        raised = error
    if go is not None:
        if raised is None and _dependency_list is not None:
            _read_results_ahead(task)
        go()
        started = time.monotonic()
    if raised is None:
        try:
            outcome = {'returnvalue': evaluate(task)}
            for path in header.get('outputs', ()):
                if not os.path.exists(path):
                    raise MissingOutput(f'the task did not write {path}, which '
                                        f'schedule(outputs=...) says it writes', path=path)
            if header.get('outputs'):
                fields['output_digests'] = {path: _file_digest(path)
                                            for path in header['outputs']}
        except BaseException as error:
            raised = error
    if raised is not None:
        outcome = {'errorvalue': raised, 'traceback': _format_traceback(raised)}
    runtime = time.monotonic() - started
    try:
        _write_result(resultfile, header, record, outcome, durable,
                      runtime=runtime, damaged=damaged, **fields)
    except OSError as failure:  # a full disk, say: a smaller result may still fit
        outcome = {'errorvalue': OSError(failure.errno, f'cannot write the result to '
                                         f'{resultfile}: {failure.strerror}'),
                   'traceback': None}
        _write_result(resultfile, header, record, outcome, durable,
                      runtime=runtime, damaged=damaged, **fields)
    error = outcome.get('errorvalue')
    if error is not None:
        if do_print:
            print(outcome['traceback'] or _summary(error) + '\n', file=sys.stderr, end='')
        if do_raise:
            raise error
    return error is None


def _format_traceback(error):
    """error's traceback, from the first frame that is not runforrest's own."""
    import traceback
    frames = error.__traceback__
    while frames is not None and frames.tb_next is not None and \
            frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next
    return ''.join(traceback.format_exception(type(error), error, frames))


def _adopt(header, chdir=True):
    """Take on the import path and working directory of the driver."""
    driver_path = header.get('sys_path', [])
    sys.path[:] = driver_path + [entry for entry in sys.path if entry not in driver_path]
    if chdir and os.path.isdir(header.get('cwd') or ''):
        os.chdir(header['cwd'])


def _adopt_import_path(*paths):
    """For the command line: import what the first readable of these task
    files needs, as the driver that scheduled it did."""
    for path in paths:
        try:
            with open(path, 'rb') as file:
                _adopt(_read_header(file, path), chdir=False)
            return
        except (OSError, TaskFileError):
            continue


def _write_result(path, todo_header, record, outcome, durable, runtime, **fields):
    """Write a result file: the todo file's record, unchanged, and the outcome.

    An outcome that cannot be pickled is replaced by an error that says so."""
    outcome = _transportable_error(outcome)

    def write(file):
        failure = None  # why the outcome could not be pickled
        for attempt in (outcome, None):
            if attempt is None:
                attempt = {'errorvalue': UnpicklableResult(
                    f'the task returned {_a(type(outcome["returnvalue"]))}, which '
                    f'cannot be pickled: {failure}; return something picklable, or '
                    f'write it to a file and return the file name',
                    type_name=type(outcome['returnvalue']).__name__)}
            error = attempt.get('errorvalue')
            index = {**todo_header, 'record_size': len(record),
                     'state': 'done' if error is None else 'fail', 'runtime': runtime,
                     'error_type': None if error is None else type(error).__name__,
                     'error': None if error is None else _summary(error), **fields}
            file.seek(0)
            file.write(_OPENING + len(record).to_bytes(8, 'little'))
            file.write(record)
            try:
                _dump({**attempt, 'runtime': runtime}, file)
            except NotPicklable as error:
                failure = error
                continue
            file.seek(-1, os.SEEK_CUR)  # over the outcome's own end: see the file format
            file.write(_CLOSING_DAMAGED if fields.get('damaged') else _CLOSING)
            file.write(_index_bytes(index))
            return

    _write_atomically(path, write, durable, temporary=None if durable else _scratch(path))


def _transportable_error(outcome):
    """outcome, with an exception that would not survive pickling replaced
    by an `UnpicklableException` that keeps its type name and message."""
    error = outcome.get('errorvalue')
    if error is None:
        return outcome
    try:
        pickle.loads(_dumps(error))
        return outcome
    except Exception:
        return {'errorvalue': UnpicklableException(
                    _summary(error), type_name=type(error).__name__, message=str(error)),
                'traceback': outcome.get('traceback')}


def _summary(error, width=500):
    text = f'{type(error).__name__}: {error}'
    return text if len(text) <= width else text[:width - 1] + '…'


def _a(kind):
    name = kind.__name__
    return f'{"an" if name[0] in "aeiouAEIOU" else "a"} {name}'


def _become_task_process(lifeline):
    """Set up a process that runs a task for a driver: line-buffered output
    (so that nothing printed is lost in a crash), and death with the driver."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    if lifeline is not None:
        import signal
        import threading

        def watch():
            # The driver never writes; the read ends when its end closes,
            # which happens however the driver dies.
            while True:
                try:
                    if not os.read(lifeline, 1):
                        break
                except OSError:
                    break
            os.killpg(os.getpgrp(), signal.SIGKILL)

        for attempt in range(200):
            try:
                threading.Thread(target=watch, daemon=True, name='runforrest-lifeline').start()
                break
            except RuntimeError:  # the process limit, which counts threads: wait for room
                if attempt == 199:
                    raise
                time.sleep(_START_RETRY)


# ---------------------------------------------------------------------------
# The supervisor: starting task processes, and policing them
# ---------------------------------------------------------------------------

# Numeric libraries start a thread per core in every process; with a process
# per task that multiplies into thousands. One each, unless the user says.
_THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS',
                     'VECLIB_MAXIMUM_THREADS', 'NUMEXPR_NUM_THREADS', 'BLIS_NUM_THREADS')
_MEMORY_POLL = 0.2  # seconds between measurements when a memory limit is set
_START_RETRY = 0.05  # seconds before another try when the system refuses a process


_LIFELINE = 'RUNFORREST_LIFELINE'  # the descriptor a spawned task process watches


def _task_environment():
    env = dict(os.environ)
    for name in _THREAD_VARIABLES:
        env.setdefault(name, '1')
    here = os.path.dirname(os.path.abspath(__file__))
    import site
    if here not in site.getsitepackages() + [site.getusersitepackages()]:
        env['PYTHONPATH'] = os.pathsep.join(filter(None, [here, env.get('PYTHONPATH')]))
    return env


def _kill_group(pgid):
    import signal
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _crash_error(returncode):
    """The error of a task process that ended without writing a result."""
    import signal
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f'signal {-returncode}'
        hint = {'SIGSEGV': 'a segmentation fault, usually in C code',
                'SIGKILL': "killed from outside, often by the kernel's out-of-memory killer",
                'SIGABRT': 'aborted, usually by a failed check in C code',
                'SIGBUS': 'a bus error, usually in C code',
                'SIGFPE': 'an arithmetic fault in C code'}.get(name)
        return TaskCrashed(f'the task process died from {name}'
                           f'{f" ({hint})" if hint else ""} before writing a result',
                           signal=name, exitcode=returncode)
    return TaskCrashed(f'the task process exited with code {returncode} without '
                       f'writing a result (os._exit(), or a crash of the interpreter)',
                       signal=None, exitcode=returncode)


def _record_failure(todo, result, error, runtime=None, **fields):
    """Write the result file of a task whose process died without one (with
    died=True), or that did not run."""
    try:
        with _open_taskfile(todo) as file:
            header, record = _read_parts(file, todo)
        damaged = False
    except TaskFileError:
        header, damaged = {}, True
        try:
            with open(todo, 'rb') as file:
                record = file.read()
        except FileNotFoundError:
            record = b''
    try:
        _write_result(result, header, record, {'errorvalue': error, 'traceback': None},
                      durable=False, runtime=runtime, damaged=damaged, **fields)
    except OSError as failure:
        raise OSError(failure.errno, f'cannot record how the task {todo} ended '
                      f'({_summary(error)}): {failure.strerror}. The task stays in '
                      f'todo/, and everything stored before is kept') from failure


def _group_memory(groups):
    """The resident memory, in bytes, of each of these process groups."""
    usage = dict.fromkeys(groups, 0)
    page = os.sysconf('SC_PAGE_SIZE')
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat', 'rb') as file:
                fields = file.read().rpartition(b')')[2].split()
        except OSError:
            continue  # ended meanwhile
        group = int(fields[2])
        if group in usage:
            usage[group] += int(fields[21]) * page
    return usage


class _OutputFiles:
    """The output/NAME.log files that task processes print to.

    Most tasks print nothing, and creating a file can cost a millisecond
    (on ext4 without a journal, after many removals) where renaming one
    costs microseconds: so an output file that stays empty is renamed aside
    when its task ends, as a spare, and renamed into place for a later task.
    Only a task that prints costs a new file. Spares are hidden .tmp files,
    which `TaskList._tidy` removes if their owner dies."""

    def __init__(self):
        self.spares = {}  # directory: [(descriptor, path)] of empty files
        self.count = 0

    def _spare_path(self, directory):
        self.count += 1
        return os.path.join(directory, f'.spare-{os.getpid()}-{self.count}.tmp')

    def open(self, path):
        """A descriptor of an empty file at path, which replaces any file there."""
        directory = os.path.dirname(path)
        if self.spares.get(directory):
            fd, spare = self.spares[directory].pop()
        else:
            spare = self._spare_path(directory)
            fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.replace(spare, path)
        return fd

    def release(self, fd, path):
        """Once nothing writes to it any more: keep the file if its task
        printed, else make it a spare, unless a new file took its place (the
        task's next attempt may start before this one's last process is gone)."""
        try:
            status = os.fstat(fd)
            if status.st_size == 0 and os.path.samestat(status, os.stat(path)):
                directory = os.path.dirname(path)
                spare = self._spare_path(directory)
                os.replace(path, spare)
                os.lseek(fd, 0, os.SEEK_SET)  # a task may have written, then truncated
                self.spares.setdefault(directory, []).append((fd, spare))
                return
        except OSError:
            pass  # renamed or removed by someone else: theirs now
        os.close(fd)

    def close(self):
        for spares in self.spares.values():
            for fd, spare in spares:
                os.close(fd)
                _unlink(spare)
        self.spares.clear()


class _Job:
    """One task process, from the supervisor's point of view."""

    def __init__(self, todo, result, output, autokill):
        self.todo, self.result, self.output = todo, result, output
        self.autokill = autokill
        self.started = self.deadline = None  # see `began`
        self.pid = None
        self.cause = None  # why runforrest killed it, if it did
        self.refusals = 0  # times the system had no process for it

    def began(self):
        """Its process has its task: its time counts from now, not from a
        wait for a process (the template's start, a process limit)."""
        self.started = time.monotonic()
        self.deadline = self.autokill and self.started + self.autokill


class _Spawner:
    """Starts each task as a fresh interpreter: python -m runforrest TODO RESULT."""

    def __init__(self, selector, env, sessionfile):
        self.selector = selector
        # Each task process watches the read end (see _become_task_process),
        # which reports the end of this process, however it comes.
        self.lifeline, self.lifeline_end = os.pipe()
        self.env = {**env, _LIFELINE: str(self.lifeline)}
        self.session = ['-s', sessionfile] if sessionfile else []
        self.outputs = _OutputFiles()
        self.processes = {}  # job: (Popen, output descriptor)

    def start(self, job):
        import subprocess
        output = self.outputs.open(job.output) if job.output else None  # None: ours
        try:
            process = subprocess.Popen(
                [sys.executable, '-m', 'runforrest', job.todo, job.result, *self.session],
                stdin=subprocess.DEVNULL, stdout=output,
                stderr=output and subprocess.STDOUT,
                env=self.env, process_group=0, pass_fds=(self.lifeline,))
        except BaseException:
            if output is not None:
                self.outputs.release(output, job.output)
            raise
        job.pid = process.pid
        pidfd = os.pidfd_open(process.pid)
        self.processes[job] = process, output
        self.selector.register(pidfd, 1, lambda: self._ended(job, pidfd))

    def stage(self, todo, result, output):
        pass  # an interpreter is started with its task, never ahead

    def _ended(self, job, pidfd):
        self.selector.unregister(pidfd)
        os.close(pidfd)
        # The exited leader still holds its id, so this kills its group and
        # nobody else's: the task's children do not outlive it.
        _kill_group(job.pid)
        process, output = self.processes.pop(job)
        returncode = process.wait()
        if output is not None:
            self.outputs.release(output, job.output)
        return [('ended', job, returncode)]

    def close(self):
        for job, (process, output) in self.processes.items():
            _kill_group(job.pid)
            process.wait()
            if output is not None:
                self.outputs.release(output, job.output)
        self.outputs.close()
        os.close(self.lifeline_end)
        os.close(self.lifeline)


class _ForkServer:
    """Starts each task as a fork of a template: a fresh interpreter, started
    once per run, that imports the modules to `preload` and then only forks.
    Its children are as fresh as a new interpreter, minus the start-up time.

    The template forks children ahead, as standbys that wait for a task
    each, and hands this driver a socket to each (SCM_RIGHTS). The driver
    sends a task, with its output file, straight to a standby, and the
    standby tells the driver itself, on the same socket, when its result is
    written: the template, which reports each child it reaps, stays off a
    task's way. A task process holds no socket but its own, and the driver
    believes a report there only once the result is written, so that a task
    that writes junk to its descriptors confuses nobody.
    The task that starts next is handed out early, staged (see `stage`).
    A byte on the request pipe asks the template for one more standby: one
    for each standby taken, and two for a task that found none, one of
    them ahead, so that the driver has heard of a standby before a slot
    frees. A task that finds none waits in `start` for one, so that it runs
    while the driver yields a result, however long the loop body takes."""

    def __init__(self, selector, env, sessionfile, preload):
        import json
        import socket
        import subprocess
        from collections import deque
        requests, self.requests = os.pipe()
        self.channel, channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        config = json.dumps({'sys_path': sys.path, 'preload': list(preload),
                             'sessionfile': sessionfile})
        # The template learns of the driver's end, however it comes, when the
        # request pipe closes; it then kills its children. Not -m runforrest,
        # which compiles the module twice where no bytecode is cached.
        self.process = subprocess.Popen(
            [sys.executable, '-c', 'import sys, runforrest; '
             'sys.exit(runforrest._serve_forks(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))',
             str(requests), str(channel.fileno()), config],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
            process_group=0, pass_fds=(requests, channel.fileno()))
        os.close(requests)
        channel.close()
        self.channel.setblocking(False)
        self.selector = selector
        self.outputs = _OutputFiles()
        self.standbys = deque()  # (pid, socket) of children waiting for a task
        self.jobs = {}  # pid: job, until its end is known
        self.files = {}  # pid: (output descriptor, path), until its group is gone
        self.backlog = []  # events received while `start` waited for a standby
        # A byte here has the selector deliver the backlog.
        self.pending, self.pending_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.reports = {}  # pid: the socket its task process reports its end on
        self.upcoming = None  # (todo, result, output) of the task that starts next
        self.staged = None  # (todo, pid, socket) of the standby that got a task early
        for fd in (self.channel, self.pending):
            selector.register(fd, 1, self._read_events)

    def stage(self, todo, result, output):
        """Hand out the task that starts next while the running ones finish,
        now or as soon as a standby is there: its standby reads its file,
        imports its function, reads the results it takes that are done
        already, runs none of it, and waits for `start` to say go. Reading
        and importing are most of what starting a task costs, and so they
        leave its way. Asked again for the task that is staged, it
        does nothing: if that standby has died meanwhile, the task starts on
        another in its turn rather than die again ahead of it. Asked for
        another task, it lets the staged one's standby go without it: that
        task may start later, unstaged, or never (it waited for a task that
        failed)."""
        if self.staged is not None and self.staged[0] != todo:
            self.staged[2].close()  # its standby leaves, and the template reaps it
            self.staged = None
        if self.staged is None:
            self.upcoming = todo, result, output
            self._stage()

    def _stage(self):
        if self.upcoming is None or self.staged is not None or not self.standbys:
            return
        pid, connection = self._hand_out(*self.upcoming, staged=True)
        if pid is not None:
            self.staged, self.upcoming = (self.upcoming[0], pid, connection), None

    def start(self, job):
        import select
        if self.upcoming is not None and self.upcoming[0] == job.todo:
            self.upcoming = None  # too late to stage it
        handed = self._go(job) or self._hand_out(job.todo, job.result, job.output, job=job)[0]
        if not handed:
            self._request(2)
        while not handed:
            select.select([self.channel], [], [])
            refused = self._receive()
            handed = self._hand_out(job.todo, job.result, job.output, job=job)[0]
            if refused and not handed:  # the process limit: the supervisor tries again
                self.backlog.append(('refused', job, refused))
                break
        if self.backlog:
            os.write(self.pending_end, b'.')

    def _request(self, count=1):
        try:
            os.write(self.requests, b'+' * count)
        except BrokenPipeError:
            self._died()

    def _go(self, job):
        """Start job on the standby it was staged on, if it was; False if not."""
        if self.staged is None or self.staged[0] != job.todo:
            return False
        _, pid, connection = self.staged
        self.staged = None
        try:
            connection.send(b'go')
        except OSError:  # it died while staged: the template reports it
            connection.close()
            return False
        self._track(job, pid, connection)
        return True

    def _hand_out(self, todo, result, output_path, staged=False, job=None):
        """Send a task to the first standby that is alive, and track it as
        job unless it is staged; (pid, socket) of that standby, or (None,
        None) if none is alive."""
        import json
        import socket
        while self.standbys:
            pid, connection = self.standbys.popleft()
            output = self.outputs.open(output_path)
            try:
                socket.send_fds(connection, [json.dumps([todo, result, staged]).encode()],
                                [output])
            except OSError:  # that standby died; the template reports it
                self.outputs.release(output, output_path)
                connection.close()
                continue
            finally:
                self._request()  # to replace it, alive or not; after the task is on its way
            self.files[pid] = output, output_path
            if job is not None:
                self._track(job, pid, connection)
            return pid, connection
        return None, None

    def _track(self, job, pid, connection):
        job.pid = pid
        self.jobs[pid] = job
        self.reports[pid] = connection
        self.selector.register(connection, 1, lambda: self._reported(pid, connection))

    def _reported(self, pid, connection):
        """The task process wrote to its socket. It says so when its result
        is written; anything else, or the socket's end, was the task's own
        doing, and its end comes from the template."""
        try:
            said = connection.recv(1 << 12)
        except OSError:
            said = b''
        job = self.jobs.get(pid)
        if job is not None and os.path.exists(job.result):
            del self.jobs[pid]
            self._forget_report(pid)
            return [('ended', job, 0)]
        if not said:
            self._forget_report(pid)
        return []

    def _forget_report(self, pid):
        connection = self.reports.pop(pid, None)
        if connection is not None:
            self.selector.unregister(connection)
            connection.close()

    def _died(self):
        raise RunforrestError('the forkserver template process died; run again, '
                              "or use start_method='spawn'")

    def _read_events(self):
        try:
            os.read(self.pending, 1 << 12)
        except BlockingIOError:
            pass
        self._receive()  # a refused standby was asked for ahead: no task waits for it
        self._stage()
        events, self.backlog = self.backlog, []
        return events

    def _receive(self):
        """Take in what the template said, into the backlog; return why it
        could not fork, if it could not."""
        import json
        import socket
        events, refused = self.backlog, None
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self.channel, 1 << 16, 1,
                                                     socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return refused
            if not message:  # only the template holds the other end
                self._died()
            event = json.loads(message)
            if 'standby' in event:
                self.standbys.append((event['standby'], socket.socket(fileno=fds[0])))
            elif 'reaped' in event:
                # Its group is gone. Unless its task process told its end
                # first (see `_reported`), this is how its end is known.
                pid = event['reaped']
                job = self.jobs.pop(pid, None)
                if job is not None:
                    events.append(('ended', job, event['returncode']))
                self._reaped(pid)
            elif 'refused' in event:
                refused = event['refused']
            else:
                raise RunforrestError(f'the forkserver template failed: {event["error"]}')

    def _reaped(self, pid):
        self._forget_report(pid)
        if self.staged is not None and self.staged[1] == pid:  # died before its go
            self.staged[2].close()
            self.staged = None
        if pid in self.files:
            self.outputs.release(*self.files.pop(pid))
            return
        for standby in self.standbys:  # one that died before its task came
            if standby[0] == pid:
                self.standbys.remove(standby)
                standby[1].close()
                return

    def close(self):
        os.close(self.requests)  # the template kills its children and leaves
        self.process.wait()
        for _, connection in self.standbys:
            connection.close()
        if self.staged is not None:
            self.staged[2].close()
        for pid in list(self.reports):
            self._forget_report(pid)
        for output, path in self.files.values():
            self.outputs.release(output, path)
        self.outputs.close()
        for fd in (self.channel, self.pending):
            self.selector.unregister(fd)
        self.channel.close()
        for fd in (self.pending, self.pending_end):
            os.close(fd)


def _serve_forks(requests, channel, config):
    """The forkserver template's entry point (see `_ForkServer`)."""
    import json
    return _Template(requests, channel, json.loads(config)).serve()


class _Template:
    """The forkserver's template process: it forks a standby child for each
    byte on the request pipe, and reaps its children, killing each one's
    process group and telling the driver. A child's task comes from the
    driver, not through here (see `_ForkServer`)."""

    def __init__(self, requests, channel, config):
        import socket
        self.requests, self.config = requests, config
        self.channel = socket.socket(fileno=channel)
        self.children = set()
        self.wakeup, self.wakeup_end = os.pipe()

    def _send(self, event, fd=None):
        import json
        import socket
        try:
            socket.send_fds(self.channel, [json.dumps(event).encode()],
                            [] if fd is None else [fd])
        except OSError:
            pass  # the driver is gone: its request pipe's end, read next, ends all

    def serve(self):
        import gc
        import selectors
        import signal
        sys.path[:] = self.config['sys_path']
        preload = [*self.config['preload'], *(['dill'] if self.config['sessionfile'] else [])]
        try:
            for module in preload:
                __import__(module)
        except BaseException as error:
            self._send({'error': f'cannot preload {module}: {type(error).__name__}: {error}'})
            return 1
        sys.stdout.flush()  # else what a preloaded module printed, every task prints
        sys.stderr.flush()
        _become_task_process(None)  # once for all children
        # What the template holds, its children share until they write to it;
        # a garbage collection in a child would touch, and so copy, all of it.
        gc.freeze()
        os.set_blocking(self.wakeup_end, False)
        signal.set_wakeup_fd(self.wakeup_end)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector = selectors.DefaultSelector()
        for fd in (self.requests, self.wakeup):
            self.selector.register(fd, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wakeup:
                    os.read(self.wakeup, 1 << 12)
                    self._reap()
                    continue
                requested = os.read(self.requests, 1 << 12)
                if not requested:  # the driver is done, or dead: so are the tasks
                    for pid in self.children:
                        _kill_group(pid)
                    return 0
                for _ in requested:
                    self._fork()

    def _fork(self):
        import socket
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as error:  # the process limit: the driver tries again
            mine.close()
            theirs.close()
            self._send({'refused': str(error)})
            return
        if pid == 0:
            inherited = [self.requests, self.wakeup, self.wakeup_end, self.selector.fileno(),
                         self.channel.detach(), mine.detach()]
            _forked_task(theirs, self.config['sessionfile'], inherited)
        theirs.close()
        try:
            os.setpgid(pid, 0)  # also done in the child: whoever is first
        except OSError:
            pass
        self.children.add(pid)
        self._send({'standby': pid}, mine.fileno())
        mine.close()

    def _reap(self):
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            # The task's children end with it, and nobody else: the leader's
            # id, unreaped, cannot be reused for another group.
            _kill_group(info.si_pid)
            _, status = os.waitpid(info.si_pid, 0)
            self.children.discard(info.si_pid)
            self._send({'reaped': info.si_pid,
                        'returncode': os.waitstatus_to_exitcode(status)})


def _forked_task(connection, sessionfile, inherited):
    """The life of a forked task process: wait for a task from the driver on
    connection, run it, and tell the driver there that it ended; never returns.

    It needs no lifeline of its own: its template kills it when the driver
    dies, and the driver kills it when the template dies."""
    import json
    import signal
    import socket
    code, started = 3, False
    try:
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in inherited:
            os.close(fd)
        message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 1)
        if not message:  # the driver is done: no task came
            os._exit(0)
        started = True
        todo, result, staged = json.loads(message)
        os.dup2(fds[0], 1)
        os.dup2(fds[0], 2)
        os.close(fds[0])
        if 'numpy.random' in sys.modules:  # Python's own random reseeds itself
            sys.modules['numpy.random'].seed()

        def go():
            if connection.recv(16) != b'go':  # the driver is done: the task never ran
                os._exit(0)

        code = 0 if execute(todo, result, sessionfile=sessionfile, durable=False,
                            go=go if staged else None) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass  # closed by the task
        if started:
            try:
                connection.send(b'ended')
            except OSError:
                pass  # the driver is gone, or the task closed the socket
        os._exit(code)


class _Supervisor:
    """Runs task processes and polices them: the one place that knows about
    autokill, the memory limit, and how a process that died without a
    result is recorded."""

    def __init__(self, start_method='spawn', preload=(), autokill=None,
                 memory_limit=None, sessionfile=None, abandon_unless=None, in_job=False):
        import selectors
        self.autokill, self.memory_limit = autokill, memory_limit
        self.abandon_unless, self.abandoned = abandon_unless, False
        self.in_job = in_job
        self.selector = selectors.DefaultSelector()
        env = _task_environment()
        if start_method == 'forkserver':
            self.launcher = _ForkServer(self.selector, env, sessionfile, preload)
        else:
            self.launcher = _Spawner(self.selector, env, sessionfile)
        self.jobs = {}
        self.refused = []  # jobs the system had no process for, yet
        self.retry_at = None

    def __len__(self):
        return len(self.jobs) + len(self.refused)

    def start(self, todo, result, output):
        self._launch(_Job(todo, result, output, self.autokill))

    def stage(self, todo, result, output):
        """Get the task that starts next ready to start, if the launcher can.
        Until it starts, it is nobody's job: no time limit, no memory limit."""
        if not self.refused:
            self.launcher.stage(todo, result, output)

    def _launch(self, job):
        try:
            self.launcher.start(job)
            job.began()
            self.jobs[job.result] = job
        except BlockingIOError:  # the process limit: try again when one ends
            self._refuse(job, 'no process available')

    def _refuse(self, job, reason):
        self.jobs.pop(job.result, None)
        job.refusals += 1
        if job.refusals > 200:
            raise RunforrestError(f'the system refused a process for {job.todo} '
                                  f'200 times ({reason}); is the process limit '
                                  f'(ulimit -u) exhausted?')
        self.refused.append(job)
        self.retry_at = time.monotonic() + _START_RETRY

    def wait(self):
        """Block until task processes end; return their result files, each of
        which holds a result or the record of how the process died."""
        while True:
            finished = []
            for key, _ in self.selector.select(self._timeout()):
                for event, job, detail in key.data():
                    if event == 'refused':
                        self._refuse(job, detail)
                    else:
                        finished.append(self._finish(job, detail))
            self._police()
            if self.refused and (finished or time.monotonic() >= self.retry_at):
                refused, self.refused = self.refused, []
                for job in refused:
                    self._launch(job)
            if finished:
                return finished

    def _timeout(self):
        now = time.monotonic()
        waits = [job.deadline - now for job in self.jobs.values()
                 if job.deadline and job.cause is None]
        if self.memory_limit:
            waits.append(_MEMORY_POLL)
        if self.refused:
            waits.append(self.retry_at - now)
        if self.abandon_unless:
            waits.append(_ABANDON_POLL)
        return max(0, min(waits)) if waits else None

    def _police(self):
        now = time.monotonic()
        watched = [job for job in self.jobs.values() if job.pid and job.cause is None]
        if self.abandon_unless and not _still_wanted(self.abandon_unless):
            self.abandoned = True
            for job in watched:
                _kill_group(job.pid)
            return
        for job in watched:
            if job.deadline and now >= job.deadline:
                job.cause = TaskTimeout(f'killed after {self.autokill:g} s, the autokill '
                                        f'limit, with its whole process group',
                                        seconds=self.autokill)
                _kill_group(job.pid)
        if self.memory_limit:
            usage = _group_memory(job.pid for job in watched if job.cause is None)
            for job in watched:
                if job.cause is None and usage.get(job.pid, 0) > self.memory_limit:
                    job.cause = TaskOutOfMemory(
                        f'killed for using {_format_bytes(usage[job.pid])} of memory, '
                        f'over the memory_limit of {_format_bytes(self.memory_limit)}',
                        limit=self.memory_limit, used=usage[job.pid])
                    _kill_group(job.pid)

    def _finish(self, job, returncode):
        del self.jobs[job.result]
        # In a cluster job, SIGTERM comes from the cluster, which stops the whole
        # job: its driver records that, with the cluster's state and reason.
        stopped = self.in_job and returncode == -15
        if not os.path.exists(job.result) and not self.abandoned and not stopped:
            _record_failure(job.todo, job.result, job.cause or _crash_error(returncode),
                            runtime=time.monotonic() - job.started, died=True)
        return job.result

    def close(self):
        """Kill every task process still running, and wait until they are gone."""
        for job in self.jobs.values():
            if job.pid:
                _kill_group(job.pid)
        self.launcher.close()
        self.jobs.clear()
        self.refused.clear()
        self.selector.close()


def _parse_bytes(value):
    """Bytes from an int or a string such as '512M' or '2G' (powers of 1024)."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip().upper().rstrip('B')
    scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}.get(text[-1:], 1)
    try:
        return int(float(text.rstrip('KMGT')) * scale)
    except ValueError:
        raise ValueError(f"memory_limit must be a number of bytes or a size such as "
                         f"'512M' or '2G', not {value!r}") from None


def _format_bytes(count):
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if count < 1024 or unit == 'GiB':
            return f'{count:.0f} {unit}' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1024


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

_START_METHODS = ('forkserver', 'spawn')
_SETTLE_INTERVAL = 0.1  # seconds between syncs that make finished results durable


class _Dependencies:
    """Which tasks of a run may start: those whose dependencies are done.

    A task whose dependencies are not all done yet waits, holding no
    process, and starts when the last of them is done. A task whose
    dependency failed, or is nowhere in the list, fails unrun: its result,
    a `DependencyFailed`, is written to collect/, and its name is put on
    `unrun`, for the driver to file and yield like any other; so the tasks
    that depend on it fail in turn."""

    def __init__(self, tasklist, unfinished, unrun):
        self.tasklist = tasklist
        # The names this run has yet to file, each the key of itself: a name
        # read from a dependent's index is kept as this one, not as a copy.
        self.unfinished = {name: name for name in unfinished}
        self.missing = {}  # waiting task: how many of its dependencies are not done yet
        # task: the first waiting task that depends on it, and in `more` the
        # others; most tasks have one dependent, and need no list of them.
        self.dependents, self.more = {}, {}
        self.unrun = unrun
        self.started = set()  # tasks that have started, until filed
        self.underway = {}  # waiting task: how many of its missing dependencies have started
        # Waiting tasks whose missing dependencies have all started, in the
        # order they became so (a dict, as an ordered set): see `soonest`.
        self.soon = {}

    def __len__(self):
        """How many tasks wait."""
        return len(self.missing)

    def add(self, name):
        """Take in a todo task of the run; return whether it may start now."""
        self.unfinished[name] = name
        try:
            after = _header_of(self.tasklist._path('todo', name)).get('after', '')
        except (OSError, TaskFileError):
            return True  # its process will say what is wrong with its file
        for other in _each_name(after):
            if other not in self.unfinished and not os.path.exists(self.tasklist._path('done', other)):
                self._fail(name, other)
                return False
        waiting = underway = 0
        for other in _each_name(after):
            unfinished = self.unfinished.get(other)
            if unfinished is not None:
                waiting += 1
                underway += unfinished in self.started
                if self.dependents.setdefault(unfinished, name) != name:
                    self.more.setdefault(unfinished, []).append(name)
        if not waiting:
            return True
        self.missing[name] = waiting
        if underway:
            self.underway[name] = underway
            if underway == waiting:
                self.soon[name] = None
        return False

    def _dependents_of(self, name):
        first = self.dependents.get(name)
        return () if first is None else (first, *self.more.get(name, ()))

    def start(self, name):
        """The task name starts (again, if it is retried)."""
        if name in self.started:
            return
        self.started.add(name)
        for dependent in self._dependents_of(name):
            if dependent in self.missing:
                underway = self.underway[dependent] = self.underway.get(dependent, 0) + 1
                if underway == self.missing[dependent]:
                    self.soon[dependent] = None

    def filed(self, name, done):
        """The task name was filed in done/ (or fail/): return the tasks that
        may start now."""
        self.unfinished.pop(name, None)
        started = name in self.started
        self.started.discard(name)
        ready = []
        for dependent in self._dependents_of(name):
            if dependent not in self.missing:
                continue  # failed already, for another dependency
            if not done:
                self._stop_waiting(dependent)
                self._fail(dependent, name)
                continue
            self.missing[dependent] -= 1
            if started:
                self.underway[dependent] -= 1
            if not self.missing[dependent]:
                self._stop_waiting(dependent)
                ready.append(dependent)
        self.dependents.pop(name, None)
        self.more.pop(name, None)
        return ready

    def _stop_waiting(self, name):
        del self.missing[name]
        self.underway.pop(name, None)
        self.soon.pop(name, None)

    def soonest(self):
        """A waiting task whose missing dependencies have all started, the
        first that became so, if any: it is likely to start next once no
        task is ready (in a chain, always the next link)."""
        return next(iter(self.soon), None)

    def stuck(self):
        """Fail the tasks that wait for something that this run will never
        file (a cycle, made by hand), so that the run ends."""
        for name in list(self.missing):
            self._stop_waiting(name)
            self._fail(name, None)
        self.dependents.clear()
        self.more.clear()

    def _fail(self, name, dependency):
        tasklist = self.tasklist
        if dependency is None:
            error = DependencyFailed('its dependencies wait for each other (a cycle), '
                                     'so it can never run', dependency=None,
                                     error_type=None, error=None)
        else:
            header = {}
            try:
                header = _header_of(tasklist._path('fail', dependency))
                why = f'failed: {header.get("error")}'
            except FileNotFoundError:
                why = ('is in none of todo/, done/ and fail/: its file was removed; '
                       'schedule it again')
            except TaskFileError as problem:
                why = f'failed, and its file cannot be read: {problem}'
            error = DependencyFailed(f'not run, because its dependency {dependency} {why}',
                                     dependency=dependency, error_type=header.get('error_type'),
                                     error=header.get('error'))
        _record_failure(tasklist._path('todo', name), tasklist._path('collect', name), error,
                        dependency=dependency)
        self.unrun.append(name)


class Run:
    """The tasks of one `TaskList.run`, yielded as they finish, done or failed.

    Each yielded task has `returnvalue` or `errorvalue` (see the error
    classes), `traceback`, `metadata`, `runtime` and `taskname`, and its
    file has moved to done/ or fail/, from which its outcome, and the call
    of a large task, are read when first used (see `read_task`). `len()` is
    how many tasks the run yields, counted from file names, so
    `tqdm(tasklist.run())` works.

    nprocesses: tasks running at once (default: the CPUs this process may use).
    print_errors: print the traceback of each failure as it happens.
    save_session: make the driver's __main__ globals available to tasks.
    autokill: SIGKILL the process group of a task that runs longer than
        this many seconds, from when its process gets it; it fails with
        `TaskTimeout`.
    memory_limit: bytes, or a size such as '2G': SIGKILL the process group
        of a task whose resident memory exceeds it; it fails with
        `TaskOutOfMemory`. Measured five times a second.
    retries: run a task that crashed or was killed again, up to this many
        more times, before it counts as failed.
    progress: show done, failed and running counts, rate and ETA.
    start_method: 'forkserver' (fork each task from a template process that
        started once, the default; the task that starts next, or else one
        that waits only for tasks that have started, reads its file, imports
        its function and reads the results it takes that are done, in its
        own process while the slots are busy) or 'spawn' (a fresh
        interpreter per task).
    preload: modules the forkserver template imports once, for all tasks.
    executor: run elsewhere: a `Slurm` object, or a concurrent.futures
        Executor such as `distributed.Client(...).get_executor()`.

    Leaving the loop early, an exception in its body, or Ctrl-C kill the
    tasks still running; they stay in todo/ for the next run. Only one
    driver may run a task list at a time (`TaskListBusy`).
    """

    def __init__(self, tasklist, nprocesses=None, print_errors=False,
                 save_session=False, autokill=None, memory_limit=None, retries=0,
                 progress=False, start_method='forkserver', preload=(), executor=None):
        if nprocesses is None:
            nprocesses = len(os.sched_getaffinity(0))
        if not isinstance(nprocesses, int) or nprocesses < 1:
            raise ValueError(f'nprocesses must be a whole number of at least 1, '
                             f'not {nprocesses!r}')
        if autokill is not None and not autokill > 0:
            raise ValueError(f'autokill must be a number of seconds above 0, not {autokill!r}')
        memory_limit = _parse_bytes(memory_limit)
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f'memory_limit must be above 0, not {memory_limit!r}')
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f'retries must be a whole number of at least 0, not {retries!r}')
        if start_method not in _START_METHODS:
            raise ValueError(f'start_method must be one of {", ".join(_START_METHODS)}, '
                             f'not {start_method!r}')
        if isinstance(preload, str):
            preload = [preload]
        if preload and (start_method != 'forkserver' or executor is not None):
            raise ValueError("preload works with the local start_method='forkserver' only")
        if executor is not None and not isinstance(executor, Slurm):
            from concurrent.futures import Executor
            if not isinstance(executor, Executor):
                raise TypeError(f'executor must be a Slurm object or a '
                                f'concurrent.futures.Executor, not {type(executor).__name__}')
        self.tasklist = tasklist
        self.nprocesses = nprocesses
        self.print_errors, self.save_session = print_errors, save_session
        self.autokill, self.memory_limit, self.retries = autokill, memory_limit, retries
        self.progress, self.start_method = progress, start_method
        self.preload, self.executor = list(preload), executor
        self._map_view = None  # see _Report

    def __len__(self):
        tasklist, ledger = self.tasklist, self.tasklist._ledger
        names = set(tasklist._names('todo')) | set(tasklist._names('collect'))
        if ledger is None:
            return len(names)
        return len(names & set(ledger.scheduled)) + len(ledger.reused)

    def __iter__(self):
        return self._drive()

    def _drive(self):
        import threading
        from collections import deque
        tasklist = self.tasklist
        tasklist._make_layout()
        with tasklist._driver_lock() as lock:
            # A forkserver starts while the list syncs, if there is work.
            backend = self._backend(eager=bool(tasklist._names('todo')))
            report, settling, filed = None, None, []
            spares, running = deque(), set()  # see TaskList._settle
            try:
                tasklist.flush()
                os.makedirs(tasklist._folder('output'), exist_ok=True)
                leftovers = tasklist._tidy()
                in_flight = backend.adopt(tasklist._names('running'))
                skip = set(leftovers) | in_flight
                # On a reuse list, what its script schedules; the rest is stale.
                ledger = tasklist._ledger
                current = None if ledger is None else set(ledger.scheduled)
                todo = [name for name in tasklist._names('todo')
                        if name not in skip and (current is None or name in current)]
                reused = deque(() if ledger is None else
                               (name for name in ledger.scheduled if name in ledger.reused))
                finished = deque(leftovers)  # to file and yield
                dependencies = _Dependencies(tasklist, [*todo, *skip], unrun=finished)
                pending = deque(name for name in todo if dependencies.add(name))
                joined = tasklist._joining = []
                report = _Report(tasklist, len(todo) + len(skip), len(in_flight),
                                 self.print_errors, self.progress, lock.publish,
                                 around=self._map_view)
                attempts = {}
                settled = time.monotonic()

                def fill(stage=True):
                    for name in joined:
                        if current is not None:
                            current.add(name)
                        if ledger is not None and name in ledger.reused:
                            reused.append(name)
                        elif name not in dependencies.unfinished:  # a todo task, unless reused
                            report.joined()
                            if dependencies.add(name):
                                pending.append(name)
                    joined.clear()
                    while pending and backend.has_room():
                        name = pending.popleft()
                        tasklist._use_spare(spares, name)
                        backend.start(name)
                        running.add(name)
                        dependencies.start(name)
                        report.started(name)
                    if stage and backend.stages:
                        # The task that starts next, or else one that waits
                        # only for tasks that have started.
                        upcoming = pending[0] if pending else dependencies.soonest()
                        if upcoming is not None:
                            backend.next(upcoming)
                    report.waiting(len(dependencies))

                fill()
                while True:
                    while reused:
                        task = tasklist._reused(reused.popleft())
                        if task is not None:
                            yield task
                        del task
                        fill()  # the loop's body may have scheduled more
                    while finished:
                        name = finished.popleft()
                        task, done = self._collect(name, report)
                        filed.append(name)
                        # What waited for it goes first, as it is nearer the end,
                        # and starts before the loop's body gets the task.
                        pending.extendleft(reversed(dependencies.filed(name, done)))
                        fill()
                        if current is not None and name not in current:
                            continue  # stale: filed, not yielded
                        yield task
                        del task  # hold one result at a time, however large
                    fill()  # the loop's body may have scheduled more
                    if reused:
                        continue
                    if not backend.busy():
                        if not len(dependencies):
                            break
                        dependencies.stuck()
                        continue
                    for name in backend.wait():
                        running.discard(name)
                        report.ended()
                        if self._retry(name, attempts):
                            pending.append(name)
                            report.retried(name)
                        else:
                            finished.append(name)
                    # First: reading and yielding a result must not keep a slot
                    # idle. Staging waits until the result is filed, so that
                    # the task just started has the processors to itself.
                    fill(stage=False)
                    if time.monotonic() - settled >= _SETTLE_INTERVAL and \
                            not (settling and settling.is_alive()):
                        # A sync takes a while: tasks go on starting meanwhile.
                        settling = threading.Thread(target=tasklist._settle,
                                                    args=(filed, spares))
                        try:
                            settling.start()
                        except RuntimeError:  # no room for a thread: the process limit
                            settling = None
                            tasklist._settle(filed, spares)
                        filed, settled = [], time.monotonic()
            finally:
                tasklist._joining = None
                backend.close()
                if settling:
                    settling.join()
                tasklist._settle(filed)
                tasklist._discard(spares, running)
                try:
                    os.rmdir(tasklist._folder('output'))  # kept if some task printed
                except OSError:
                    pass
                if report is not None:
                    report.close()

    def _backend(self, eager):
        sessionfile = None
        if self.save_session:
            import dill
            sessionfile = self.tasklist._work_path('session.pkl')
            dill.dump_module(sessionfile)
        if isinstance(self.executor, Slurm):
            return _SlurmBackend(self.tasklist, self.executor, self.nprocesses,
                                 self.autokill, self.memory_limit, sessionfile)
        if self.executor is not None:
            return _ExecutorBackend(self.tasklist, self.executor, self.nprocesses,
                                    self.autokill, self.memory_limit, sessionfile)
        return _LocalBackend(self.tasklist, self.nprocesses, lambda: _Supervisor(
            self.start_method, self.preload, self.autokill, self.memory_limit, sessionfile),
            eager)

    def _retry(self, name, attempts):
        if attempts.get(name, 0) >= self.retries:
            return False
        path = self.tasklist._path('collect', name)
        with open(path, 'rb') as file:
            if not _read_header(file, path).get('died'):
                return False
        os.unlink(path)
        attempts[name] = attempts.get(name, 0) + 1
        return True

    def _collect(self, name, report):
        """File a result, and return its task, with the outcome, and the call
        of a large task, read when first asked for (see read_task), and
        whether it is done."""
        path, header = self.tasklist._file(name)
        try:
            task = read_task(path, outcome=False)
        except TaskFileError as error:
            task = Value(None)
            task.taskname, task.errorvalue = name, error
            task.runtime = header.get('runtime')
        done = header['state'] == 'done'
        report.finished(task, done)
        return task, done


class _LocalBackend:
    """Runs tasks on this machine, through a `_Supervisor`, made by
    make_supervisor now if eager, else for the first task: a run with
    nothing to run (on a reuse list, say) starts no process."""

    stages = True  # see `next`

    def __init__(self, tasklist, nprocesses, make_supervisor, eager):
        self.tasklist, self.nprocesses = tasklist, nprocesses
        self.make_supervisor = make_supervisor
        self.supervisor = make_supervisor() if eager else None

    def adopt(self, marked):
        for name in marked:  # marks of a driver that died; its tasks died with it
            _unlink(self.tasklist._path('running', name))
        return set()

    def busy(self):
        return self.supervisor is not None and len(self.supervisor) > 0

    def has_room(self):
        return self.supervisor is None or len(self.supervisor) < self.nprocesses

    def start(self, name):
        if self.supervisor is None:
            self.supervisor = self.make_supervisor()
        self.supervisor.start(*self._paths(name))

    def next(self, name):
        """name starts next, once there is room: its process may get ready
        ahead (see `_ForkServer.stage`)."""
        if self.supervisor is not None:
            self.supervisor.stage(*self._paths(name))

    def _paths(self, name):
        return (self.tasklist._path('todo', name), self.tasklist._path('collect', name),
                self.tasklist._path('output', name))

    def wait(self):
        return [_name_of(path) for path in self.supervisor.wait()]

    def close(self):
        if self.supervisor is not None:
            self.supervisor.close()


def _mark_running(tasklist, name, where):
    with open(tasklist._path('running', name), 'w') as file:
        file.write(where)


class _Report:
    """Where a run tells what happens: a line per start, success and failure
    and each task's output, to the logfile if there is one, else the
    terminal; failures' tracebacks with print_errors; a progress view; and
    the count of running tasks, which `publish` passes on to `status`.
    around: the progress view of a map, which counts for itself; task output
    goes around it, as around this run's own."""

    def __init__(self, tasklist, total, running, print_errors, progress, publish, around=None):
        self.tasklist, self.print_errors, self.publish = tasklist, print_errors, publish
        self.log = open(tasklist.logfile, 'a', buffering=1) if tasklist.logfile else None
        self.view = _progress_view(total) if progress else None
        self.around = self.view or around
        self.done = self.failed = self.waits = 0
        self.running, self.published = running, None

    def _line(self, text):
        if self.log:
            self.log.write(f'{_now()} {text}\n')

    def _show(self):
        if self.running != self.published:  # a task's end and the next start cancel out
            self.publish(running=self.running)
            self.published = self.running
        if self.view:
            self.view.update(self.done, self.failed, self.running, self.waits)

    def joined(self):
        """One more task: it was scheduled while the run went on."""
        if self.view:
            self.view.total += 1

    def waiting(self, count):
        """How many tasks wait for their dependencies."""
        if count != self.waits:
            self.waits = count
            self._show()

    def started(self, name):
        self.running += 1
        self._line(f'start {name}')
        self._show()

    def ended(self):
        """A task's process ended; its result is yet to be filed (`finished`)."""
        self.running -= 1

    def retried(self, name):
        self._line(f'retry {name}: it crashed or was killed')

    def finished(self, task, ok):
        if ok:
            self.done += 1
            self._line(f'done {task.taskname} ({task.runtime or 0:.2f} s)')
        else:
            self.failed += 1
            self._line(f'fail {task.taskname} ({task.runtime or 0:.2f} s): '
                       f'{_summary(task.errorvalue)}')
        self._echo(self.tasklist._path('output', task.taskname))
        if not ok and self.print_errors:
            text = task.traceback or _summary(task.errorvalue) + '\n'
            self._write(f'task {task.taskname} failed:\n{text}', sys.stderr)
        self._show()

    def _echo(self, path):
        """Copy a task's output, piece by piece, so that no size is too big."""
        import codecs
        try:
            file = open(path, 'rb')
        except FileNotFoundError:
            return
        decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
        with file:
            while chunk := file.read(1 << 16):
                self._write(decoder.decode(chunk), sys.stdout)
            self._write(decoder.decode(b'', final=True), sys.stdout)

    def _write(self, text, stream):
        if not text:
            return
        if self.log:
            self.log.write(text)
        elif self.around:
            self.around.write(text, stream)
        else:
            stream.write(text)
            stream.flush()

    def close(self):
        if self.view:
            self.view.close()
        if self.log:
            self.log.close()


def _progress_view(total):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Bar(total, sys.stderr)
    return _TqdmView(tqdm(total=total, unit='task'))


class _TqdmView:
    def __init__(self, bar):
        self.bar = bar

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, total):
        self.bar.total = total

    def update(self, done, failed, running, waiting):
        self.bar.set_postfix_str(f'done {done}, failed {failed}, running {running}'
                                 + (f', waiting {waiting}' if waiting else ''), refresh=False)
        self.bar.update(done + failed - self.bar.n)
        self.bar.refresh()

    def write(self, text, stream):
        self.bar.write(text, file=stream, end='')

    def close(self):
        self.bar.close()


class _Bar:
    """A progress view without tqdm: a bar on a terminal, else a line at
    most once a second. A total of None is unknown (a map of a generator)."""

    def __init__(self, total, stream):
        self.total, self.stream = total, stream
        self.terminal = stream.isatty()
        self.began = self.shown = time.monotonic()
        self.text = ''

    def update(self, done, failed, running, waiting):
        now = time.monotonic()
        finished = done + failed
        rate = finished / max(now - self.began, 1e-9)
        known = self.total is not None
        eta = (self.total - finished) / rate if rate and known else float('inf')
        eta = time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 1e6 else '?'
        counts = (f'{finished}/{self.total if known else "?"} done {done}, failed {failed}, '
                  f'running {running}{f", waiting {waiting}" if waiting else ""}, '
                  f'{rate:.1f} tasks/s, ETA {eta}')
        if self.terminal:
            filled = int(20 * finished / self.total) if self.total else 20 * known
            self.text = f'[{"#" * filled}{"." * (20 - filled)}] {counts}'
            self.stream.write('\r' + self.text + '\x1b[K')
            self.stream.flush()
        elif now - self.shown >= 1 or finished == self.total:
            self.stream.write(counts + '\n')
            self.shown = now

    def write(self, text, stream):
        if self.terminal:
            self.stream.write('\r\x1b[K')
        stream.write(text)
        stream.flush()
        if self.terminal:
            self.stream.write(self.text)

    def close(self):
        if self.terminal:
            self.stream.write('\n')


# ---------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------
#
# pmap, call, background and pmap_rows run their calls through a task list
# of their own: in `directory`, kept afterwards, or in a temporary directory
# that goes when they end. Should their process die first (SIGTERM, say), its
# temporary list goes with the next map of any process: each holds a lock
# that the kernel releases when its process dies.

_MAP_PREFIX = 'runforrest-pmap-'
_LOOKAHEAD = 4  # items taken from the input ahead of the results, per process
_MAP_LOCK = 'lock'  # named so once locked: a lock file free to take is a dead map's


def pmap(fun, items, nprocesses=None, *, star=False, kwstar=False, args=(),
         kwargs=None, errors='raise', directory=None, threads=False, lookahead=None,
         progress=False, **run_options):
    """Like `map(fun, items)`, with each call in a process of its own.

    Yields the results in the order of items, each as soon as it and those
    before it are ready. fun may be a lambda or a closure.

    >>> list(pmap(lambda x: x * x, range(4), nprocesses=2))
    [0, 1, 4, 9]

    items may be endless: they are taken as results are yielded, at most
    `lookahead` (4 times nprocesses) ahead of them, so memory and disk stay
    bounded and the first results come at once.

    How an item becomes arguments (args and kwargs are fixed extras):
        star=False, kwstar=False: fun(item, *args, **kwargs)
        star=True:                fun(*item, *args, **kwargs)
        star=None:                fun(*args, **kwargs), the item unused
        kwstar=True:              item is (value, dict): fun(value, *args, **kwargs, **dict)
        star=True, kwstar=True:   item is (values, dict): fun(*values, *args, **kwargs, **dict)
        star=None, kwstar=True:   item is a dict: fun(*args, **kwargs, **item)

    errors='raise' raises the first failure (in input order), with the
    task's traceback as its cause; errors='return' yields the error in
    place of the result. Either way the error's `item_index` (and a note
    in its traceback) tells which item failed. The tasks live in a
    temporary task list, or in `directory`, which must not exist yet and
    is kept afterwards, with every task. progress=True shows a progress
    bar, counted against len(items) if items has a length.
    threads=True runs the calls on `nprocesses` threads of this process,
    for I/O: nothing is pickled, and nothing is isolated.
    run_options go to `TaskList.run`, e.g. autokill=60 or memory_limit='2G'.
    """
    _check_callable(fun, 'pmap')
    if star not in (False, True, None) or kwstar not in (False, True):
        raise ValueError(f'star must be False, True or None and kwstar False or True, '
                         f'not star={star!r}, kwstar={kwstar!r}')
    args, kwargs = tuple(args), dict(kwargs or {})

    def job(index, item):
        values, keywords = _item_arguments(index, item, star, kwstar)
        values, keywords = (*values, *args), {**kwargs, **keywords}
        if threads:
            import functools
            return functools.partial(fun, *values, **keywords)
        return defer(fun, *values, **keywords)

    return _ordered(_jobs(items, job, 'pmap'), lambda index: f'pmap item {index}',
                    nprocesses, errors, directory, threads, lookahead, progress, run_options)


def _item_arguments(index, item, star, kwstar):
    """The positional values and keywords that item stands for (see `pmap`)."""
    if kwstar:
        if star is None:
            keywords = item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            item, keywords = item
        else:
            raise TypeError(f'with kwstar=True, each item is a pair (value, keywords), '
                            f'but item {index} is {_a(type(item))} {_abbreviate(item)}')
        from collections.abc import Mapping
        if not isinstance(keywords, Mapping):
            raise TypeError(f'with kwstar=True, item {index} must supply a dict of '
                            f'keywords, not {_a(type(keywords))} {_abbreviate(keywords)}')
    else:
        keywords = {}
    if star is None:
        return (), keywords
    if not star:
        return (item,), keywords
    try:
        return tuple(item), keywords
    except TypeError:
        raise TypeError(f'with star=True, each item is unpacked into arguments, but '
                        f'item {index} is {_a(type(item))} {_abbreviate(item)}, which '
                        f'is not iterable; pass star=False to give each item as one '
                        f'argument') from None


def proc(fun, *args, **kwargs):
    """The call `fun(*args, **kwargs)`, to be made by `call` or `background`
    in a process of its own. It is a task, as `defer` makes it.

    >>> r1, r2 = call([proc(pow, 2, 10), proc(divmod, 7, 2)])
    >>> r1, r2
    (1024, (3, 1))
    """
    _check_callable(fun, 'proc')
    return defer(fun, *args, **kwargs)


def call(procs, nprocesses=None, *, errors='raise', directory=None, threads=False,
         lookahead=None, progress=False, **run_options):
    """Make the calls of a list of `proc`s at once, each in a process of its
    own, and yield their results in the order given, each as soon as it and
    those before it are ready. Errors, directory, threads, lookahead,
    progress and run options are as in `pmap`; an error's `item_index` is
    the position of its proc."""
    def job(index, spec):
        if not isinstance(spec, Task):
            raise TypeError(f'call() takes procs, but item {index} is '
                            f'{_a(type(spec))} {_abbreviate(spec)}; make each call '
                            f'with proc(fun, *args, **kwargs)')
        if threads:
            import functools
            return functools.partial(evaluate, spec)
        return spec

    return _ordered(_jobs(procs, job, 'call'), lambda index: f'call item {index}',
                    nprocesses, errors, directory, threads, lookahead, progress, run_options)


def _check_callable(fun, name):
    if not callable(fun):
        raise TypeError(f'{name}() calls its first argument, but {_a(type(fun))} '
                        f'{_abbreviate(fun)} is not callable; pass a function, as in '
                        f'{name}(abs, ...)')


def _jobs(items, job, name):
    """The jobs that items stand for, made as items are taken by a `_Window`,
    and how many there are, if items has a length."""
    try:
        total = len(items)
    except TypeError:
        total = None
    try:
        items = iter(items)
    except TypeError:
        raise TypeError(f'{name}() takes an iterable of items, not {_a(type(items))} '
                        f'{_abbreviate(items)}') from None

    def make():
        for index, item in enumerate(items):
            try:
                yield job(index, item)
            except NotPicklable as error:
                error.add_note(f'(in {name} item {index})')
                raise

    return make(), total


def _ordered(jobs, describe, nprocesses, errors, directory, threads, lookahead,
             progress, run_options):
    """The generator that pmap and call return: the outcomes of jobs, in order.

    Bad options are refused here, at the call, not at the first result."""
    if errors not in ('raise', 'return'):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    if threads and run_options:
        raise ValueError(f'threads=True runs the calls on threads of this process, '
                         f'which cannot be killed or limited: '
                         f'{", ".join(sorted(run_options))} need processes (threads=False)')
    nprocesses = Run(None, nprocesses, **run_options).nprocesses  # checks the options
    if lookahead is None:
        lookahead = _LOOKAHEAD * nprocesses
    if not isinstance(lookahead, int) or lookahead < 1:
        raise ValueError(f'lookahead must be a whole number of at least 1, not {lookahead!r}')
    if directory is not None:
        directory = _new_directory(directory)
    return _results(jobs, describe, nprocesses, errors, directory, threads, lookahead,
                    progress, run_options)


def _results(jobs, describe, nprocesses, errors, directory, threads, lookahead,
             progress, run_options):
    jobs, total = jobs
    window = _Window(jobs, lookahead, nprocesses, _progress_view(total) if progress else None)
    place = None if threads else _MapDirectory(directory)
    outcomes = _on_threads(window, nprocesses) if threads else \
        _in_processes(window, place, nprocesses, run_options)
    try:
        for index, ok, value, traceback in outcomes:
            if ok:
                yield value
                continue
            try:
                value.item_index = index
            except AttributeError:  # an exception with __slots__
                pass
            value.add_note(f'(raised by {describe(index)})')
            if errors == 'return':
                yield value
            else:
                if traceback:
                    value.__cause__ = _RemoteTraceback(traceback)
                raise value
    finally:
        outcomes.close()  # now, not when garbage collected: it kills what runs
        window.close()
        if place is not None:
            place.close()


class _Window:
    """The items of a map between its input and its results: at most `size`
    taken from the input and not yet handed out; and the progress view."""

    def __init__(self, jobs, size, nworkers, view):
        self.jobs, self.size, self.nworkers, self.view = jobs, size, nworkers, view
        self.taken = self.handed = self.failed = 0

    def fill(self, submit):
        """Take items while there is room, and submit(index, job) each."""
        while self.taken - self.handed < self.size:
            try:
                job = next(self.jobs)
            except StopIteration:
                return
            submit(self.taken, job)
            self.taken += 1

    def hand_out(self, ok):
        self.handed += 1
        self.failed += not ok
        if self.view:
            self.view.update(self.handed - self.failed, self.failed,
                             min(self.nworkers, self.taken - self.handed), 0)

    def close(self):
        if self.view:
            self.view.close()


def _in_processes(window, place, nprocesses, run_options):
    """(index, ok, value, traceback) per item, in order, from a task list:
    items join its run as results are handed out."""
    from collections import deque
    tasklist = TaskList(place.tasklist)
    tasklist._durable = place.root is None
    index_of = {}  # by task name, not metadata: a damaged result has none
    run = None

    def submit(index, job):
        index_of[tasklist.schedule(job, metadata=index)] = index

    try:
        window.fill(submit)
        run = tasklist.run(nprocesses, **run_options)
        run._map_view = window.view
        run = iter(run)
        ready, in_order = {}, deque()
        for task in run:
            ready[index_of.pop(task.taskname)] = task
            del task  # hold no result that was handed out
            while window.handed in ready:
                in_order.append((window.handed, ready.pop(window.handed)))
                window.hand_out(in_order[-1][1].errorvalue is None)
            window.fill(submit)
            while in_order:
                index, task = in_order.popleft()
                outcome = (index, True, task.returnvalue, None) if task.errorvalue is None \
                    else (index, False, task.errorvalue, task.traceback)
                place.forget(tasklist, task)  # its outcome is read: see Task.returnvalue
                del task
                yield outcome
                del outcome
        if index_of:
            raise RunforrestError(f'the run ended without the results of items '
                                  f'{sorted(index_of.values())}; were their task '
                                  f'files removed from {place.tasklist} meanwhile?')
    finally:
        if run is not None:
            run.close()


def _on_threads(window, nthreads):
    """(index, ok, value, None) per item, in order, from a pool of threads."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(nthreads, thread_name_prefix='runforrest-pmap')
    futures = deque()

    def submit(index, job):
        futures.append((index, pool.submit(job)))

    try:
        window.fill(submit)
        while futures:
            index, future = futures.popleft()
            error = future.exception()
            window.hand_out(error is None)
            window.fill(submit)
            yield (index, True, future.result(), None) if error is None else \
                (index, False, error, None)
            del future, error
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a thread cannot be killed


def _new_directory(directory):
    path = os.path.abspath(os.fspath(directory))
    if os.path.exists(path) and not (os.path.isdir(path) and not os.listdir(path)):
        raise TaskListExists(f'{path} exists already; a map keeps its tasks in a new '
                             f'directory: name one that does not exist, or remove this one')
    return path


class _MapDirectory:
    """Where a map keeps its task list: `directory` (see `_new_directory`),
    which is kept, or a temporary directory, removed by `close`."""

    def __init__(self, directory=None):
        self.root = self.lock = None
        if directory is not None:
            self.tasklist = directory
            return
        import fcntl
        import tempfile
        _remove_orphans(tempfile.gettempdir())
        self.root = tempfile.mkdtemp(prefix=_MAP_PREFIX)
        self.tasklist = os.path.join(self.root, 'tasks')
        # Locked before it gets its name, so that nobody takes it for an orphan's.
        aside = os.path.join(self.root, f'.{_MAP_LOCK}.tmp')
        self.lock = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        os.rename(aside, os.path.join(self.root, _MAP_LOCK))

    def forget(self, tasklist, task):
        """Remove a finished task's files, unless the directory is kept."""
        if self.root is not None:
            for state in ('done', 'fail', 'output'):
                _unlink(tasklist._path(state, task.taskname))

    def close(self):
        if self.root is not None:
            import shutil
            shutil.rmtree(self.root, ignore_errors=True)
            os.close(self.lock)
            self.root = None


def _remove_orphans(directory):
    """Remove the temporary task lists of maps whose process died."""
    import fcntl
    import shutil
    try:
        entries = [entry for entry in os.listdir(directory) if entry.startswith(_MAP_PREFIX)]
    except OSError:
        return
    for entry in entries:
        root = os.path.join(directory, entry)
        try:
            fd = os.open(os.path.join(root, _MAP_LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # not a map's, or not one of this version
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its map is alive
        else:
            shutil.rmtree(root, ignore_errors=True)
        finally:
            os.close(fd)


class _RemoteTraceback(Exception):
    """The traceback of an exception, as it was raised in the task process."""

    def __str__(self):
        return '\n' + self.args[0]


def background(fun, /, *args, **kwargs):
    """Start fun(*args, **kwargs) now, in a process of its own, and return
    a `concurrent.futures.Future` of its result.

    >>> future = background(pow, 2, 10)
    >>> future.result()
    1024

    `result(timeout)` (or `join(timeout)`, as in parmapper) waits for the
    value, or raises the call's error with its traceback as the cause;
    `cancel()` kills the call's whole process group. To give run options
    (autokill, memory_limit, start_method, ...), pass the call as a `proc`:
    then every keyword is a run option, and none can clash with fun's own:
    background(proc(fun, *args, **kwargs), autokill=60).
    """
    if isinstance(fun, Task):
        if args:
            raise TypeError('background(proc(...), **run_options) takes the '
                            'arguments of the call inside proc()')
        task, run_options = fun, kwargs
    else:
        _check_callable(fun, 'background')
        task, run_options = defer(fun, *args, **kwargs), {}
    if 'nprocesses' in run_options:
        raise TypeError('a background call runs in one process: '
                        'background() takes no nprocesses')
    Run(None, **run_options)  # checks the options now, in the caller's thread
    return _background_future()(task, run_options)


def _background_task(control, call):
    """Runs in the task process of `background`: tell cancel() which
    process group to kill, then make the call, unless cancel() came first.
    The call travels as a pickle, so that nothing of it runs before."""
    import signal
    group = os.path.join(control, 'group')
    with open(group + '.tmp', 'w') as file:
        file.write(str(os.getpgrp()))
    os.replace(group + '.tmp', group)
    if os.path.exists(os.path.join(control, 'cancelled')):
        os.killpg(os.getpgrp(), signal.SIGKILL)
    return evaluate(pickle.loads(call))


def _background_future():
    """The class of `background`'s futures, made at its first use, since
    importing concurrent.futures would cost every task process 11 ms."""
    global _Background
    if _Background is not None:
        return _Background
    import threading
    from concurrent.futures import Future, InvalidStateError

    class _Background(Future):
        """The future of a `background` call, run by a driver thread of its own."""

        def __init__(self, task, run_options):
            super().__init__()
            self._place = _MapDirectory()
            self._thread = threading.Thread(target=self._drive, args=(task, run_options),
                                            name='runforrest-background')
            self._thread.start()

        def _drive(self, task, run_options):
            error = value = None
            try:
                tasklist = TaskList(self._place.tasklist)
                tasklist.schedule(defer(_background_task, self._place.root, _dumps(task)))
                for finished in tasklist.run(1, **run_options):
                    value, error = finished.returnvalue, finished.errorvalue
                    if error is not None and finished.traceback:
                        error.__cause__ = _RemoteTraceback(finished.traceback)
            except BaseException as failure:  # of the driver: a full disk, say
                error = failure
            finally:
                self._place.close()
            try:
                if error is None:
                    self.set_result(value)
                else:
                    self.set_exception(error)
            except InvalidStateError:  # cancelled meanwhile
                pass

        def running(self):
            return not self.done()

        def cancel(self):
            """Kill the call's process group and wait until the call has
            ended; False if it had finished already."""
            if self.done():
                return self.cancelled()
            control = self._place.root
            try:
                open(os.path.join(control, 'cancelled'), 'w').close()
                with open(os.path.join(control, 'group')) as file:
                    _kill_group(int(file.read()))
            except (OSError, TypeError, ValueError):
                pass  # not started yet (it will see the mark), or ending right now
            cancelled = super().cancel()
            if cancelled:
                self.set_running_or_notify_cancel()  # wakes wait() and as_completed()
            if threading.current_thread() is not self._thread:
                self._thread.join()
            return cancelled

        def join(self, timeout=None):
            """The same as `result`, for parmapper's users."""
            return self.result(timeout)

    return _Background


_Background = None


def pmap_rows(fun, X, nprocesses=None, **run_options):
    """fun(X) for a function that treats the rows of a NumPy array one by
    one, computed in parallel: X is split along its first axis into one
    chunk per process, fun runs on each chunk in a process of its own, and
    the results are joined again. Needs NumPy; run_options as in `pmap`.

    >>> import numpy
    >>> pmap_rows(numpy.sqrt, numpy.array([[1.0, 4.0], [9.0, 16.0], [25.0, 36.0]]))
    array([[1., 2.],
           [3., 4.],
           [5., 6.]])
    """
    try:
        import numpy
    except ImportError:
        raise ImportError('pmap_rows needs NumPy: pip install numpy') from None
    _check_callable(fun, 'pmap_rows')
    if not isinstance(X, numpy.ndarray):
        raise TypeError(f'pmap_rows splits a NumPy array along its first axis, not '
                        f'{_a(type(X))} {_abbreviate(X)}; make one with numpy.asarray(X)')
    if X.ndim == 0:
        raise TypeError(f'pmap_rows splits an array into rows, but {_abbreviate(X)} '
                        f'has no rows: it has no axis at all')
    nprocesses = Run(None, nprocesses, **run_options).nprocesses
    chunks = numpy.array_split(X, min(nprocesses, len(X))) if len(X) else [X]
    starts = numpy.cumsum([0] + [len(chunk) for chunk in chunks])

    def describe(index):
        return f'pmap_rows chunk {index}, rows {starts[index]} to {starts[index + 1] - 1}'

    jobs = ((defer(fun, chunk) for chunk in chunks), len(chunks))
    results = list(_ordered(jobs, describe, nprocesses, 'raise', None, False, None,
                            False, run_options))
    for index, result in enumerate(results):
        if not isinstance(result, numpy.ndarray) or result.ndim == 0:
            raise TypeError(f'pmap_rows joins the arrays that fun returns for each '
                            f'chunk of rows, but for {describe(index)} it returned '
                            f'{_a(type(result))} {_abbreviate(result)}')
    return numpy.concatenate(results)


# ---------------------------------------------------------------------------
# More than one machine
# ---------------------------------------------------------------------------
#
# A backend has the local one's shape: adopt(marked names) -> names still in
# flight from an earlier driver, busy(), has_room(), start(name), wait() ->
# names whose result is in collect/, close(). On the machine that runs the
# task, `_supervise` does what the local supervisor does for one task.

_ABANDON_POLL = 0.5  # seconds between checks whether the driver gave up on a task


def _still_wanted(mark):
    """Whether a driver still waits for the task whose mark (in running/) this
    is: the mark is there, and a driver holds the list's lock, which a driver
    that dies, however it dies, lets go of."""
    lock = os.path.join(os.path.dirname(os.path.dirname(mark)), _LOCKFILE)
    return os.path.exists(mark) and _DriverLock.holder(lock) is not None


def _supervise(todo, result, output=None, autokill=None, memory_limit=None,
               sessionfile=None, abandon_unless=None):
    """Run one task in a process of its own, with autokill and the memory
    limit, and wait for it: what an executor's worker or a SLURM job does.
    Kills the task, recording nothing, if the file abandon_unless vanishes
    or its driver dies (see `_still_wanted`).
    Returns whether the task succeeded."""
    supervisor = _Supervisor('spawn', (), autokill, _parse_bytes(memory_limit),
                             sessionfile, abandon_unless, in_job=True)
    try:
        supervisor.start(todo, result, output)
        supervisor.wait()
    finally:
        supervisor.close()
    if not os.path.exists(result):
        return False
    with open(result, 'rb') as file:
        os.fsync(file.fileno())  # no driver on this machine syncs for it
        return _read_header(file, result)['state'] == 'done'


class _ExecutorBackend:
    """Runs each task through a concurrent.futures Executor, such as Dask's:
    a worker supervises the task's process, as a local run would."""

    stages = False  # a worker takes a task when it is submitted, not ahead

    def __init__(self, tasklist, executor, nprocesses, autokill, memory_limit, sessionfile):
        self.tasklist, self.executor, self.nprocesses = tasklist, executor, nprocesses
        self.options = dict(autokill=autokill, memory_limit=memory_limit,
                            sessionfile=sessionfile)
        self.futures = {}

    def adopt(self, marked):
        for name in marked:  # the workers drop tasks whose mark is gone
            _unlink(self.tasklist._path('running', name))
        return set()

    def busy(self):
        return bool(self.futures)

    def has_room(self):
        return len(self.futures) < self.nprocesses

    def start(self, name):
        tasklist = self.tasklist
        _mark_running(tasklist, name, 'executor')
        future = self.executor.submit(
            _supervise, tasklist._path('todo', name), tasklist._path('collect', name),
            tasklist._path('output', name), abandon_unless=tasklist._path('running', name),
            **self.options)
        self.futures[future] = name

    def wait(self):
        from concurrent.futures import FIRST_COMPLETED, wait
        finished, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        names = []
        for future in finished:
            name = self.futures.pop(future)
            result = self.tasklist._path('collect', name)
            error = future.exception()
            if not os.path.exists(result):
                error = error or RunforrestError('no result was written')
                _record_failure(self.tasklist._path('todo', name), result, TaskLost(
                    f'the executor lost the task: {_summary(error)}',
                    state=type(error).__name__, reason=str(error)), died=True)
            names.append(name)
        return names

    def close(self):
        from concurrent.futures import wait
        for future, name in self.futures.items():
            future.cancel()
            _unlink(self.tasklist._path('running', name))
        wait(self.futures, timeout=10 * _ABANDON_POLL)
        self.futures.clear()


class Slurm:
    """Run a task list on a SLURM cluster: `run(executor=Slurm(...))`.

    >>> for task in tasklist.run(nprocesses=50, autokill=600,  # doctest: +SKIP
    ...                          executor=Slurm(partition='short', mem='4G')):
    ...     print(task.taskname, task.returnvalue)

    Tasks go out as job arrays (`sbatch --array=...`), one array element
    per task, each running `python -m runforrest` in the foreground of its
    job, where it enforces autokill and memory_limit to the second. The
    driver keeps nprocesses elements submitted: whenever some end, it
    submits an array of as many tasks as may start, so that a list larger
    than an array, or a pipeline whose tasks become ready one by one,
    keeps the cluster busy. The task list must lie on a filesystem that the nodes
    share. Options map to sbatch's: partition, time, mem, cpus_per_task,
    account; extra_args is a list of further sbatch arguments. python is
    the interpreter the jobs use (default: this one). poll_interval: seconds
    between looks at the queue.
    """

    max_array_size = 1000  # SLURM's default MaxArraySize is 1001

    def __init__(self, partition=None, time=None, mem=None, cpus_per_task=None,
                 account=None, extra_args=(), python=None, poll_interval=2.0):
        self.sbatch_options = [f'--{option}={value}' for option, value in (
            ('partition', partition), ('time', time), ('mem', mem),
            ('cpus-per-task', cpus_per_task), ('account', account)) if value is not None]
        self.sbatch_options += list(extra_args)
        self.python = python or sys.executable
        self.poll_interval = poll_interval

    def __repr__(self):
        return f'Slurm({" ".join(self.sbatch_options)})'


def _slurm(*command):
    import subprocess
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RunforrestError(f'{command[0]} was not found: is this a SLURM '
                              f'login node, with SLURM on the PATH?') from None
    if done.returncode != 0 and 'Invalid job id' in done.stderr:
        return ''  # every job asked about ended long enough ago to be forgotten
    if done.returncode != 0:
        raise RunforrestError(f'{" ".join(command[:2])} … failed: {done.stderr.strip()}')
    return done.stdout


# Job states after which an array element will never write a result.
_SLURM_ENDED = {'BOOT_FAIL', 'CANCELLED', 'COMPLETED', 'DEADLINE', 'FAILED',
                'NODE_FAIL', 'OUT_OF_MEMORY', 'PREEMPTED', 'TIMEOUT', 'REVOKED'}


class _SlurmBackend:
    """Submits todo tasks as SLURM job arrays and watches the queue."""

    stages = False  # a job starts when SLURM says

    def __init__(self, tasklist, slurm, nprocesses, autokill, memory_limit, sessionfile):
        self.tasklist, self.slurm, self.nprocesses = tasklist, slurm, nprocesses
        self.arguments = []
        if autokill is not None:
            self.arguments += ['--autokill', str(autokill)]
        if memory_limit is not None:
            self.arguments += ['--memory-limit', str(memory_limit)]
        if sessionfile is not None:
            self.arguments += ['-s', sessionfile]
        self.queued = []
        self.submitted = 0  # arrays, for their files' names
        self.jobs = {}  # name -> array element id, 'JOBID_INDEX'
        self.gone = {}  # name -> polls for which its job has ended without a result
        self.workdir = tasklist._work_path('slurm')
        os.makedirs(self.workdir, exist_ok=True)

    def adopt(self, marked):
        recorded = {}
        for name in marked:
            with open(self.tasklist._path('running', name)) as file:
                where = file.read().split()
            if where[:1] == ['slurm'] and len(where) == 2:
                recorded[name] = where[1]
            else:
                _unlink(self.tasklist._path('running', name))
        states = self._states({element.partition('_')[0] for element in recorded.values()})
        for name, element in recorded.items():
            if states.get(element, ('?',))[0] in _SLURM_ENDED | {'?'} and \
                    not os.path.exists(self.tasklist._path('collect', name)):
                _unlink(self.tasklist._path('running', name))
            else:
                self.jobs[name] = element
        return set(self.jobs)

    def busy(self):
        return bool(self.jobs or self.queued)

    def has_room(self):
        return len(self.jobs) + len(self.queued) < self.nprocesses

    def start(self, name):
        self.queued.append(name)

    def _submit(self, names):
        tasklist = self.tasklist
        self.submitted += 1
        stamp = f'{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}-{self.submitted}'
        listing = os.path.join(self.workdir, f'{stamp}.names')
        with open(listing, 'w') as file:
            file.write('\n'.join(names) + '\n')
        script = os.path.join(self.workdir, f'{stamp}.sh')
        arguments = ' '.join(_shell_quote(argument) for argument in self.arguments)
        with open(script, 'w') as file:
            file.write(_SLURM_SCRIPT.format(names=_shell_quote(listing),
                                            python=_shell_quote(self.slurm.python),
                                            todo=_shell_quote(tasklist._folder('todo')),
                                            collect=_shell_quote(tasklist._folder('collect')),
                                            output=_shell_quote(tasklist._folder('output')),
                                            arguments=arguments))
        # --no-requeue: after a node failure, SLURM would run the task again
        # behind our back; runforrest records it, and retries if asked to.
        output = _slurm('sbatch', '--parsable', f'--array=0-{len(names) - 1}',
                        '--job-name=runforrest', '--no-requeue', f'--chdir={os.getcwd()}',
                        f'--output={os.path.join(self.workdir, "%A_%a.log")}',
                        *self.slurm.sbatch_options, script)
        job = output.strip().split(';')[0]
        for index, name in enumerate(names):
            self.jobs[name] = f'{job}_{index}'
            _mark_running(tasklist, name, f'slurm {job}_{index}')

    def _states(self, jobs):
        """{'JOBID_INDEX': (state, reason)} for the elements of these jobs."""
        if not jobs:
            return {}
        output = _slurm('squeue', '--noheader', '--array', '--states=all',
                        f'--jobs={",".join(sorted(jobs))}', '--format=%i %T %r')
        states = {}
        for line in output.splitlines():
            element, state, reason = (line.split(None, 2) + ['', ''])[:3]
            states[element] = (state, reason)
        return states

    def wait(self):
        size = self.slurm.max_array_size
        while self.queued:
            names, self.queued = self.queued[:size], self.queued[size:]
            self._submit(names)
        while True:
            finished = [name for name in self.jobs
                        if os.path.exists(self.tasklist._path('collect', name))]
            if not finished:
                finished = self._lost()
            for name in finished:
                del self.jobs[name]
                self.gone.pop(name, None)
            if finished:
                return finished
            time.sleep(self.slurm.poll_interval)  # SLURM tells nobody; one must ask

    def _lost(self):
        """Elements whose job ended without a result, seen so on two looks
        in a row (a result may still be on its way through the filesystem)."""
        states = self._states({element.partition('_')[0] for element in self.jobs.values()})
        lost = []
        for name, element in self.jobs.items():
            state, reason = states.get(element, ('GONE', 'no longer listed by squeue'))
            if state not in _SLURM_ENDED and state != 'GONE':
                self.gone.pop(name, None)
                continue
            self.gone[name] = self.gone.get(name, 0) + 1
            result = self.tasklist._path('collect', name)
            if self.gone[name] >= 2 and not os.path.exists(result):
                log = os.path.join(self.workdir, f'{element}.log')
                _record_failure(self.tasklist._path('todo', name), result, TaskLost(
                    f'SLURM job {element} ended as {state} ({reason}) without a result'
                    f'{_last_line(log)}', state=state, reason=reason), died=True)
                lost.append(name)
        return lost

    def close(self):
        if self.jobs:
            _slurm('scancel', *sorted({element.partition('_')[0]
                                       for element in self.jobs.values()}))
            for name in self.jobs:
                _unlink(self.tasklist._path('running', name))
        self.jobs.clear()
        self.queued.clear()


def _last_line(path):
    """'; its log PATH ends: ...' with the last line of a job's log, if any: the
    only place where SLURM says that it killed a job for its memory."""
    try:
        with open(path, errors='replace') as file:
            lines = [line.strip() for line in file if line.strip()]
    except OSError:
        return ''
    return f'; its log {path} ends: {lines[-1]}' if lines else ''


_SLURM_SCRIPT = '''#!/bin/sh
# One element of a runforrest job array: the task named on line
# SLURM_ARRAY_TASK_ID + 1 of the names file, supervised in the foreground.
name=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {names})
exec {python} -m runforrest {todo}/"$name".pkl {collect}/"$name".pkl \\
    --output {output}/"$name".log {arguments}
'''


def _shell_quote(text):
    import shlex
    return shlex.quote(str(text))


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

_USAGE = '''\
runforrest TASKFILE RESULTFILE [-r] [-p] [-s SESSIONFILE] [--autokill S] [--memory-limit SIZE] [--output FILE]
       runforrest {status,run,retry,show,clean} ... [--help]'''

_DESCRIPTION = '''\
Run one task file by hand (the first form: what run() does for each task;
exit status 0 if the task succeeded, 1 if it failed, 2 for a usage error),
or look after a task list (the second form).'''


def _task_parser():
    import argparse
    parser = argparse.ArgumentParser(prog='runforrest', usage=_USAGE, description=_DESCRIPTION)
    parser.add_argument('taskfile', help='a task file, e.g. DIR/fail/00000003-f.pkl')
    parser.add_argument('resultfile', help='where to write the result')
    parser.add_argument('-r', '--do_raise', '--do-raise', action='store_true',
                        help="re-raise the task's error, for a debugger: python -m pdb -m runforrest ...")
    parser.add_argument('-p', '--do_print', '--do-print', action='store_true',
                        help="print the task's traceback if it fails")
    parser.add_argument('-s', '--sessionfile', help="load the driver's session first")
    parser.add_argument('--autokill', type=float, metavar='S',
                        help='run the task in a process group of its own and kill it after S seconds')
    parser.add_argument('--memory-limit', metavar='SIZE',
                        help="... and kill it if it uses more memory than SIZE, e.g. '2G'")
    parser.add_argument('--output', metavar='FILE', help="... and send its output to FILE")
    return parser


def _command_parser():
    import argparse
    parser = argparse.ArgumentParser(prog='runforrest', usage=_USAGE, description=_DESCRIPTION)
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')

    status = commands.add_parser('status', help='count tasks, group failures, sum up runtimes')
    status.add_argument('directory')
    status.add_argument('--json', action='store_true', help='print JSON')

    run = commands.add_parser('run', help='run the todo tasks of a list')
    run.add_argument('directory')
    run.add_argument('-n', '--nprocesses', type=int)
    run.add_argument('--autokill', type=float, metavar='S')
    run.add_argument('--memory-limit', metavar='SIZE')
    run.add_argument('--retries', type=int, default=0)
    run.add_argument('--start-method', choices=_START_METHODS, default='forkserver')
    run.add_argument('--preload', action='append', default=[], metavar='MODULE')
    run.add_argument('--print-errors', action='store_true')
    run.add_argument('--logfile', help="write the tasks' output here, not to the terminal")
    run.add_argument('--progress', action=argparse.BooleanOptionalAction,
                     default=sys.stderr.isatty(), help='show progress (default: on a terminal)')
    run.add_argument('--json', action='store_true', help='print a JSON summary')

    retry = commands.add_parser('retry', help='move failed tasks back to todo/')
    retry.add_argument('directory')
    retry.add_argument('tasks', nargs='*', metavar='TASK', help='names or unique prefixes (default: all)')
    retry.add_argument('--error', metavar='TYPE', help='only failures of this error type, e.g. TaskTimeout')
    retry.add_argument('--json', action='store_true')

    show = commands.add_parser('show', help='show one task: call, metadata, error, output')
    show.add_argument('task', help='a task file, or DIR/NAME with a unique prefix of the name')
    show.add_argument('--lines', type=int, default=200, help='lines of output to show (0: all)')
    show.add_argument('--json', action='store_true')

    clean = commands.add_parser('clean', help='remove tasks (all: the whole directory)')
    clean.add_argument('directory')
    for state in STATES:
        clean.add_argument(f'--{state}', action='store_true', help=f'remove the {state} tasks')
    clean.add_argument('--stale', action='store_true',
                       help='remove the tasks that the script of a reuse list no longer schedules')
    return parser


def main(argv=None):
    """`python -m runforrest` and the `runforrest` command; see --help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 2 and not argv[0].startswith('-') and argv[0] not in _COMMANDS:
        # The form run() uses for every spawned task: no parser to import.
        return _taskfile_command(*argv)
    if not argv or argv[0] in _COMMANDS or argv[0] in ('-h', '--help'):
        args = _command_parser().parse_args(argv)
        if args.command is None:
            _command_parser().print_help()
            return 2
        try:
            return _COMMANDS[args.command](args)
        except (RunforrestError, ValueError, OSError) as error:
            print(f'runforrest {args.command}: {error}', file=sys.stderr)
            return 2
    return _taskfile_command(**vars(_task_parser().parse_args(argv)))


def _taskfile_command(taskfile, resultfile, do_raise=False, do_print=False,
                      sessionfile=None, autokill=None, memory_limit=None, output=None):
    # A driver that spawned this process watches it through a lifeline; the
    # variable goes, so that the task's own processes do not take it for theirs.
    lifeline = os.environ.pop(_LIFELINE, None)
    try:
        memory_limit = _parse_bytes(memory_limit)
        if not os.path.isfile(taskfile):
            raise TaskFileError(f'task file {taskfile} does not exist')
        if not os.path.isdir(os.path.dirname(os.path.abspath(resultfile))):
            raise TaskFileError(f'cannot write the result file {resultfile}: '
                                f'its directory does not exist')
    except (TaskFileError, ValueError) as error:
        print(f'runforrest: {error}', file=sys.stderr)
        return 2
    if autokill or memory_limit or output:
        done = _supervise(os.path.abspath(taskfile), os.path.abspath(resultfile),
                          output, autokill, memory_limit, sessionfile)
        if not done and do_print:
            print(read_task(resultfile).traceback or '', file=sys.stderr, end='')
    else:
        _become_task_process(int(lifeline) if lifeline else None)
        done = execute(taskfile, resultfile, do_raise, do_print, sessionfile,
                       durable=not lifeline)
    return 0 if done else 1


def _emit(args, data, text):
    if args.json:
        import json
        print(json.dumps(data, indent=2, default=repr))
    else:
        print(text)


def _status_command(args):
    tasklist = TaskList.open(args.directory)
    data = _status(tasklist)
    lines = [f'{data["directory"]}: ' + ', '.join(
        f'{data[state]} {state}' for state in STATES + ('running',))]
    if data['waiting']:
        lines.append(f'waiting: {data["waiting"]} of the todo tasks wait for their dependencies')
    if data['stale']:
        lines.append(f'stale: {data["stale"]} tasks that the script no longer schedules '
                     f'(runforrest clean --stale removes them)')
    if data['why']:
        lines.append('ran because:')
        for why, count in sorted(data['why'].items(), key=lambda item: -item[1]):
            lines.append(f'  {count:6d}  {why}')
    if data['driver']:
        driver = data['driver']
        lines.append(f'driver: pid {driver.get("pid")} on {driver.get("host")}, '
                     f'since {driver.get("started")}')
    if data['failures']:
        lines.append('failures:')
        width = max(map(len, data['failures']))
        for kind, group in data['failures'].items():
            lines.append(f'  {group["count"]:6d}  {kind:<{width}}  e.g. '
                         f'{group["example"]}: {group["message"]}')
    runtime = data['runtime']
    if runtime['count']:
        lines.append(f'runtime: total {_format_seconds(runtime["total"])}, median '
                     f'{_format_seconds(runtime["median"])}, longest '
                     f'{_format_seconds(runtime["max"])}')
    _emit(args, data, '\n'.join(lines))
    return 0


def _status(tasklist):
    """What `runforrest status` tells, as a dict; reads only file headers."""
    import statistics
    driver = tasklist._driver()
    data = {'directory': tasklist.directory, 'driver': driver,
            'running': driver.get('running', 0) if driver else 0,
            **{state: len(tasklist._names(state)) for state in STATES}}
    done = set(tasklist._names('done'))
    data['waiting'] = 0
    for name in tasklist._names('todo'):
        try:
            after = _header_of(tasklist._path('todo', name)).get('after', '')
        except (OSError, TaskFileError):
            continue
        data['waiting'] += any(other not in done for other in _each_name(after))
    current = tasklist._current()
    data['stale'] = 0 if current is None else sum(
        name not in current for state in STATES for name in tasklist._names(state))
    data['why'] = {}  # on a reuse list: why the tasks that its script schedules run
    ran = current and current - tasklist._current(reused=True)
    runtimes, failures = [], {}
    for state in ('done', 'fail'):
        for name in tasklist._names(state):
            path = tasklist._path(state, name)
            try:
                header = _header_of(path)
            except (TaskFileError, FileNotFoundError):
                header = {'error_type': 'TaskFileError', 'error': f'{path} cannot be read'}
            if header.get('runtime') is not None:
                runtimes.append(header['runtime'])
            if header.get('why') and ran and name in ran:
                data['why'][header['why']] = data['why'].get(header['why'], 0) + 1
            if state == 'fail':
                group = failures.setdefault(header.get('error_type') or '?', {
                    'count': 0, 'example': name, 'message': header.get('error'), 'tasks': []})
                group['count'] += 1
                group['tasks'].append(name)
    data['failures'] = dict(sorted(failures.items(), key=lambda item: -item[1]['count']))
    data['runtime'] = {'count': len(runtimes), 'total': sum(runtimes),
                       'median': statistics.median(runtimes) if runtimes else None,
                       'max': max(runtimes, default=None)}
    return data


def _format_seconds(seconds):
    if seconds < 60:
        return f'{seconds:.2f} s'
    return time.strftime('%H:%M:%S', time.gmtime(seconds))


def _run_command(args):
    tasklist = TaskList.open(args.directory)
    _adopt_import_path(*(tasklist._path('todo', name) for name in tasklist._names('todo')[:1]))
    tasklist.logfile = args.logfile
    counts = {'done': 0, 'fail': 0}
    for task in tasklist.run(nprocesses=args.nprocesses, autokill=args.autokill,
                             memory_limit=args.memory_limit, retries=args.retries,
                             start_method=args.start_method, preload=args.preload,
                             print_errors=args.print_errors, progress=args.progress):
        counts['done' if task.errorvalue is None else 'fail'] += 1
    _emit(args, counts, f'{counts["done"]} done, {counts["fail"]} failed'
          + (f'; see: runforrest status {args.directory}' if counts['fail'] else ''))
    return 0 if not counts['fail'] else 1


def _retry_command(args):
    tasklist = TaskList.open(args.directory)
    names = None
    if args.tasks:
        names = [_resolve(tasklist, prefix, ('fail',))[1] for prefix in args.tasks]
    moved = tasklist.retry(names, error_type=args.error)
    _emit(args, moved, f'{len(moved)} failed task{"s" * (len(moved) != 1)} moved back to todo/')
    return 0


def _resolve(tasklist, prefix, states=STATES):
    """(state, name) of the one task whose name starts with prefix."""
    found = [(state, name) for state in states for name in tasklist._names(state)
             if name.startswith(prefix)]
    exact = [match for match in found if match[1] == prefix]
    if len(exact) == 1 or len(found) == 1:
        return (exact or found)[0]
    if not found:
        raise TaskFileError(f'no task named {prefix}… in {", ".join(s + "/" for s in states)} '
                            f'of {tasklist.directory}', path=prefix, reason='missing')
    raise TaskFileError(f'{prefix} fits {len(found)} tasks ({", ".join(n for _, n in found[:5])}'
                        f'{", …" if len(found) > 5 else ""}); give more of the name',
                        path=prefix, reason='ambiguous')


def _show_command(args):
    path = args.task
    if not os.path.isfile(path):
        directory, prefix = os.path.split(path.rstrip('/'))
        tasklist = TaskList.open(directory or '.')
        state, name = _resolve(tasklist, prefix)
        path = tasklist._path(state, name)
    path = os.path.abspath(path)
    directory = os.path.dirname(os.path.dirname(path))
    with _open_taskfile(path) as file:
        header = _read_header(file, path)
    _adopt(header, chdir=False)
    name = _name_of(path)
    data = {'name': name, 'state': header['state'], 'file': path,
            'runtime': header.get('runtime'), 'error': header.get('error'),
            'key': header.get('key'), 'why': header.get('why')}
    try:
        task = read_task(path)
        data.update(call=_describe(task, depth=3), metadata=task.metadata,
                    traceback=task.traceback)
    except TaskFileError as error:
        data.update(call=None, metadata=None, traceback=None, unreadable=str(error))
    try:
        tasklist = TaskList.open(directory)
    except NotATaskList:  # a task file by itself
        tasklist = None
    output = tasklist.output(name) if tasklist else None
    data['dependencies'] = list(_each_name(header.get('after', '')))
    data['dependents'] = tasklist._dependents(name) if tasklist else []
    if output is not None:
        lines = output.splitlines()
        output = '\n'.join(lines[-args.lines:] if args.lines else lines)
    data['output'] = output
    text = [f'task      {name} ({data["state"]})', f'file      {path}']
    if data.get('unreadable'):
        text.append(f'unreadable: {data["unreadable"]}')
    else:
        text.append(f'call      {data["call"]}')
        text.append(f'metadata  {_abbreviate(data["metadata"], 200)}')
    if data['why']:
        text.append(f'ran, as   {data["why"]}' if data['state'] != 'todo' else
                    f'runs, as  {data["why"]}')
    if data['dependencies']:
        text.append(f'after     {", ".join(data["dependencies"])}')
    if data['dependents']:
        text.append(f'needed by {", ".join(data["dependents"])}')
    if data['runtime'] is not None:
        text.append(f'runtime   {_format_seconds(data["runtime"])}')
    if data['error']:
        text.append(f'error     {data["error"]}')
    if data.get('traceback'):
        text.append('traceback:\n' + data['traceback'].rstrip())
    if data['output'] is not None:
        text.append(f'output ({tasklist._path("output", name)}):\n{data["output"]}')
    _emit(args, data, '\n'.join(text))
    return 0


def _clean_command(args):
    tasklist = TaskList.open(args.directory)
    if args.stale:
        tasklist.clean(stale=True)
        print(f'removed the stale tasks of {tasklist.directory}')
        return 0
    chosen = [getattr(args, state) for state in STATES]
    if not any(chosen):
        chosen = [True] * len(STATES)
    tasklist.clean(*chosen)
    print(f'removed {", ".join(s for s, yes in zip(STATES, chosen) if yes)} tasks of {tasklist.directory}')
    return 0


_COMMANDS = {'status': _status_command, 'run': _run_command, 'retry': _retry_command,
             'show': _show_command, 'clean': _clean_command}
