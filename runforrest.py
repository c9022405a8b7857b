"""Run, Forrest, run: many isolated processes from one slow loop, and nothing lost.

Wrap calls in `defer`, `schedule` the resulting task graphs on a `TaskList`,
and iterate over `TaskList.run`. Every task runs in a fresh process of its
own, in a process group of its own, so that it can raise, crash, hang, leak
or flood its output without harming anything but itself.

A task is a file, and its life is a walk through the task list's directory::

    defer(f, x) ─► Task graph ─ schedule() ─► DIR/todo/00000001-f.pkl
                                                   │
                          run(): one process per task, at most N at once
                          python -m runforrest todo/00000001-f.pkl collect/00000001-f.pkl
                          (its stdout and stderr go to DIR/output/00000001-f.log)
                                                   │
                              the result, or, if the process died without one,
                              the supervisor's record of how it died
                                                   ▼
                                    DIR/collect/00000001-f.pkl
                                                   │ the driver files it and yields it
                                                   ▼
                           DIR/done/00000001-f.pkl  or  DIR/fail/00000001-f.pkl

Every file appears atomically (written aside, then moved into place), and a
result is on disk before the task leaves todo/, so a crash of a task, of the
driver or of the machine loses nothing: the next run files what reached
collect/ and runs again what did not.

The module reads in that order: errors, the task graph, the file format, the
store (`TaskList`), the task process, the supervisor that starts and polices
task processes, the driver (`Run`), conveniences (`pmap`, progress), backends
for more than one machine (`Slurm`, executors such as Dask), and the command
line.
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
    'TaskList', 'Run', 'pmap', 'execute', 'read_task', 'Slurm',
    'RunforrestError', 'TaskListError', 'TaskListExists', 'NotATaskList',
    'TaskListBusy', 'TaskFileError', 'NotPicklable', 'TaskFailure',
    'TaskCrashed', 'TaskKilled', 'TaskTimeout', 'TaskOutOfMemory',
    'TaskLost', 'UnpicklableResult', 'UnpicklableException', 'DependencyFailed',
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
    `metadata`, `returnvalue`, `errorvalue`, `traceback`, `runtime` and
    `taskname`, which are set on tasks that come back from a `TaskList`. To
    defer access to an attribute of one of those names, use
    `defer(getattr, task, 'returnvalue')`.

    Tasks compare equal when they are the same task, also after a trip
    through the task list's files.
    """

    metadata = None
    returnvalue = _Outcome()
    errorvalue = _Outcome()
    traceback = _Outcome()
    runtime = None
    taskname = None

    def __init__(self, fun, args=(), kwargs=None):
        self._fun = fun
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._key = os.urandom(8).hex()

    def __getattr__(self, name):
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


# In a task process: the task list whose done/ holds the results it depends on.
_dependency_list = None


def _stored_result(name):
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
    seen = set()
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
        seen.add(task._key)
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


class _Ref(int):
    """Position of a task in a flattened graph."""


def _flatten(root, cut=None):
    """root's graph as a flat list of nodes, children first, each task
    replaced by its position: pickling it then needs no recursion.

    cut maps the keys of tasks scheduled on a list to their names; each of
    them becomes the `_Result` of that name, and what is below it goes."""
    position = {}
    nodes = []
    for task in _postorder(root, cut and (lambda task: task._key in cut)):
        def ref(value):
            return _Ref(position[value._key]) if isinstance(value, Task) else value
        if cut and task is not root and task._key in cut:
            nodes.append((_Result, task._key, _stored_result, (cut[task._key],), {}))
        else:
            nodes.append((type(task), task._key, ref(task._fun),
                          tuple(map(ref, task._args)),
                          {key: ref(value) for key, value in task._kwargs.items()}))
        position[task._key] = len(nodes) - 1
    return nodes


