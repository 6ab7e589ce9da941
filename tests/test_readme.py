"""README.md's code blocks, run as written: each one on its own, so the README cannot drift from the code.

What runs, and how:

- **```python blocks**: each block whole, in a fresh interpreter (``python snippet.py``), in an empty temporary
  directory (files it writes land there), with a timeout. It must run on its own: its own imports and data,
  nothing from the blocks before it. It must exit 0.
- **```bash blocks**: only the ``backprop ...`` commands run (as ``python -m backprop ...``, the interpreter
  under test), in order, in one empty temporary directory per block, each with a timeout. ``\\``
  continuations are joined, commands are split at ``&&``, ``||``, ``;`` and ``|``, a ``VAR=value`` prefix
  goes to the command's environment, a trailing ``# comment`` is dropped. Not run, and said so in the skip
  reason when a block has nothing else: ``pip install ...`` (it would change the environment under test),
  ``python -m pytest`` (the suite running itself), ``mpiexec ...`` (needs MPI hosts and processes; MPI is
  tested in tests/test_distributed.py and tests/test_multihost.py) and any other program (shell plumbing
  such as ``printf ... > hosts``). A command that reads MNIST/Fashion-MNIST (``--dataset mnist``) runs only
  when the IDX files are found (``$BACKPROP_DATA`` or ``../shared/datasets``, as tests/test_datasets.py
  looks), with a ``--data-dir`` that does not exist pointed at them.
- **Blocks without a language, ```text or ```console** are output samples or synopses: not run. Any other
  language fails :func:`test_every_block_has_a_known_language`, so no block is silently left out.

Markers (in the README itself, readable by its users):

- ``# needs: ...`` -- a comment line among the comments at the top of a python or bash block names what the
  block needs beyond the core install: the extras in brackets (``# needs: pip install "backprop[tensorboard]"``;
  known: see ``EXTRAS``) and/or the words ``graphviz``, ``mnist``, ``fashion-mnist``. When one is missing
  the block is skipped with a reason naming it; an unknown name fails the test (a typo never skips).
- ``# error`` -- a bash command whose trailing comment starts with ``error`` (``backprop train --lr 0  #
  error: lr must be ... (exit 2)``) is meant to show an error: it must exit non-zero (exactly N when the
  comment says ``exit N``) with a message on stderr.

>>> [(b.lang, b.line, b.code) for b in parse_blocks("text\\n```python\\nx = 1\\n```\\n  ```\\n  out\\n  ```\\n")]
[('python', 2, 'x = 1\\n'), ('', 5, 'out\\n')]
>>> needs(parse_blocks('```python\\n# needs: pip install "backprop[onnx]" and graphviz\\nimport onnx\\n```')[0])
['onnx', 'graphviz']
>>> [(c.argv, c.expect) for c in bash_commands('pip install . && backprop train --epochs 2  # quick\\n')]
[(['pip', 'install', '.'], None), (['backprop', 'train', '--epochs', '2'], None)]
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PY_TIMEOUT_S = 180
CMD_TIMEOUT_S = 180

# The extras of pyproject.toml a block may need, and the modules that show each one is installed.
EXTRAS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard",),
    "onnx": ("onnx", "onnxruntime"),
    "mpi": ("mpi4py",),
    "sklearn": ("sklearn",),
    "plot": ("matplotlib",),
    "test": ("pytest",),
}
DATASETS = ("mnist", "fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# The shared read-only copies beside the repository, or $BACKPROP_DATA (as tests/test_datasets.py).
DATA_ROOTS = [Path(p) for p in (os.environ.get("BACKPROP_DATA"),) if p] + [REPO.parent / "shared" / "datasets"]
RUN_LANGS = ("python", "bash")
SAMPLE_LANGS = ("", "text", "console")
# Programs of bash blocks that are not run, and why (see the module docstring).
NOT_RUN = {
    "pip": "pip install would change the environment under test",
    "python": "python -m pytest is the test suite itself",
    "mpiexec": "mpiexec needs MPI hosts and processes (tests/test_distributed.py, tests/test_multihost.py)",
}


@dataclass
class Block:
    """A fenced code block of the README: its language, the line of its opening fence, its dedented code."""

    lang: str
    line: int
    code: str


@dataclass
class Command:
    """One command of a bash block: argv, ``VAR=value`` prefixes, and the exit expected (None: 0; -1: any error)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    expect: int | None = None
    text: str = ""


