"""The test suite's fork server (tests/forkserver.py) runs a script as ``python`` would run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, sys, threading
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "name": __name__,
                  "pid": os.getpid(), "env": os.environ.get("FORK_TEST"), "torch": "torch" in sys.modules}))
print("to stderr", file=sys.stderr)
threading.Thread(target=lambda: print("a thread ran to its end"), daemon=False).start()
if sys.argv[1] == "kill":
    os.kill(os.getpid(), 9)
if sys.argv[1] == "hang":
    import time
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1].isdigit() else 0)
"""


@pytest.fixture
def server(fork_servers):
    return fork_servers(dict(os.environ))


def test_a_script_runs_as_python_runs_it(server, tmp_path):
    import json

    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    done = server.run(script, "3", cwd=work, env={"FORK_TEST": "yes"})
    assert done.returncode == 3
    first, thread_line = done.stdout.splitlines()[:2]
    seen = json.loads(first)
    assert seen["argv"] == [str(script), "3"] and seen["name"] == "__main__"
    assert seen["cwd"] == str(work) and seen["path0"] == str(tmp_path) and seen["env"] == "yes"
    assert seen["pid"] != os.getpid() and seen["torch"]  # a process of its own, torch already there
    assert thread_line == "a thread ran to its end" and done.stderr == "to stderr\n"
    again = server.run(script, "0", cwd=work)
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[0])["env"] is None  # nothing kept

    # the same as a fresh interpreter
    fresh = subprocess.run([sys.executable, str(script), "3"], cwd=work, capture_output=True, text=True,
                           env={**os.environ, "FORK_TEST": "yes"}, timeout=120)
    assert fresh.returncode == 3 and fresh.stderr == done.stderr
    assert {k: v for k, v in json.loads(fresh.stdout.splitlines()[0]).items() if k not in ("pid", "torch")} == {
        k: v for k, v in seen.items() if k not in ("pid", "torch")}


def test_a_signal_and_a_timeout_end_the_child_only(server, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    assert server.run(script, "kill").returncode == -signal.SIGKILL
    with pytest.raises(TimeoutError, match="ran over 1 s"):
        server.run(script, "hang", timeout=1)
    assert server.run("-c", "x", code="import sys; print(sys.argv); sys.exit(5)").returncode == 5
    assert server.run("hooktrain", "--version", module=True).stdout.startswith("hooktrain ")