def _rebuild(nodes):
    tasks = []

    def deref(value):
        return tasks[value] if type(value) is _Ref else value

    for cls, key, fun, args, kwargs in nodes:
        task = cls.__new__(cls)
        task.__dict__.update(_fun=deref(fun), _args=tuple(map(deref, args)),
                             _kwargs={k: deref(v) for k, v in kwargs.items()},
                             _key=key)
        tasks.append(task)
    return tasks[-1]


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
    name = ''.join(c if c.isalnum() or c == '_' else '_' for c in str(name)).strip('_')
    return name[:40] or 'task'


# ---------------------------------------------------------------------------
# The file format
# ---------------------------------------------------------------------------
#
# Every task file, in todo/, done/ or fail/ alike, begins with one pickle
# that plain `pickle.load` (or `dill.load`) turns into the Task, with its
# metadata and, once it ran, its outcome:
#
#   _restore(RECORD, OUTCOME)
#     RECORD: the bytes of {'task': ..., 'metadata': ...} as schedule()
#             pickled them, copied unchanged from todo/ into the result;
#     OUTCOME: None in todo/; in a result {'returnvalue': ...} or
#             {'errorvalue': ..., 'traceback': ...}, and 'runtime'.
#
# An index of builtins only follows: the state, where the record lies, the
# error's type and summary, the runtime, the names of the tasks it depends
# on, and the driver's sys.path and directory. Then the index's size, and an
# end mark:
#
#   [ _restore(...) pickle ][ index pickle ][ index size: 8 bytes ][ _END ]
#
# Listing, counting and `status` read the index from the end of the file,
# so they import nothing that a task needs. A file without the end mark was
# cut short: a result that a power cut caught before it reached the disk.
# The RECORD is written as raw bytes and the outcome is pickled straight
# after it, with its own end opcode replaced by the call's, so that neither
# is pickled twice nor held twice in memory.

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


def _todo_bytes(record, index):
    """A todo file: its task, with no outcome yet, and its index."""
    return b''.join((_OPENING, len(record).to_bytes(8, 'little'), record,
                     pickle.NONE, _CLOSING, _index_bytes(index)))


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


def _dump(obj, file):
    """Pickle obj into file: with the fast C pickler where it can, with dill
    where it must (lambdas, closures, objects of __main__)."""
    start = file.tell()

    def undo(error):
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRORS:
            raise error  # the file's fault (a full disk, say), not the object's
        file.seek(start)
        file.truncate()

    try:
        _FastPickler(file, pickle.HIGHEST_PROTOCOL).dump(obj)
        return
    except Exception as error:
        undo(error)
    import dill
    try:
        dill.Pickler(file, pickle.HIGHEST_PROTOCOL, recurse=True).dump(obj)
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


def _check_picklable(obj, describe):
    """Raise NotPicklable, with what describe() says obj is, if it is not picklable."""
    if type(obj) in _PLAIN_TYPES:
        return
    try:
        _dump(obj, _Discard())
    except NotPicklable as error:
        raise NotPicklable(
            f'cannot defer {describe()}: {error}. A task travels to its process as '
            f'a pickle; pass something picklable instead (a file name rather '
            f'than an open file, say), or create it inside the task',
            type_name=error.type_name) from None


