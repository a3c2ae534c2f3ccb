"""The documents' shell commands name scripts that exist and pass them flags they accept.

Commands come from the ```bash blocks of README.md, examples/README.md and docs/*.md (comments dropped,
backslash-continued and quoted multi-line arguments joined, as bash reads them) and from inline code spans that start
with one of our commands. The accepted flags come from the scripts' own parsers, not from the documents: each script
is imported by path and its `parse_args` (or `main`) runs up to argparse's `parse_args`, which hands the parser back
instead of parsing; `mpdit`'s come from `diffusers_mpdit.cli.build_parser()`. A script whose parser cannot be reached
that way is asked with `-h` in a subprocess. Third-party commands are skipped, but the script after
`accelerate launch [its flags]` and `torchrun [its flags]` is checked. Values (paths, ids, placeholders) are not.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from diffusers_mpdit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell"}
# Programs whose own flags are not ours to check (accelerate and torchrun are handled apart: their script is ours).
THIRD_PARTY = {
    ".",
    "apt",
    "apt-get",
    "cd",
    "curl",
    "echo",
    "export",
    "git",
    "hf",
    "huggingface-cli",
    "ls",
    "mkdir",
    "nvidia-smi",
    "pip",
    "pip3",
    "pytest",
    "ruff",
    "source",
    "tensorboard",
    "wget",
}
# A path to one of our scripts, wherever it appears in a command.
SCRIPT_PATH = re.compile(r"(\./)?(benchmarks|examples|scripts|space|src|tests)/[\w./-]*\.(py|sh)|(\./)?scripts/test")
NUMBER = re.compile(r"-\d+(\.\d*)?(e-?\d+)?")
OPERATORS = set("();<>|&")


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    words: tuple[str, ...]
    fenced: bool  # from a ```bash block (a complete command) rather than an inline code span

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {shlex.join(self.words)}"


# Reading commands out of the documents.


def shell_lines(text: str, first_line: int = 1) -> list[tuple[int, str]]:
    """Split a shell block into (line number, command line) as bash reads it: a `#` that starts a word begins a
    comment, a backslash-newline joins two lines, and a newline inside quotes stays inside the argument."""
    lines, current, quote, line, start = [], [], None, first_line, first_line
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            line += 1
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            if text[i] == "\n":
                line += 1
                current.append(" ")
            else:
                current += [ch, text[i]]
            i += 1
            continue
        elif quote == '"':
            quote = None if ch == '"' else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (not current or current[-1] in " \t;&|("):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif ch == "\n":
            if "".join(current).strip():
                lines.append((start, "".join(current)))
            current, start = [], line
            i += 1
            continue
        current.append(ch)
        i += 1
    if "".join(current).strip():
        lines.append((start, "".join(current)))
    return lines


def simple_commands(command_line: str) -> list[list[str]]:
    """The words of each simple command in a line, split at `&&`, `||`, `;`, `|` and `&`, redirections dropped."""
    lexer = shlex.shlex(command_line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands, words, redirect = [], [], False
    for token in lexer:
        if redirect:
            redirect = False
        elif token in (">", ">>", "<", ">&", "&>"):
            redirect = True
        elif token and set(token) <= OPERATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    return [words for words in commands if words]


def strip_prefix(words: list[str]) -> list[str]:
    """Drop leading environment assignments and `sudo [its flags]`."""
    words = list(words)
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    if words[:1] == ["sudo"]:
        words.pop(0)
        while words and words[0].startswith("-"):
            words.pop(0)
    return words


def is_python(program: str) -> bool:
    return re.fullmatch(r"python[\d.]*", Path(program).name) is not None


def starts_one_of_ours(words: list[str]) -> bool:
    program = words[0]
    return (
        is_python(program)
        or Path(program).name in ("mpdit", "torchrun", "bash", "sh")
        or words[:2] == ["accelerate", "launch"]
        or SCRIPT_PATH.fullmatch(program) is not None
    )


def commands_in(text: str, name: str, inline: bool = True) -> list[Command]:
    """Every shell command of a Markdown document: the ```bash blocks', then those of its inline code spans."""
    commands, prose, block, language, first = [], [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"\s*```\s*([\w-]*)", line)
        if block is None and fence:
            block, language, first = [], fence.group(1).lower(), number + 1
            prose.append("")
        elif block is not None and fence:
            if language in SHELL_LANGUAGES:
                for start, command_line in shell_lines("\n".join(block) + "\n", first):
                    for words in simple_commands(command_line):
                        commands.append(Command(name, start, tuple(words), fenced=True))
            block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    if inline:
        prose_text = "\n".join(prose)
        for span in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose_text):
            line = prose_text.count("\n", 0, span.start()) + 1
            try:
                spans = simple_commands(span.group(1).replace("\n", " "))
            except ValueError:  # an unbalanced quote: code, not a command
                continue
            for words in spans:
                words = strip_prefix(words)
                if words and starts_one_of_ours(words):
                    commands.append(Command(name, line, tuple(words), fenced=False))
    return commands