def parse_blocks(markdown: str) -> list[Block]:
    """Every fenced (```) block of ``markdown``, indented ones (inside list items) included."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: the ``` block is never closed")
        blocks.append(Block(lang, start + 1, "".join(f"{b}\n" for b in body)))
        i += 1
    return blocks


def needs(block: Block) -> list[str]:
    """What the ``# needs:`` comments at the top of ``block`` name: extras in brackets, then other words."""
    found: list[str] = []
    for line in block.code.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break  # only the comments at the top of the block
        m = re.match(r"#\s*needs:(.*)", stripped)
        if not m:
            continue
        text = m.group(1)
        for group in re.findall(r"\[([^\]]*)\]", text):
            found += [e.strip() for e in group.split(",") if e.strip()]
        words = re.sub(r"\[[^\]]*\]", " ", text).lower()
        found += [w for w in ("graphviz", *DATASETS) if re.search(rf"(?<![\w-]){w}(?![\w-])", words)]
    return found


def _split_comment(line: str) -> tuple[str, str]:
    """``line`` without its trailing shell comment (an unquoted ``#`` after a blank), and that comment."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def bash_commands(code: str) -> list[Command]:
    """The commands of a bash block, in order (see the module docstring for the rules)."""
    joined = re.sub(r"\\\n", " ", code)
    commands: list[Command] = []
    for raw in joined.splitlines():
        text, comment = _split_comment(raw)
        if not text.strip():
            continue
        expect = None
        if re.match(r"error\b", comment, re.IGNORECASE):
            m = re.search(r"exit (?:code )?(\d+)", comment)
            expect = int(m.group(1)) if m else -1
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in [*lexer, "&&"]:
            if token in ("&&", "||", ";", "|", ";;"):
                if current:
                    env = {}
                    while current and re.match(r"^[A-Za-z_]\w*=", current[0]):
                        key, _, value = current.pop(0).partition("=")
                        env[key] = value
                    commands.append(Command(current, env, expect, text.strip()))
                current = []
            else:
                current.append(token)
    return commands


def _found(requirement: str) -> str | None:
    """None when ``requirement`` (an extra, graphviz or a data set) is available, else why not."""
    if requirement in EXTRAS:
        missing = [m for m in EXTRAS[requirement] if importlib.util.find_spec(m) is None]
        return f"{', '.join(missing)} not importable" if missing else None
    if requirement == "graphviz":
        return None if shutil.which("dot") else "Graphviz's dot is not on PATH"
    if requirement in DATASETS:
        return None if data_root(requirement) else f"IDX files not found in {[str(r) for r in DATA_ROOTS]}"
    raise AssertionError(f"unknown requirement {requirement!r} in a '# needs:' marker; known: "
                         f"{', '.join([*EXTRAS, 'graphviz', *DATASETS])}")


def data_root(name: str) -> Path | None:
    """The folder holding ``name``'s IDX files (as BACKPROP_DATA reads it: the folder or its parent)."""
    for root in DATA_ROOTS:
        for folder in (root / name, root):
            if all((folder / f).is_file() for f in IDX_FILES):
                return root
    return None


def skip_unless_available(block: Block, extra: Sequence[str] = ()) -> None:
    """Skip the test, naming the extra or data, when something ``block`` needs is absent."""
    for requirement in [*needs(block), *extra]:
        why = _found(requirement)
        if why:
            what = requirement
            if requirement in EXTRAS:
                what = f'the {requirement} extra (pip install "backprop[{requirement}]")'
            pytest.skip(f"README.md:{block.line} needs {what}: {why}")


def _block_id(block: Block) -> str:
    """``python-L38-history_bp_fit``: the block's language, line and first words of its first real statement."""
    first = ""
    for line in block.code.splitlines():
        s = line.strip()
        # NOTE: the set-up every self-contained block repeats (imports, data, model) is skipped, so ids differ.
        if s and not s.startswith(("#", "import ", "from ", "@", "(", "model = ", "opt = ")):
            first = s
            break
    words = re.findall(r"[A-Za-z_][\w-]*", first)[:3]
    return f"{block.lang}-L{block.line}-{'_'.join(words) or 'empty'}"


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
PYTHON = [b for b in BLOCKS if b.lang == "python"]
BASH = [b for b in BLOCKS if b.lang == "bash"]


def _env(tmp_path: Path) -> dict[str, str]:
    # NOTE: no display and no user cache: plots go to files, downloads and caches into the temporary directory.
    return dict(os.environ, MPLBACKEND="Agg", XDG_CACHE_HOME=str(tmp_path / ".cache"), PYTHONDONTWRITEBYTECODE="1")


