"""Keys: what a task's result depends on, computed from code, values, files and dependencies."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import types

import pytest

import runforrest
from runforrest import Call, File, NotKeyable, defer
from runforrest import _code_key, _task_key, _value_key

from conftest import wait_for

numpy = pytest.importorskip('numpy')

_loaded = 0


def load(directory, source, name='project', same_name=False):
    """Import source, written to directory/name.py, as a module of its own:
    each version of a project's file is a new module, as in a fresh run.
    Their names differ, unless same_name, as they would not in two runs."""
    global _loaded
    _loaded += 1
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f'{name}.py'
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name if same_name else f'{name}_{_loaded}', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Scripts import this runforrest, installed or not.
ENVIRONMENT = {**os.environ, 'PYTHONPATH': os.pathsep.join(
    filter(None, [os.path.dirname(os.path.abspath(runforrest.__file__)),
                  os.environ.get('PYTHONPATH')]))}


def run_script(directory, source, *arguments, seed='0'):
    """Run source as a script, python script.py, in a fresh interpreter; what
    it prints as JSON."""
    script = directory / 'script.py'
    script.write_text(textwrap.dedent(source))
    result = subprocess.run([sys.executable, 'script.py', *arguments], cwd=directory,
                            capture_output=True, text=True, timeout=120,
                            env={**ENVIRONMENT, 'PYTHONHASHSEED': seed})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


PROJECT = '''
import math

SCALE = 3
NAMES = {'alpha', 'beta', 'gamma'}


def traced(fun):
    return fun


def helper(x):
    """Doubles."""
    return 2 * x


def compute(x, offset=1):
    """Computes."""
    # a comment
    return helper(x) * SCALE + offset + math.sqrt(x)


class Model:
    rate = 0.5

    def predict(self, x):
        return compute(x) * self.rate
'''


def key_of_compute(directory, source, name='project'):
    return _code_key(load(directory, source, name).compute)


# -- code ----------------------------------------------------------------------

SCRIPT = PROJECT + '''
import functools, json, sys
import runforrest
from runforrest import defer, _code_key, _task_key, _value_key

tasks = {
    'compute': defer(compute, 4),
    'method': defer(Model().predict, 2),
    'lambda': defer(lambda x: helper(x) + SCALE, 1),
    'partial': defer(functools.partial(compute, offset=5), 2),
    'builtin': defer(len, 'abc'),
    'chain': defer(compute, defer(helper, 3)),
    'data': defer(sorted, NAMES, key=str.upper),
    'dict': defer(dict, {'b': [1, 2.5, None], 'a': (b'x', 'y')}),
}
print(json.dumps({name: _task_key(task) for name, task in tasks.items()}))
'''


def test_a_fresh_interpreter_computes_the_same_keys_for_an_unchanged_script(tmp_path):
    first = run_script(tmp_path, SCRIPT, seed='1')
    second = run_script(tmp_path, SCRIPT, seed='2')  # another hash seed: sets iterate otherwise
    assert first == second
    assert len(set(first.values())) == len(first)


def test_changes_to_the_code_change_its_key(tmp_path):
    original = key_of_compute(tmp_path / 'a', PROJECT)
    changes = {
        'a statement': ('return helper(x) * SCALE + offset', 'return helper(x) * SCALE - offset'),
        'a constant in the body': ('return 2 * x', 'return 3 * x'),
        'a default': ('offset=1', 'offset=2'),
        'a helper it calls': ('"""Doubles."""\n    return 2 * x',
                              '"""Doubles."""\n    return x + x'),
        'a module constant it reads': ('SCALE = 3', 'SCALE = 4'),
        'a decorator': ('def compute', '@traced\ndef compute'),
    }
    for what, (old, new) in changes.items():
        assert old in PROJECT, what
        changed = key_of_compute(tmp_path / what.replace(' ', '_'), PROJECT.replace(old, new))
        assert changed != original, what


def test_code_in_another_module_of_the_project_counts(tmp_path):
    user = '''
        import helpers
        from helpers import offset

        def compute(x):
            return helpers.scale(x) + offset(x)
    '''
    keys = []
    for scale, offset in (('2', '1'), ('2', '1'), ('3', '1'), ('2', '0')):
        load(tmp_path / f'helpers{len(keys)}', f'''
            def scale(x):
                return x * {scale}

            def offset(x):
                return {offset}
        ''', 'helpers', same_name=True)
        keys.append(key_of_compute(tmp_path / f'user{len(keys)}', user))
    del sys.modules['helpers']
    assert keys[0] == keys[1]
    assert len(set(keys)) == 3


def test_docstrings_comments_blank_lines_and_moves_do_not_change_the_key(tmp_path):
    original = key_of_compute(tmp_path / 'a', PROJECT)
    cosmetic = {
        'a docstring': ('"""Computes."""', '"""Computes, and says so at length."""'),
        'no docstring': ('"""Computes."""', ''),
        "a helper's docstring": ('"""Doubles."""', '"""Twice x."""'),
        'a comment': ('# a comment', '# another comment, longer'),
        'blank lines': ('def helper', '\n\n\n\ndef helper'),
        'code above it': ('import math', 'import math\n\n\ndef unrelated():\n    return 1\n'),
        'a move within the file': (None, None),
    }
    for what, (old, new) in cosmetic.items():
        if old is None:  # compute first, helper and the rest after it
            start, end = PROJECT.index('def compute'), PROJECT.index('class Model')
            source = PROJECT[:PROJECT.index('def helper')] + PROJECT[start:end] \
                + PROJECT[PROJECT.index('def helper'):start] + PROJECT[end:]
        else:
            assert old in PROJECT, what
            source = PROJECT.replace(old, new)
        assert key_of_compute(tmp_path / what.replace(' ', '_'), source) == original, what


def test_library_code_counts_by_its_name_not_its_internals(tmp_path):
    installed = tmp_path / 'venv' / 'lib' / 'site-packages'
    user = '''
        import somelib

        def compute(x):
            return somelib.transform(x) + 1
    '''
    keys = []
    for body in ('return x * 2', 'return x * 3'):
        (installed / 'somelib').mkdir(parents=True, exist_ok=True)
        (installed / 'somelib' / '__init__.py').write_text(f'def transform(x):\n    {body}\n')
        sys.path.insert(0, str(installed))
        try:
            sys.modules.pop('somelib', None)
            keys.append(key_of_compute(tmp_path / f'user{len(keys)}', user))
        finally:
            sys.path.remove(str(installed))
            sys.modules.pop('somelib', None)
    assert keys[0] == keys[1]

    # The standard library's too: a function of textwrap.py's with other code
    # in it counts as textwrap.dedent does.
    import textwrap as stdlib_module
    other = compile('def dedent(text):\n    return 42\n', stdlib_module.__file__, 'exec')
    impostor = types.FunctionType(other.co_consts[0], vars(stdlib_module), 'dedent')
    assert _code_key(impostor) == _code_key(stdlib_module.dedent)
    # ... whereas the same in the user's file counts by its code.
    mine = load(tmp_path / 'mine', 'def dedent(text):\n    return 42\n')
    assert _code_key(mine.dedent) != _code_key(stdlib_module.dedent)


def test_recursion_lambdas_methods_classes_and_partials(tmp_path):
    source = textwrap.dedent('''
        import functools

        def even(n):
            return n == 0 or odd(n - 1)

        def odd(n):
            return n != 0 and even(n - 1)

        def factorial(n):
            return 1 if n < 2 else n * factorial(n - 1)

        pair = (lambda x: x + 1, lambda x: x + 2)

        class Counter:
            def __init__(self, start):
                self.start = start

            def count(self, n):
                return self.start + n

        def scaled(x, factor):
            return x * factor

        double = functools.partial(scaled, factor=2)

        def scaler(factor):
            def scale(x):
                return x * factor
            return scale
    ''')
    one = load(tmp_path / 'one', source)
    two = load(tmp_path / 'two', source.replace('return n != 0 and', 'return n > 0 and'))
    three = load(tmp_path / 'three', source.replace('pair =', '\n\npair ='))
    assert _code_key(one.even) != _code_key(two.even)  # through the cycle
    assert _code_key(one.factorial) == _code_key(two.factorial)
    assert _code_key(one.pair[0]) != _code_key(one.pair[1])  # two lambdas on one line
    assert _code_key(one.pair[0]) == _code_key(three.pair[0])  # moved to another line
    assert _code_key(one.Counter(1).count) != _code_key(one.Counter(2).count)
    assert _value_key(one.Counter(1)) == _value_key(three.Counter(1))
    changed = load(tmp_path / 'four', source.replace('self.start + n', 'self.start - n'))
    assert _value_key(one.Counter(1)) != _value_key(changed.Counter(1))
    assert _code_key(one.double) != _code_key(functools_partial(one.scaled, factor=3))
    assert _code_key(one.double) == _code_key(three.double)
    assert _code_key(one.scaler(2)) == _code_key(three.scaler(2))  # closures
    assert _code_key(one.scaler(2)) != _code_key(one.scaler(3))


def test_a_function_behind_a_library_decorator_counts_by_its_code(tmp_path):
    source = textwrap.dedent('''
        import contextlib
        import functools

        @functools.lru_cache(maxsize=None)
        def cached(x):
            return x + 1

        @contextlib.contextmanager  # a function of contextlib's, wrapping this one
        def opened(x):
            yield x + 1
    ''')
    one = load(tmp_path / 'one', source, 'decorated', same_name=True)
    two = load(tmp_path / 'two', source.replace('x + 1', 'x + 2'), 'decorated', same_name=True)
    three = load(tmp_path / 'three', source.replace('import functools', 'import functools\n'),
                 'decorated', same_name=True)
    assert _code_key(one.cached) != _code_key(two.cached)
    assert _code_key(one.cached) == _code_key(three.cached)
    assert _code_key(one.opened) != _code_key(two.opened)
    assert _code_key(one.opened) == _code_key(three.opened)


def test_classes_that_name_each_other_key_the_same_whichever_comes_first(tmp_path):
    source = '''
        class Tree:
            def grow(self):
                return Leaf()

        class Leaf:
            kind = 'green'

            def parent(self):
                return Tree()
    '''
    one, two = load(tmp_path / 'one', source), load(tmp_path / 'two', source)
    tree_first = [_value_key(one.Tree), _value_key(one.Leaf)]
    leaf_first = [_value_key(two.Leaf), _value_key(two.Tree)][::-1]
    assert tree_first == leaf_first
    changed = load(tmp_path / 'three', source.replace('return Tree()', 'return None'))
    assert _value_key(changed.Tree) != tree_first[0]  # through the cycle
    # Changed in this process: a method, an attribute.
    one.Leaf.parent = lambda self: None
    assert _value_key(one.Tree) != tree_first[0]
    two.Leaf.kind = 'brown'
    assert _value_key(two.Tree) != tree_first[0]


def functools_partial(*args, **kwargs):
    import functools
    return functools.partial(*args, **kwargs)


def test_globals_changed_in_this_process_are_seen(tmp_path):
    module = load(tmp_path, '''
        SCALE = 3
        SETTINGS = {'mode': 'fast'}

        def helper(x):
            return x

        def scaled(x):
            return helper(x) * SCALE

        def configured(x):
            return scaled(x), SETTINGS['mode']
    ''')
    keys = {name: [_code_key(getattr(module, name))] for name in ('scaled', 'configured')}

    def changed(name):
        keys[name].append(_code_key(getattr(module, name)))
        return len(set(keys[name])) == len(keys[name])

    module.SCALE = 4
    assert changed('scaled') and changed('configured')
    module.helper = lambda x: -x
    assert changed('scaled') and changed('configured')
    del module.helper  # missing: NameError when it runs
    assert changed('scaled') and changed('configured')
    module.SETTINGS['mode'] = 'slow'  # in place
    assert changed('configured')
    module.helper = keys  # a value now, a dict; changed in place
    assert changed('scaled')
    keys['another'] = []
    assert changed('scaled')


def test_resources_that_code_reads_count_by_their_type(tmp_path):
    module = load(tmp_path, '''
        import threading

        LOCK = threading.Lock()
        LIMIT = 10

        def compute(x):
            with LOCK:
                return min(x, LIMIT)
    ''')
    key = _code_key(module.compute)
    module.LOCK = threading.Lock()
    assert _code_key(module.compute) == key
    module.LIMIT = 11
    assert _code_key(module.compute) != key


def test_functions_of_main_key_the_same_after_a_trip_through_dill(tmp_path):
    keys = run_script(tmp_path, '''
        import json, sys
        import dill
        from runforrest import _code_key

        LIMIT = 7

        def helper(x):
            return min(x, LIMIT)

        def compute(x):
            """Of __main__."""
            return helper(x) + 1

        with open('compute.pkl', 'wb') as file:
            dill.dump(compute, file, recurse=True)
        print(json.dumps({'here': _code_key(compute)}))
    ''')
    loaded = subprocess.run(
        [sys.executable, '-c', 'import dill, json\n'
         'from runforrest import _code_key\n'
         'compute = dill.load(open("compute.pkl", "rb"))\n'
         'print(json.dumps({"there": _code_key(compute), "value": compute(10)}))'],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENVIRONMENT)
    assert loaded.returncode == 0, loaded.stderr
    there = json.loads(loaded.stdout)
    assert there['value'] == 8
    assert there['there'] == keys['here']


# -- values ------------------------------------------------------------------

def test_plain_data_counts_by_value():
    assert _value_key([1, 2.0, 'three', b'four', None, True]) == \
        _value_key([1, 2.0, 'three', b'four', None, True])
    distinct = [1, 1.0, True, '1', b'1', (1,), [1], {1}, frozenset({1}), {1: None},
                -0.0, 0.0, None, 10**30, 1 + 0j, bytearray(b'1')]
    assert len({_value_key(value) for value in distinct}) == len(distinct)
    assert _value_key({'x', 'y', 'z'}) == _value_key({'z', 'y', 'x'})
    assert _value_key({'a': 1, 'b': 2}) != _value_key({'b': 2, 'a': 1})
    looped = [1]
    looped.append(looped)
    assert _value_key(looped) == _value_key(looped)


def test_arrays_count_by_dtype_shape_and_bytes(tmp_path):
    array = numpy.arange(12, dtype='float64').reshape(3, 4)
    assert _value_key(array) == _value_key(array.copy())
    assert _value_key(array) != _value_key(array.astype('float32'))
    assert _value_key(array) != _value_key(array.reshape(4, 3))
    changed = array.copy()
    changed[1, 1] = -1
    assert _value_key(array) != _value_key(changed)
    assert _value_key(array[:, ::2]) == _value_key(numpy.ascontiguousarray(array[:, ::2]))
    mapped = numpy.memmap(tmp_path / 'array.bin', dtype='float64', mode='w+', shape=(3, 4))
    mapped[:] = array
    assert _value_key(mapped) == _value_key(numpy.memmap(tmp_path / 'array.bin', dtype='float64',
                                                         mode='r', shape=(3, 4)))
    assert _value_key(numpy.ma.masked_array(array, array > 5)) != _value_key(
        numpy.ma.masked_array(array, array > 6))
    assert _value_key(numpy.array([1, 'a', None], dtype=object)) == \
        _value_key(numpy.array([1, 'a', None], dtype=object))


def test_an_array_shared_by_many_tasks_is_hashed_once():
    shared = numpy.random.default_rng(1).random(1 << 20)  # 8 MB
    first = _task_key(Call(sum, (shared, 0)))
    cached = runforrest._ARRAY_DIGESTS[id(shared)]
    assert cached[0]() is shared
    # What the cache says is what the next keys are made of: they do not
    # hash the array again (a digest that no hashing would give shows it).
    runforrest._ARRAY_DIGESTS[id(shared)] = (cached[0], cached[1], b'\0' * 32)
    keys = {_task_key(Call(sum, (shared, number))) for number in range(1000)}
    assert len(keys) == 1000
    assert _task_key(Call(sum, (shared, 0))) != first
    runforrest._ARRAY_DIGESTS[id(shared)] = cached
    assert _task_key(Call(sum, (shared, 0))) == first
    # Changed in place, it is hashed again; gone, it leaves the cache.
    shared[:] = 0.5
    assert _task_key(Call(sum, (shared, 0))) != first
    identity = id(shared)
    del shared
    assert identity not in runforrest._ARRAY_DIGESTS


# -- files -------------------------------------------------------------------

def test_a_file_counts_by_its_path_and_content_not_its_timestamps(tmp_path):
    data = tmp_path / 'data.csv'
    data.write_bytes(b'1,2,3\n' * 1000)
    task = defer(len, File(str(data)))
    assert runforrest.evaluate(task) == len(str(data))  # the task receives the path
    key = _task_key(task)

    os.utime(data, ns=(1, 1))  # touched
    assert _task_key(defer(len, File(str(data)))) == key
    shutil.copy(data, tmp_path / 'copy.csv')  # copied away and back: a new file, new times
    os.replace(tmp_path / 'copy.csv', data)
    assert _task_key(defer(len, File(str(data)))) == key

    status = os.stat(data)
    data.write_bytes(b'1,2,4\n' * 1000)  # same size, and the old modification time
    os.utime(data, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert _task_key(defer(len, File(str(data)))) != key
    assert _task_key(defer(len, File(str(data)))) != _task_key(defer(len, File(data)))


def test_the_record_of_hashed_files_spares_hashing_unchanged_files(tmp_path):
    data = tmp_path / 'data.bin'
    data.write_bytes(os.urandom(1 << 20))
    files = {}
    digest = runforrest._file_digest(data, files)
    assert files == {}  # changed in the last two seconds: not to be trusted yet
    os.utime(data, ns=(10**18, 10**18))
    assert runforrest._file_digest(data, files) == digest
    assert list(files) == [str(data)]
    assert files[str(data)][-1] == digest
    # An unchanged file is not read again: the record is what counts.
    files[str(data)] = (*files[str(data)][:-1], b'recorded')
    assert runforrest._file_digest(data, files) == b'recorded'
    os.utime(data, ns=(10**18, 10**18 + 1))  # touched: hashed again
    assert runforrest._file_digest(data, files) == digest
    # Other bytes of the same size, with the recorded modification time put
    # back (as cp -p or rsync -t do): the change time tells.
    os.utime(data, ns=(10**18, 10**18))
    runforrest._file_digest(data, files)
    recorded_change = files[str(data)][2]
    other = os.urandom(1 << 20)

    def rewritten():  # the change time has a tick of some milliseconds
        data.write_bytes(other)
        os.utime(data, ns=(10**18, 10**18))
        return os.stat(data).st_ctime_ns != recorded_change

    wait_for(rewritten, 'a change time after the recorded one')
    assert runforrest._file_digest(data, files) == runforrest._file_digest(data) != digest


def test_a_missing_input_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.csv'):
        _task_key(defer(len, File(tmp_path / 'missing.csv')))
    with pytest.raises(TypeError, match='path'):
        File(42)


# -- refusals and the escape hatch -------------------------------------------

class Noisy:
    """Pickles differently every time."""

    def __reduce__(self):
        return Noisy, (), {'nonce': os.urandom(8)}


def compute(*args, **kwargs):
    return args, kwargs


def test_what_cannot_be_keyed_is_refused_naming_the_argument(tmp_path):
    handle = open(tmp_path / 'file.txt', 'w')
    connection = socket.socket()
    try:
        unkeyable = {
            'lock': (threading.Lock(), 'lock'),
            'open file': (handle, 'TextIOWrapper'),
            'socket': (connection, 'socket'),
            'generator': ((n for n in range(3)), 'generator'),
            'changing pickle': (Noisy(), 'Noisy'),
        }
        for what, (value, type_name) in unkeyable.items():
            with pytest.raises(NotKeyable) as caught:
                _task_key(Call(compute, (1, value)))
            assert f'argument 1 of compute: a {type_name}' in str(caught.value) \
                or f'argument 1 of compute: an {type_name}' in str(caught.value), what
            assert 'pass plain values instead' in str(caught.value)
            assert caught.value.type_name == type_name
            with pytest.raises(NotKeyable) as caught:
                _task_key(Call(compute, (), {'settings': {'inner': [0, value]}}))
            assert caught.value.where == "argument settings= of compute, at ['inner'][1]", what
    finally:
        handle.close()
        connection.close()
    # defer() takes a lock or an open file, which dill can carry; a key cannot.
    with open(tmp_path / 'file.txt') as handle:
        for value in (threading.Lock(), handle):
            with pytest.raises(NotKeyable, match='cannot key argument 0 of compute'):
                _task_key(defer(compute, value))
    with pytest.raises(NotKeyable, match=r'item 1 of a list given to a task'):
        _task_key(defer(compute, [defer(1), threading.Lock()]))


def test_extra_values_change_the_key():
    task = defer(compute, 1)
    assert _task_key(task, extra='v1') == _task_key(defer(compute, 1), extra='v1')
    assert len({_task_key(task), _task_key(task, extra='v1'), _task_key(task, extra='v2')}) == 3
    with pytest.raises(NotKeyable, match="the task's extra key values"):
        _task_key(task, extra=[threading.Lock()])


def test_extra_files_count_by_content(tmp_path):
    tool = tmp_path / 'tool.cfg'
    tool.write_text('threshold = 1')
    key = _task_key(defer(compute, 1), extra=File(tool))
    tool.write_text('threshold = 2')
    assert _task_key(defer(compute, 1), extra=File(tool)) != key


# -- task graphs -------------------------------------------------------------

def test_a_task_key_covers_its_graph_and_dependencies_by_their_keys():
    prepared = defer(compute, 1)
    key = _task_key(defer(compute, prepared, n=2))
    assert _task_key(defer(compute, defer(compute, 1), n=2)) == key
    assert _task_key(defer(compute, defer(compute, 2), n=2)) != key
    assert _task_key(defer(compute, prepared, n=3)) != key
    # A dependency scheduled on its own counts by its key; its graph is not
    # walked again: an unkeyable argument in it is not even looked at.
    upstream = Call(compute, (threading.Lock(),))
    downstream = defer(compute, upstream, n=2)
    with pytest.raises(NotKeyable):
        _task_key(downstream)
    first = _task_key(downstream, {upstream._key: 'a' * 32})
    assert first == _task_key(defer(compute, upstream, n=2), {upstream._key: 'a' * 32})
    assert first != _task_key(downstream, {upstream._key: 'b' * 32})
    # Parts of a task, and keyword order.
    assert _task_key(prepared[0]) != _task_key(prepared[1])
    assert _task_key(prepared.args) != _task_key(prepared.kwargs)
    assert _task_key(defer(compute, a=1, b=2)) == _task_key(defer(compute, b=2, a=1))


def test_a_deep_chain_is_keyed_without_recursion():
    task = defer(0)
    for _ in range(20_000):
        task = defer(abs, task)
    assert len(_task_key(task)) == 32