@functools.cache
def document_commands() -> dict[str, list[Command]]:
    return {str(d.relative_to(ROOT)): commands_in(d.read_text(), str(d.relative_to(ROOT))) for d in DOCUMENTS}


# The flags the scripts accept, from their own parsers.


class _FoundParser(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _hand_back(self, *args, **kwargs):
    raise _FoundParser(self)


def options_of(parser: argparse.ArgumentParser) -> frozenset[str]:
    return frozenset(option for action in parser._actions for option in action.option_strings)


def help_options(path: Path) -> frozenset[str]:
    """The options `script -h` lists (the options section of argparse's help)."""
    result = subprocess.run(
        [sys.executable, str(path), "-h"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{path.relative_to(ROOT)} -h failed: {result.stderr[-2000:]}"
    options, in_options = set(), False
    for line in result.stdout.splitlines():
        if re.fullmatch(r"\S.*:", line):
            in_options = line in ("options:", "optional arguments:")
        elif in_options and re.match(r"  -", line):
            invocation = line.strip().split("  ")[0]
            options.update(part.split()[0] for part in re.split(r",\s+(?=-)", invocation))
    return frozenset(options)


@functools.cache
def script_options(path: Path) -> frozenset[str]:
    """The options a script's parser accepts, built by the script's own code without running the script.

    The script's module and the neighbours it imports are dropped from `sys.modules` afterwards."""
    module_name = "doc_command_" + re.sub(r"\W", "_", str(path.relative_to(ROOT)))
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    sys.path.insert(0, str(path.parent))  # as `python path` would: benchmarks import their neighbours
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = sys.modules[module_name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        entry = getattr(module, "parse_args", None) or getattr(module, "main", None)
        if entry is not None:
            with (
                mock.patch.object(argparse.ArgumentParser, "parse_args", _hand_back),
                mock.patch.object(argparse.ArgumentParser, "parse_known_args", _hand_back),
            ):
                entry()
    except _FoundParser as found:
        return options_of(found.parser)
    except Exception:  # noqa: BLE001 - any other way of not reaching the parser: ask the script itself
        pass
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if name == module_name or Path(file).parent == path.parent:
                del sys.modules[name]
    return help_options(path)


@functools.cache
def mpdit_parser() -> argparse.ArgumentParser:
    return build_parser()


def mpdit_subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in mpdit_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


# Checking one command.


@dataclass(frozen=True)
class Call:
    kind: str  # "script", "mpdit", "no script", "third-party" or "unknown"
    target: str = ""
    args: tuple[str, ...] = ()


def call_of(words: list[str]) -> Call:
    """What a command runs: one of our scripts (with its arguments), `mpdit`, or something else."""
    program, rest = words[0], list(words[1:])
    if is_python(program):
        while rest and rest[0].startswith("-"):
            option = rest.pop(0)
            if option == "-m":
                module = rest.pop(0) if rest else ""
                return Call("mpdit", "", tuple(rest)) if module == "diffusers_mpdit.cli" else Call("third-party")
            if option == "-c":
                return Call("third-party")
            if option in ("-X", "-W") and rest:
                rest.pop(0)
        return Call("script", rest[0], tuple(rest[1:])) if rest else Call("no script")
    if Path(program).name == "mpdit":
        return Call("mpdit", "", tuple(rest))
    if Path(program).name == "torchrun" or words[:2] == ["accelerate", "launch"]:
        rest = rest[1:] if program == "accelerate" else rest
        for i, word in enumerate(rest):  # the launcher's own flags come first; its script is the first .py
            if word.endswith(".py") and not word.startswith("-"):
                return Call("script", word, tuple(rest[i + 1 :]))
        return Call("no script")
    if program == "accelerate" or program in THIRD_PARTY:
        return Call("third-party")
    if program in ("bash", "sh"):
        scripts = [word for word in rest if not word.startswith("-")]
        return Call("script", scripts[0], tuple(rest[rest.index(scripts[0]) + 1 :])) if scripts else Call("no script")
    if "/" in program:
        return Call("script", program, tuple(rest))
    return Call("unknown", program)


def flags_passed(args: tuple[str, ...]) -> list[str]:
    flags = []
    for word in args:
        if word == "--":
            break
        if word.startswith("-") and word != "-" and not NUMBER.fullmatch(word):
            flags.append(word.split("=", 1)[0])
    return flags


def problems_of(command: Command) -> list[str]:
    words = strip_prefix(list(command.words))
    if not words:
        return []
    call = call_of(words)
    problems = [  # scripts named anywhere, e.g. a test file given to pytest; the one run is checked below
        f"{word} does not exist"
        for word in words
        if SCRIPT_PATH.fullmatch(word) and word != call.target and not (ROOT / word).is_file()
    ]
    if call.kind == "unknown" and command.fenced:
        problems.append(f"unknown command {call.target!r} (ours? or add it to THIRD_PARTY)")
    elif call.kind == "no script" and command.fenced:
        problems.append("no script to run")
    elif call.kind == "script":
        path = (ROOT / call.target).resolve()
        if not path.is_file():
            problems.append(f"{call.target} does not exist")
        elif path.suffix == ".py" and flags_passed(call.args):  # a path alone in prose needs no parser
            accepted = script_options(path)
            problems += [
                f"{call.target} has no flag {flag}" for flag in flags_passed(call.args) if flag not in accepted
            ]
    elif call.kind == "mpdit":
        parser, name, args = mpdit_parser(), "mpdit", call.args
        if args and not args[0].startswith("-"):
            name, args = f"mpdit {args[0]}", args[1:]
            parser = mpdit_subcommands().get(call.args[0])
            if parser is None:
                problems.append(f"mpdit has no subcommand {call.args[0]!r}")
        if parser is not None:
            problems += [f"{name} has no flag {flag}" for flag in flags_passed(args) if flag not in options_of(parser)]
    return [f"{command}\n    {problem}" for problem in problems]


# The tests.


def test_commands_are_read_as_bash_reads_them():
    text = (
        "Intro `python examples/x.py --inline` and `pipe.class_names`.\n"
        "```bash\n"
        "apt-get install thing && python a.py --one 1 \\\n"
        '    --two \'{"a": 1,\n'
        "            \"b\": 2}' --three   # the Space's test, a comment\n"
        "mpdit generate -o grid.png > log.txt\n"
        "```\n"
        "```\n"
        "not/a/command.py --ignored\n"
        "```\n"
    )
    commands = commands_in(text, "doc.md")
    assert [(c.line, c.words, c.fenced) for c in commands] == [
        (3, ("apt-get", "install", "thing"), True),
        (3, ("python", "a.py", "--one", "1", "--two", '{"a": 1,\n            "b": 2}', "--three"), True),
        (6, ("mpdit", "generate", "-o", "grid.png"), True),
        (1, ("python", "examples/x.py", "--inline"), False),
    ]


def test_a_wrong_flag_script_or_subcommand_is_found():
    text = (
        "```bash\n"
        "accelerate launch --num_processes 2 examples/train_mpdit.py --output_dir out --no_such_flag 1\n"
        "torchrun --nproc_per_node 2 examples/no_such_script.py --output_dir out\n"
        "mpdit generate --num-images 2 --no-such-flag -o grid.png\n"
        "mpdit no-such-subcommand\n"
        "python examples/train_mpdit.py --output_dir out --train_batch_size 2\n"
        "```\n"
    )
    problems = [problem for command in commands_in(text, "doc.md") for problem in problems_of(command)]
    assert [problem.splitlines()[1].strip() for problem in problems] == [
        "examples/train_mpdit.py has no flag --no_such_flag",
        "examples/no_such_script.py does not exist",
        "mpdit generate has no flag --no-such-flag",
        "mpdit has no subcommand 'no-such-subcommand'",
    ]


def test_the_documents_have_commands_to_check():
    commands = [command for found in document_commands().values() for command in found]
    assert sum(command.fenced for command in commands) >= 20
    scripts = {call_of(strip_prefix(list(c.words))).target for c in commands}
    assert {"examples/train_mpdit.py", "examples/sample_fid.py", "space/app.py", "scripts/setup.sh"} <= scripts


@pytest.mark.parametrize("document", [str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_command_names_existing_scripts_and_accepted_flags(document):
    problems = [problem for command in document_commands()[document] for problem in problems_of(command)]
    assert not problems, "\n" + "\n".join(problems)


def test_every_mpdit_subcommand_named_exists():
    subcommands = mpdit_subcommands()
    named = {
        (str(command), call.args[0])
        for found in document_commands().values()
        for command in found
        if (call := call_of(strip_prefix(list(command.words)))).kind == "mpdit"
        and call.args
        and not call.args[0].startswith("-")
    }
    assert {name for _, name in named} >= {"generate", "evaluate"}
    missing = [
        f"{where}: mpdit has no subcommand {name!r}" for where, name in sorted(named) if name not in subcommands
    ]
    assert not missing, "\n".join(missing)


def test_the_help_fallback_reads_the_same_flags_as_the_parser():
    path = ROOT / "scripts" / "mutation_check.py"  # a fast `-h`: it imports nothing heavy
    assert "--output_json" in script_options(path)
    assert help_options(path) == script_options(path)
