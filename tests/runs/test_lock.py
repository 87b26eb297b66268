"""One run at a time per `--out`: a second run is refused while the first holds the lock, and
the lock goes with its process (normal end, error, Ctrl-C or kill)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import rrm_plugin
from rrm_plugin.cli.main import main
from rrm_plugin.runs.lock import OutputInUseError, lock_path, output_lock
from tests.cli.conftest import expect_user_error

ROOT = Path(rrm_plugin.__file__).resolve().parent.parent

# `rrm trace 0 --out OUT` whose work is to wait for a line on stdin: a run that holds --out.
HOLDER = """
import sys
import rrm_plugin.cli.trace as trace

def waiting(args):
    print("running", flush=True)
    sys.stdin.readline()
    return 0

trace.run = waiting
from rrm_plugin.cli.main import main
sys.exit(main(["trace", "0", "--out", sys.argv[1]]))
"""


def start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "running\n", proc.stderr.read()
    return proc


@pytest.fixture
def quick_trace(monkeypatch):
    """`rrm trace`'s work replaced by a record of what it saw of the lock file."""
    import rrm_plugin.cli.trace as trace

    seen = []

    def record(args):
        path = lock_path(args.out)
        seen.append(path.read_text() if path.exists() else None)
        return 0

    monkeypatch.setattr(trace, "run", record)
    return seen


def refusal(out: Path, pid: int) -> str:
    return (rf"^rrm trace: error: --out {re.escape(str(out))} is being written by another run "
            rf"\(process {pid}, `rrm trace` started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d; lock file "
            rf"{re.escape(str(lock_path(out)))}\); wait for it to finish or give another --out$")


def test_a_second_run_on_the_same_out_is_refused_until_the_first_ends(tmp_path, capsys,
                                                                      quick_trace):
    out = tmp_path / "t"
    holder = start_holder(out)
    try:
        expect_user_error(capsys, ["trace", "0", "--out", str(out)], refusal(out, holder.pid))
        # Another spelling of the same folder shares the lock.
        expect_user_error(capsys, ["trace", "0", "--out", str(tmp_path / "x" / ".." / "t")],
                          "is being written by another run")
        assert quick_trace == []  # the refused runs did no work
        assert main(["trace", "0", "--out", str(tmp_path / "other")]) == 0  # other outputs: free
    finally:
        holder.communicate("\n", timeout=120)
    assert holder.returncode == 0
    assert not lock_path(out).exists()  # removed by the run that held it
    assert main(["trace", "0", "--out", str(out)]) == 0
    assert f'"pid": {os.getpid()}' in quick_trace[-1]  # held by this run while it ran
    assert not lock_path(out).exists()


def test_a_killed_run_leaves_no_stale_lock(tmp_path, capsys, quick_trace):
    out = tmp_path / "t"
    holder = start_holder(out)
    holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the flock
    holder.wait(timeout=60)
    assert lock_path(out).exists()  # the file stays, but nobody holds it
    assert main(["trace", "0", "--out", str(out)]) == 0
    assert f'"pid": {os.getpid()}' in quick_trace[-1]


def test_the_lock_is_released_after_an_error_or_ctrl_c(tmp_path, monkeypatch, capsys):
    import rrm_plugin.cli.trace as trace

    out = tmp_path / "deep" / "er" / "t"

    def interrupted(args):
        assert lock_path(out).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(trace, "run", interrupted)
    assert main(["trace", "0", "--out", str(out)]) == 130
    assert list(tmp_path.iterdir()) == []  # the lock file and its new folders are gone

    from rrm_plugin.errors import RRMUserError

    def failing(args):
        raise RRMUserError("bad image")

    monkeypatch.setattr(trace, "run", failing)
    expect_user_error(capsys, ["trace", "0", "--out", str(out)], "^rrm trace: error: bad image$")
    assert list(tmp_path.iterdir()) == []
    with output_lock(out, command="trace"):  # free again
        pass


def test_output_lock_in_one_process(tmp_path):
    out = tmp_path / "f.json"
    with output_lock(out, command="eval-saes") as path:
        assert path == tmp_path / ".f.json.rrm-lock"
        with pytest.raises(OutputInUseError, match=rf"process {os.getpid()}, `rrm eval-saes`"), \
                output_lock(out, command="eval-saes"):
            pass
    assert not path.exists()
    with output_lock(out, command="eval-saes"):
        pass


def test_torchrun_ranks_other_than_0_take_no_lock(tmp_path, monkeypatch, quick_trace):
    out = tmp_path / "t"
    monkeypatch.setenv("RANK", "1")  # rank 0 alone writes the outputs
    assert main(["trace", "0", "--out", str(out)]) == 0
    assert quick_trace == [None]
    monkeypatch.setenv("RANK", "0")
    assert main(["trace", "0", "--out", str(out)]) == 0
    assert quick_trace[-1] is not None


def test_the_lock_and_the_output_checks_import_nothing_heavy():
    """A locked --out is refused as fast as a bad option: no torch on the way."""
    code = ("import sys\nimport rrm_plugin.runs.lock, rrm_plugin.cli.checks, "
            "rrm_plugin.cli.output, rrm_plugin.io\n"
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]