def _tail(text: str, n: int = 3000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def test_the_readme_has_blocks_of_both_kinds():
    assert len(PYTHON) >= 5 and BASH, f"{len(PYTHON)} python and {len(BASH)} bash blocks found in README.md"


def test_every_block_has_a_known_language():
    unknown = [f"README.md:{b.line}: ```{b.lang}" for b in BLOCKS if b.lang not in RUN_LANGS + SAMPLE_LANGS]
    assert not unknown, ("blocks this test would neither run nor know to be samples (use ```python, ```bash, "
                         "or ```text for output):\n" + "\n".join(unknown))


@pytest.mark.parametrize("block", PYTHON, ids=_block_id)
def test_python_block_runs_on_its_own(block: Block, tmp_path: Path):
    skip_unless_available(block)
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                              text=True, timeout=PY_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"README.md:{block.line}: the python block ran over {PY_TIMEOUT_S} s")
    assert proc.returncode == 0, (
        f"README.md:{block.line}: the python block, run on its own in a fresh interpreter, exited "
        f"{proc.returncode}\n--- block ---\n{block.code}--- stdout ---\n{_tail(proc.stdout)}\n"
        f"--- stderr ---\n{_tail(proc.stderr)}")


def _not_run_reason(cmd: Command) -> str | None:
    """Why a command of a bash block is not run, or None when it is (a ``backprop`` command)."""
    program = cmd.argv[0]
    if program == "backprop":
        return None
    return NOT_RUN.get(program, f"{program} is not a backprop command")


