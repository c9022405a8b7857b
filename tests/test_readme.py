"""The examples in README.md and in the docstrings run, and print what they say."""

import doctest
import os

import runforrest

README = os.path.join(os.path.dirname(__file__), os.pardir, 'README.md')


def test_readme_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(os.path.abspath(README), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20
    assert result.failed == 0


def test_readme_leads_with_the_two_commands():
    with open(README) as file:
        text = file.read()
    commands = [block.split('\n', 1)[1].strip() for block in text.split('```bash')[1:3]]
    commands = [command.split('```')[0].strip() for command in commands]
    with open(os.path.join(os.path.dirname(README), '.ci', 'run')) as file:
        ci = ' '.join(file.read().replace('\\\n', ' ').split())
    assert 'examples/quickstart.py' in commands[0]
    # CI runs the README's test command on each supported Python, each in a venv of its own.
    assert 'pytest' in commands[1]
    assert commands[1].replace('python3', '"$python"').replace('.venv', '"$venv"') in ci


def test_docstring_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(runforrest, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5
    assert result.failed == 0