def _write_atomically(path, write, durable=True, temporary=None):
    """Write a file through a hidden temporary file, so that nobody ever sees
    half of it. durable: on disk before it appears. temporary: the path of
    the temporary file, if only one process ever writes path; a file there
    is reused (see `TaskList._reuse`)."""
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
    in place of an existing one (FileExistsError instead).

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
            return
        except FileExistsError:
            raise
        except OSError:
            pass  # as above
        finally:
            os.close(fd)
    temporary = _temporary(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.link(temporary, path)
    finally:
        _unlink(temporary)


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
            return header
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
    stored = _load(record, path, 'task')
    if not isinstance(stored, dict) or not isinstance(stored.get('task'), Task):
        raise TaskFileError(f'{path} holds no runforrest task', path=path,
                            reason='no task in the record')
    task = stored['task']
    task.metadata = stored.get('metadata')
    return task


def read_task(path, outcome=True):
    """The task stored in a task file of any state, with its metadata and
    taskname, and with returnvalue, errorvalue, traceback and runtime if it
    has run. With outcome=False, the outcome is read from the file only when
    it is first asked for. Pickle or dill load the same task from the file,
    without the checks.

    A task read from a task list's file is that list's task: scheduled in a
    graph on the list, it passes its stored returnvalue on (see
    `TaskList.schedule`).

    Raises `TaskFileError` if the file is missing or cannot be loaded.
    """
    with _open_taskfile(path) as file:
        header, record = _read_parts(file, path)
        ran = header['state'] != 'todo'
        if outcome and ran:
            task = _load_whole(file, path)
        elif header.get('damaged'):
            task = _restore(record, None, damaged=True)
        else:
            task = _unpack(record, path)
    task.taskname = _name_of(path)
    directory = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    task.__dict__.update(_scheduled={directory: task.taskname}, _after=header.get('after', []))
    if ran:
        task.runtime = header.get('runtime')
        if not outcome:
            task.__dict__.update({'errorvalue': None, 'traceback': None}
                                 if header['state'] == 'done' else {'returnvalue': None})
            task.__dict__['_load_outcome'] = lambda: _load_outcome(path)
    return task


def _load_whole(file, path):
    """The task of an open task file, with its outcome: the file unpickled."""
    task = _load(lambda: pickle.load(file), path, 'task and its outcome')
    if not isinstance(task, Task):
        raise TaskFileError(f'{path} holds no runforrest task', path=path,
                            reason='no task in the file')
    return task


def _load_outcome(path):
    with _open_taskfile(path) as file:
        task = _load_whole(file, path)
    return {name: task.__dict__.get(name) for name in ('returnvalue', 'errorvalue', 'traceback')}


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
# driver's lock, the scheduling mark (see `TaskList.schedule`), a saved
# session and SLURM's logs.
_WORKDIR = '.runforrest'
_WORKDIRS = ('collect', 'running')
_LOCKFILE = 'driver.lock'
_SCHEDULING = 'scheduling'


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
    prefix = name.partition('-')[0]
    return (len(prefix) if prefix.isdigit() else 0, name)


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


def _finish_scheduling(directory):
    """What ends a script's scheduling: its tasks made durable, and the
    scheduling mark removed (see `TaskList.schedule`)."""
    if os.path.isdir(directory):
        _sync(directory)
    _unlink(os.path.join(directory, _WORKDIR, _SCHEDULING))


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
    noschedule_if_exist: if the directory already holds a task list, keep
        it as it is and make `schedule` do nothing, so that the same script
        resumes the remaining todo tasks after a crash. If the script that
        scheduled the list was killed while it was scheduling, `schedule`
        takes up where it stopped instead: each call stands for the task
        that the same call made before, as long as there is one, and
        schedules anew after that. Nothing is ever removed.

    Use `TaskList.open(directory)` for an existing list, as it is.
    """

    def __init__(self, directory, exist_ok=False, pre_clean=True,
                 post_clean=False, logfile=None, noschedule_if_exist=False):
        self.directory = os.path.abspath(os.fspath(directory))
        self.logfile = logfile
        self._noschedule = False
        self._replay = None  # names that schedule() takes up again (see noschedule_if_exist)
        if os.path.exists(self.directory) and not self._is_empty_directory():
            if not self._is_tasklist():
                raise NotATaskList(
                    f'{self.directory} exists and is not a task list (it has '
                    f'no todo/ directory); runforrest leaves it alone: choose '
                    f'another directory, or empty this one yourself')
            if noschedule_if_exist:
                self._replay = self._scheduled_before_the_cut()
                self._noschedule = self._replay is None
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
        try:
            entries = os.listdir(self._folder(state))
        except FileNotFoundError:
            return []
        if state == 'running':
            return sorted((n for n in entries if not n.startswith('.')), key=_schedule_order)
        return sorted((n[:-4] for n in entries
                       if n.endswith('.pkl') and not n.startswith('.')),
                      key=_schedule_order)

    def _highest_index(self):
        return max((_index_of(name) for state in STATES + ('collect',)
                    for name in self._names(state)), default=0)

    def _scheduled_before_the_cut(self):
        """If the script that scheduled this list was killed while it did,
        the names it scheduled, in order, for schedule() to take up again;
        else None."""
        try:
            with open(self._work_path(_SCHEDULING)) as mark:
                first = int(mark.read() or 1)
        except (FileNotFoundError, ValueError):
            return None
        from collections import deque
        names = {name for state in STATES + ('collect',) for name in self._names(state)
                 if _index_of(name) >= first}
        return deque(sorted(names, key=_schedule_order))

    # -- scheduling ----------------------------------------------------------

    def schedule(self, task, metadata=None, after=()):
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
        if self._replay:
            return self._take_up(task)
        cut, dependencies = self._dependencies(task, after)
        try:
            record = _dumps({'task': _rebuild(_flatten(task, cut)) if cut else task,
                             'metadata': metadata})
        except NotPicklable as error:
            raise NotPicklable(f'cannot schedule {task!r} with metadata '
                               f'{_abbreviate(metadata)}: {error}',
                               type_name=error.type_name) from None
        index = {'state': 'todo', 'record_size': len(record), 'sys_path': list(sys.path),
                 'cwd': os.getcwd(), 'tasklist': self.directory}
        if dependencies:
            index['after'] = dependencies
        data = _todo_bytes(record, index)
        label = _label(task)
        self._begin_scheduling()
        while True:
            name = f'{self._next_index:08d}-{label}'
            self._next_index += 1
            try:
                _create(self._path('todo', name), data)
                break
            except FileExistsError:  # another process schedules into this list too
                self._next_index = self._highest_index() + 1
            except FileNotFoundError:  # the list was cleaned away; start it anew
                self._make_layout()
        task.__dict__.setdefault('_scheduled', {})[self.directory] = name
        if self._joining is not None:
            self._joining.append(name)
        if self.logfile:
            with open(self.logfile, 'a') as log:
                log.write(f'{_now()} schedule {name}\n')
        return name

    def _begin_scheduling(self):
        """Mark the list as being scheduled, until this script's scheduling
        ends: at flush(), at the end of a `with` block, or when this object
        or the interpreter goes. A script killed before that leaves the
        mark, with the index of its first task, for noschedule_if_exist."""
        if self._scheduling is not None:
            return
        import weakref
        self._make_layout()  # the list may have been cleaned away
        try:
            with open(self._work_path(_SCHEDULING), 'x') as mark:
                mark.write(str(self._next_index))
        except FileExistsError:
            pass  # a scheduling cut short before, taken up now: its start stays
        self._scheduling = weakref.finalize(self, _finish_scheduling, self.directory)

    def _take_up(self, task):
        """Stand for the task that this call scheduled in the script that was
        cut short (see noschedule_if_exist), instead of scheduling it again."""
        name = self._replay.popleft()
        if name.partition('-')[2] != _label(task):
            raise TaskListError(
                f'the scheduling of {self.directory} was cut short, and '
                f'noschedule_if_exist takes it up where it stopped, one task for '
                f'each schedule() call of the same script: but this call '
                f'schedules {_label(task)}, where the script scheduled {name}. '
                f'Run the script that scheduled the list, or start it anew with '
                f'TaskList({self.directory!r}, exist_ok=True)')
        task.__dict__.setdefault('_scheduled', {})[self.directory] = name
        self._begin_scheduling()
        return name

    def _dependencies(self, task, after):
        """The tasks that task depends on: {key: name} of those in its graph
        (see `_flatten`), and the names of all of them, and of after's."""
        cut, names = {}, []
        for node in _postorder(task, lambda node: '_scheduled' in node.__dict__):
            places = node.__dict__.get('_scheduled')
            if node is task or places is None:
                continue
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
                name = other.__dict__.get('_scheduled', {}).get(self.directory)
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
        return cut, sorted(set(names), key=_schedule_order)

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
                 'dependencies': task.__dict__['_after']}
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

    def _dependents(self, name):
        """The tasks that depend on the task name, in schedule order."""
        dependents = []
        for state in STATES:
            for other in self._names(state):
                try:
                    if name in _header_of(self._path(state, other)).get('after', ()):
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

    def clean(self, clean_todo=True, clean_done=True, clean_fail=True):
        """Remove the tasks of the chosen states (and their output). Removing
        all of them removes the directory; the list stays usable."""
        with self._driver_lock():
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
            directory = self._folder(state)
            for entry in os.listdir(directory) if os.path.isdir(directory) else ():
                if entry.startswith('.') and entry.endswith('.tmp'):
                    _unlink(os.path.join(directory, entry))
        for name in self._names('collect'):
            if not _is_whole(self._path('collect', name)):
                _unlink(self._path('collect', name))
        todo = set(self._names('todo'))
        for state in ('done', 'fail'):
            for name in todo.intersection(self._names(state)):
                if _state_of(self._path('todo', name)) != 'todo':
                    continue  # a result put back by hand, to run again
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
        With a deque of spares, the todo files are kept there for `_reuse`:
        on some filesystems (ext4 without a journal, after many removals),
        creating a file costs a millisecond, and renaming one microseconds."""
        if names:
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

    def _reuse(self, spares, name):
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
        import json
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
        os.ftruncate(self.fd, 0)
        self.publish()
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
            durable=True):
    """Run the task in taskfile in this process, write its result file, and
    return whether it succeeded: what `python -m runforrest TASKFILE
    RESULTFILE` does.

    The task runs with the import path and working directory of the driver
    that scheduled it. do_print prints a failure's traceback to stderr;
    do_raise re-raises the task's exception, with its real traceback, after
    the result is written (for a debugger: python -m pdb -m runforrest ...).
    durable=False leaves flushing the result to disk to the caller.
    """
    global _dependency_list
    resultfile = os.path.abspath(resultfile)
    sessionfile = sessionfile and os.path.abspath(sessionfile)  # before the chdir
    home = os.path.dirname(os.path.dirname(os.path.abspath(taskfile)))
    started = time.monotonic()
    header, record, damaged = {}, b'', False
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
        outcome = {'returnvalue': evaluate(task)}
    except BaseException as error:
        if isinstance(error, TaskFileError) and error.reason == 'missing':
            raise
        outcome = {'errorvalue': error, 'traceback': _format_traceback(error)}
    runtime = time.monotonic() - started
    try:
        _write_result(resultfile, header, record, outcome, durable,
                      runtime=runtime, damaged=damaged)
    except OSError as failure:  # a full disk, say: a smaller result may still fit
        outcome = {'errorvalue': OSError(failure.errno, f'cannot write the result to '
                                         f'{resultfile}: {failure.strerror}'),
                   'traceback': None}
        _write_result(resultfile, header, record, outcome, durable,
                      runtime=runtime, damaged=damaged)
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

    def __init__(self, todo, result, output, deadline):
        self.todo, self.result, self.output = todo, result, output
        self.started = time.monotonic()
        self.deadline = deadline and self.started + deadline
        self.pid = None
        self.cause = None  # why runforrest killed it, if it did
        self.refusals = 0  # times the system had no process for it


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
        # request pipe closes; it then kills its children.
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'runforrest', '--forkserver',
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
        for fd in (self.channel, self.pending):
            selector.register(fd, 1, self._read_events)

    def start(self, job):
        import select
        handed = self._hand_out(job)
        if not handed:
            self._request(2)
        while not handed:
            select.select([self.channel], [], [])
            refused = self._receive()
            handed = self._hand_out(job)
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

    def _hand_out(self, job):
        """Send job to the first standby that is alive; False if none is."""
        import json
        import socket
        while self.standbys:
            pid, connection = self.standbys.popleft()
            output = self.outputs.open(job.output)
            try:
                socket.send_fds(connection, [json.dumps([job.todo, job.result]).encode()],
                                [output])
            except OSError:  # that standby died; the template reports it
                self.outputs.release(output, job.output)
                connection.close()
                continue
            finally:
                self._request()  # to replace it, alive or not; after the task is on its way
            job.pid = pid
            self.jobs[pid] = job
            self.files[pid] = output, job.output
            self.reports[pid] = connection
            self.selector.register(connection, 1, lambda: self._reported(pid, connection))
            return True
        return False

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
        todo, result = json.loads(message)
        os.dup2(fds[0], 1)
        os.dup2(fds[0], 2)
        os.close(fds[0])
        if 'numpy.random' in sys.modules:  # Python's own random reseeds itself
            sys.modules['numpy.random'].seed()
        code = 0 if execute(todo, result, sessionfile=sessionfile, durable=False) else 1
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

    def _launch(self, job):
        try:
            self.launcher.start(job)
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
        if self.abandon_unless and not os.path.exists(self.abandon_unless):
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
        self.unfinished = set(unfinished)  # the names this run has yet to file
        self.missing = {}  # waiting task: how many of its dependencies are not done yet
        self.dependents = {}  # task: the waiting tasks that depend on it
        self.unrun = unrun

    def __len__(self):
        """How many tasks wait."""
        return len(self.missing)

    def add(self, name):
        """Take in a todo task of the run; return whether it may start now."""
        self.unfinished.add(name)
        try:
            after = _header_of(self.tasklist._path('todo', name)).get('after', ())
        except (OSError, TaskFileError):
            return True  # its process will say what is wrong with its file
        waiting = [other for other in after if other in self.unfinished]
        for other in after:
            if other not in self.unfinished and not os.path.exists(self.tasklist._path('done', other)):
                self._fail(name, other)
                return False
        if not waiting:
            return True
        self.missing[name] = len(waiting)
        for other in waiting:
            self.dependents.setdefault(other, []).append(name)
        return False

    def filed(self, name, done):
        """The task name was filed in done/ (or fail/): return the tasks that
        may start now."""
        self.unfinished.discard(name)
        ready = []
        for dependent in self.dependents.pop(name, ()):
            if dependent not in self.missing:
                continue  # failed already, for another dependency
            if not done:
                del self.missing[dependent]
                self._fail(dependent, name)
                continue
            self.missing[dependent] -= 1
            if not self.missing[dependent]:
                del self.missing[dependent]
                ready.append(dependent)
        return ready

    def stuck(self):
        """Fail the tasks that wait for something that this run will never
        file (a cycle, made by hand), so that the run ends."""
        for name in list(self.missing):
            del self.missing[name]
            self._fail(name, None)
        self.dependents.clear()

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
    file has moved to done/ or fail/. `len()` is how many tasks the run
    yields, counted from file names, so `tqdm(tasklist.run())` works.

    nprocesses: tasks running at once (default: the CPUs this process may use).
    print_errors: print the traceback of each failure as it happens.
    save_session: make the driver's __main__ globals available to tasks.
    autokill: SIGKILL the process group of a task that runs longer than
        this many seconds; it fails with `TaskTimeout`.
    memory_limit: bytes, or a size such as '2G': SIGKILL the process group
        of a task whose resident memory exceeds it; it fails with
        `TaskOutOfMemory`. Measured five times a second.
    retries: run a task that crashed or was killed again, up to this many
        more times, before it counts as failed.
    progress: show done, failed and running counts, rate and ETA.
    start_method: 'forkserver' (fork each task from a template process that
        started once, the default) or 'spawn' (a fresh interpreter per task).
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

    def __len__(self):
        return len(set(self.tasklist._names('todo')) | set(self.tasklist._names('collect')))

    def __iter__(self):
        return self._drive()

    def _drive(self):
        import threading
        from collections import deque
        tasklist = self.tasklist
        tasklist._make_layout()
        with tasklist._driver_lock() as lock:
            backend = self._backend()  # a forkserver starts while the list syncs
            report, settling, filed = None, None, []
            spares, running = deque(), set()  # see TaskList._settle
            try:
                tasklist.flush()
                os.makedirs(tasklist._folder('output'), exist_ok=True)
                leftovers = tasklist._tidy()
                in_flight = backend.adopt(tasklist._names('running'))
                skip = set(leftovers) | in_flight
                todo = [name for name in tasklist._names('todo') if name not in skip]
                finished = deque(leftovers)  # to file and yield
                dependencies = _Dependencies(tasklist, [*todo, *skip], unrun=finished)
                pending = deque(name for name in todo if dependencies.add(name))
                joined = tasklist._joining = []
                report = _Report(tasklist, len(todo) + len(skip), len(in_flight),
                                 self.print_errors, self.progress, lock.publish)
                attempts = {}
                settled = time.monotonic()

                def fill():
                    for name in joined:
                        report.joined()
                        if dependencies.add(name):
                            pending.append(name)
                    joined.clear()
                    while pending and backend.has_room():
                        name = pending.popleft()
                        tasklist._reuse(spares, name)
                        backend.start(name)
                        running.add(name)
                        report.started(name)
                    report.waiting(len(dependencies))

                fill()
                while True:
                    while finished:
                        name = finished.popleft()
                        task, done = self._collect(name, report)
                        filed.append(name)
                        # What waited for it goes first: it is nearer the end.
                        pending.extendleft(reversed(dependencies.filed(name, done)))
                        yield task
                        del task  # hold one result at a time, however large
                    fill()  # the loop's body may have scheduled more
                    if not backend.busy():
                        if not len(dependencies):
                            break
                        dependencies.stuck()
                        continue
                    for name in backend.wait():
                        running.discard(name)
                        report.ended(name)
                        if self._retry(name, attempts):
                            pending.append(name)
                            report.retried(name)
                        else:
                            finished.append(name)
                    fill()  # first: reading and yielding a result must not keep a slot idle
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

    def _backend(self):
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
        return _LocalBackend(self.tasklist, self.nprocesses, _Supervisor(
            self.start_method, self.preload, self.autokill, self.memory_limit, sessionfile))

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
        """File a result, and return its task, with the outcome read when it
        is first asked for, and whether it is done."""
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
    """Runs tasks on this machine, through a `_Supervisor`."""

    def __init__(self, tasklist, nprocesses, supervisor):
        self.tasklist, self.nprocesses, self.supervisor = tasklist, nprocesses, supervisor

    def adopt(self, marked):
        for name in marked:  # marks of a driver that died; its tasks died with it
            _unlink(self.tasklist._path('running', name))
        return set()

    def busy(self):
        return len(self.supervisor) > 0

    def has_room(self):
        return len(self.supervisor) < self.nprocesses

    def start(self, name):
        tasklist = self.tasklist
        self.supervisor.start(tasklist._path('todo', name), tasklist._path('collect', name),
                              tasklist._path('output', name))

    def wait(self):
        return [_name_of(path) for path in self.supervisor.wait()]

    def close(self):
        self.supervisor.close()


def _mark_running(tasklist, name, where):
    with open(tasklist._path('running', name), 'w') as file:
        file.write(where)


class _Report:
    """Where a run tells what happens: a line per start, success and failure
    and each task's output, to the logfile if there is one, else the
    terminal; failures' tracebacks with print_errors; a progress view; and
    the count of running tasks, which `publish` passes on to `status`."""

    def __init__(self, tasklist, total, running, print_errors, progress, publish):
        self.tasklist, self.print_errors, self.publish = tasklist, print_errors, publish
        self.log = open(tasklist.logfile, 'a', buffering=1) if tasklist.logfile else None
        self.view = _progress_view(total) if progress else None
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

    def ended(self, name):
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
        elif self.view:
            self.view.write(text, stream)
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
    most once a second."""

    def __init__(self, total, stream):
        self.total, self.stream = total, stream
        self.terminal = stream.isatty()
        self.began = self.shown = time.monotonic()
        self.text = ''

    def update(self, done, failed, running, waiting):
        now = time.monotonic()
        finished = done + failed
        rate = finished / max(now - self.began, 1e-9)
        eta = (self.total - finished) / rate if rate else float('inf')
        eta = time.strftime('%H:%M:%S', time.gmtime(eta)) if eta < 1e6 else '?'
        counts = (f'{finished}/{self.total} done {done}, failed {failed}, '
                  f'running {running}{f", waiting {waiting}" if waiting else ""}, '
                  f'{rate:.1f} tasks/s, ETA {eta}')
        if self.terminal:
            filled = int(20 * finished / self.total) if self.total else 20
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