def _dataset_of(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        value = arg.partition("=")[2] if arg.startswith("--dataset=") else argv[i + 1] if (
            arg == "--dataset" and i + 1 < len(argv)) else None
        if value in DATASETS:
            return value
    return None


def _with_data(argv: list[str], name: str) -> tuple[list[str], dict[str, str]]:
    """``argv`` with a ``--data-dir`` that does not exist (from the repository root) pointed at the data found."""
    root = data_root(name)
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--data-dir" and not (REPO / out[i + 1]).is_dir():
            out[i + 1] = str(root)
        elif arg == "--data-dir":
            out[i + 1] = str(REPO / out[i + 1])
    return out, {"BACKPROP_DATA": str(root)}


@pytest.mark.parametrize("block", BASH, ids=_block_id)
def test_bash_block_commands_run(block: Block, tmp_path: Path):
    commands = bash_commands(block.code)
    runnable = [c for c in commands if _not_run_reason(c) is None]
    if not runnable:
        pytest.skip(f"README.md:{block.line}: no backprop command to run: "
                    + "; ".join(f"{c.argv[0]} ({_not_run_reason(c)})" for c in commands))
    datasets = [d for c in runnable if (d := _dataset_of(c.argv))]
    skip_unless_available(block, datasets)
    for cmd in runnable:
        argv, env = cmd.argv, dict(cmd.env)
        if dataset := _dataset_of(argv):
            argv, data_env = _with_data(argv, dataset)
            env.update(data_env)
        try:
            proc = subprocess.run([sys.executable, "-m", "backprop", *argv[1:]], cwd=tmp_path,
                                  env={**_env(tmp_path), **env}, capture_output=True, text=True,
                                  timeout=CMD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"README.md:{block.line}: `{shlex.join(argv)}` ran over {CMD_TIMEOUT_S} s")
        report = (f"README.md:{block.line}: `{shlex.join(argv)}` exited {proc.returncode}\n"
                  f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}")
        if cmd.expect is None:
            assert proc.returncode == 0, report
        else:
            assert proc.returncode != 0 and proc.stderr.strip(), "meant to show an error, but " + report
            assert cmd.expect == -1 or proc.returncode == cmd.expect, f"expected exit {cmd.expect}: " + report


# ------------------------------------------------------------------ the harness itself
def test_markers_and_command_splitting():
    doc = parse_blocks(
        "```bash\n"
        "# needs: mnist\n"
        "OPENBLAS_NUM_THREADS=1 backprop train --dataset mnist \\\n"
        "    --epochs 1 | tail -1\n"
        "backprop train --lr 0   # error: lr must be positive (exit 2)\n"
        "backprop trace --x '0.1,0.2 # not a comment'  # error\n"
        "```\n")
    (block,) = doc
    assert needs(block) == ["mnist"]
    cmds = bash_commands(block.code)
    assert [c.argv for c in cmds] == [["backprop", "train", "--dataset", "mnist", "--epochs", "1"], ["tail", "-1"],
                                      ["backprop", "train", "--lr", "0"],
                                      ["backprop", "trace", "--x", "0.1,0.2 # not a comment"]]
    assert cmds[0].env == {"OPENBLAS_NUM_THREADS": "1"} and [c.expect for c in cmds] == [None, None, 2, -1]
    assert _dataset_of(cmds[0].argv) == "mnist" and _dataset_of(["backprop", "--dataset=fashion-mnist"])
    assert _block_id(block) == "bash-L1-OPENBLAS_NUM_THREADS_backprop_train"


def test_a_missing_extra_skips_naming_it(monkeypatch: pytest.MonkeyPatch):
    (block,) = [b for b in PYTHON if "TensorBoard(" in b.code]  # the training-controls block
    assert needs(block) == ["tensorboard"]
    monkeypatch.setitem(EXTRAS, "tensorboard", ("no_such_module_for_this_test",))
    expected = r'README.md:\d+ needs the tensorboard extra \(pip install "backprop\[tensorboard\]"\)'
    with pytest.raises(pytest.skip.Exception, match=expected):
        skip_unless_available(block)


def test_an_unknown_marker_fails_rather_than_skips():
    (block,) = parse_blocks('```python\n# needs: pip install "backprop[tensorbaord]"\n```\n')
    with pytest.raises(AssertionError, match="unknown requirement 'tensorbaord'"):
        skip_unless_available(block)


# ------------------------------------------------------------------ the names the README's prose uses
def _python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_import_backprop_loads_neither_sklearn_nor_matplotlib(tmp_path: Path):
    """``import backprop`` stays light: the subpackages that need the extras are imported on first use."""
    code = ("import sys, backprop\n"
            "print(sorted(m for m in ('sklearn', 'matplotlib', 'backprop.sklearn', 'backprop.viz') "
            "if m in sys.modules))")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_subpackages_are_attributes_without_an_import_of_their_own(tmp_path: Path):
    """The README writes ``bp.sklearn.MLPClassifier`` and ``backprop.viz.draw_graph`` after ``import backprop``."""
    pytest.importorskip("sklearn", reason="bp.sklearn needs the sklearn extra (scikit-learn)")
    code = ("import backprop as bp\n"
            "print(bp.sklearn.MLPClassifier.__name__, bp.viz.draw_graph.__name__, bp.onnx.export.__name__,\n"
            "      bp.distributed.DataParallelStep.__name__, 'sklearn' in dir(bp), 'viz' in dir(bp))\n"
            "import backprop.sklearn, backprop.viz\n"
            "assert bp.sklearn is backprop.sklearn and bp.viz is backprop.viz\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MLPClassifier", "draw_graph", "export", "DataParallelStep", "True", "True"]


def test_an_unknown_attribute_still_raises_attribute_error_naming_it():
    import backprop as bp

    with pytest.raises(AttributeError, match="module 'backprop' has no attribute 'sklaern'"):
        bp.sklaern  # noqa: B018
    assert not hasattr(bp, "no_such_thing")


def test_the_draw_graph_sentence_works_without_graphviz(tmp_path: Path):
    """README: ``backprop.viz.draw_graph(loss, "graph.svg", params=model)``: without Graphviz, graph.dot and how."""
    code = ("import backprop\n"
            "model = backprop.nn.Sequential(backprop.nn.Linear(4, 3), backprop.nn.ReLU(), backprop.nn.Linear(3, 2))\n"
            "loss = model(backprop.tensor([[1.0, 2.0, 3.0, 4.0]])).sum()\n"
            "print(backprop.viz.draw_graph(loss, 'graph.svg', params=model))\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _python(code, tmp_path, env={**_env(tmp_path), "PATH": str(empty)})  # no dot on this PATH
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "graph.dot"
    assert (tmp_path / "graph.dot").read_text().startswith("digraph") and not (tmp_path / "graph.svg").exists()
    assert "render it with: dot -Tsvg graph.dot -o graph.svg" in proc.stderr, proc.stderr


def test_trace_help_shows_weights_json():
    """The README's ``backprop trace --hidden 2 --weights-json`` is in ``backprop trace --help``."""
    assert "--weights-json" in README.read_text(encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "backprop", "trace", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "[--weights-json FILE]" in proc.stdout
    help_text = " ".join(proc.stdout.split())
    assert re.search(r"--weights-json FILE start from these weights .*JSON object", help_text), proc.stdout