def pmap(fun, items, nprocesses=None, *, star=False, kwstar=False, args=(),
         kwargs=None, errors='raise', directory=None, **run_options):
    """Like `map(fun, items)`, with each call in a process of its own.

    Yields the results in the order of items, each as soon as it and those
    before it are ready. fun may be a lambda or a closure.

    >>> list(pmap(lambda x: x * x, range(4), nprocesses=2))
    [0, 1, 4, 9]

    How an item becomes arguments (args and kwargs are fixed extras):
        star=False, kwstar=False: fun(item, *args, **kwargs)
        star=True:                fun(*item, *args, **kwargs)
        kwstar=True:              item is (value, dict): fun(value, *args, **kwargs, **dict)
        star=True, kwstar=True:   item is (values, dict): fun(*values, *args, **kwargs, **dict)

    errors='raise' raises the first failure (in input order), with the
    task's traceback as its cause; errors='return' yields the error in
    place of the result. The tasks live in a temporary task list, or in
    `directory`, which must not exist yet and is kept afterwards.
    run_options go to `TaskList.run`, e.g. autokill=60 or memory_limit='2G'.
    """
    if errors not in ('raise', 'return'):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    if directory is None:
        import tempfile
        directory = tempfile.mkdtemp(prefix='runforrest-pmap-')
        keep = False
    else:
        keep = True
    with TaskList(directory, exist_ok=not keep, post_clean=not keep) as tasklist:
        for index, item in enumerate(items):
            values, keywords = (item if kwstar else (item, {}))
            values = tuple(values) if star else (values,)
            tasklist.schedule(defer(fun, *values, *args, **{**(kwargs or {}), **keywords}),
                              metadata=index)
        ready, wanted = {}, 0
        for task in tasklist.run(nprocesses, **run_options):
            ready[task.metadata] = task
            while wanted in ready:
                task = ready.pop(wanted)
                wanted += 1
                if task.errorvalue is None:
                    yield task.returnvalue
                elif errors == 'return':
                    yield task.errorvalue
                else:
                    if task.traceback:
                        task.errorvalue.__cause__ = _RemoteTraceback(task.traceback)
                    raise task.errorvalue


class _RemoteTraceback(Exception):
    """The traceback of an exception, as it was raised in the task process."""

    def __str__(self):
        return '\n' + self.args[0]


# ---------------------------------------------------------------------------
# More than one machine
# ---------------------------------------------------------------------------
#
# A backend has the local one's shape: adopt(marked names) -> names still in
# flight from an earlier driver, busy(), has_room(), start(name), wait() ->
# names whose result is in collect/, close(). On the machine that runs the
# task, `_supervise` does what the local supervisor does for one task.

_ABANDON_POLL = 0.5  # seconds between checks whether the driver gave up on a task


def _supervise(todo, result, output=None, autokill=None, memory_limit=None,
               sessionfile=None, abandon_unless=None):
    """Run one task in a process of its own, with autokill and the memory
    limit, and wait for it: what an executor's worker or a SLURM job does.
    Kills the task, recording nothing, if the file abandon_unless vanishes.
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
    return parser


def main(argv=None):
    """`python -m runforrest` and the `runforrest` command; see --help."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['--forkserver']:
        return _serve_forks(int(argv[1]), int(argv[2]), argv[3])
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
            after = _header_of(tasklist._path('todo', name)).get('after', ())
        except (OSError, TaskFileError):
            continue
        data['waiting'] += any(other not in done for other in after)
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
            'runtime': header.get('runtime'), 'error': header.get('error')}
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
    data['dependencies'] = header.get('after', [])
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
    chosen = [getattr(args, state) for state in STATES]
    if not any(chosen):
        chosen = [True] * len(STATES)
    tasklist.clean(*chosen)
    print(f'removed {", ".join(s for s, yes in zip(STATES, chosen) if yes)} tasks of {tasklist.directory}')
    return 0


_COMMANDS = {'status': _status_command, 'run': _run_command, 'retry': _retry_command,
             'show': _show_command, 'clean': _clean_command}
