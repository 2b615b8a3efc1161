"""Run Python scripts as real child processes without paying ``import torch`` for each one.

A :class:`ForkServer` is one child process that imports torch and hooktrain once and then, for
each script to run, forks a fresh process that runs the script as ``python SCRIPT ARGS...`` would
(``__name__ == "__main__"``, ``sys.argv``, the script's folder first on ``sys.path``), in its own
working directory, with stdout and stderr captured. The forked process is a real, separate process:
it can be SIGKILLed, it exits with its own status (``-N`` when a signal N ended it, as with
:mod:`subprocess`), and what it changes dies with it. The only difference from a fresh interpreter
is that torch and hooktrain are already imported, with the server's environment (fixed when the
server starts: set there what those imports read, such as ``OMP_NUM_THREADS``).

The server refuses to fork once it runs a thread besides the main one (a fork copies only the
calling thread); importing torch and hooktrain starts none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SERVER = r"""
import gc, json, os, runpy, signal, sys, threading, time, traceback

import torch  # noqa: F401  (what every script imports first: the reason this server exists)
import hooktrain  # noqa: F401
from hooktrain import Trainer, TrainingArguments  # noqa: F401

gc.freeze()  # the objects of those imports stay out of the children's collections: fewer copied pages


def run(request):
    '''In the forked process: the script as `python SCRIPT ARGS...` (or `python -m MODULE ARGS...`)
    runs it; its exit status.'''
    if request["new_session"]:
        os.setsid()
    os.environ.update(request["env"])
    if "PYTHONPATH" in request["env"]:  # as at a start: after the script's folder, before the rest
        sys.path[1:1] = [p for p in request["env"]["PYTHONPATH"].split(os.pathsep) if p]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
    os.chdir(request["cwd"])
    script = request["script"]
    try:
        if request["code"] is not None:  # as `python -c CODE ARGS...`
            sys.argv = ["-c", *request["args"]]
            sys.path[0] = ""
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif request["module"]:  # as `python -m`: the working directory first on sys.path
            sys.argv = ["-m", *request["args"]]
            sys.path[0] = os.getcwd()
            runpy.run_module(script, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [script, *request["args"]]
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def wait(pid, timeout, group):
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            (os.killpg if group else os.kill)(pid, signal.SIGKILL)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), True
        time.sleep(0.01)


def serve():
    for line in sys.stdin:
        request = json.loads(line)
        if threading.active_count() != 1:
            names = [t.name for t in threading.enumerate()]
            print(json.dumps({"error": f"the fork server runs threads {names}: a fork is unsafe"}), flush=True)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            return run(request)  # the interpreter then exits as usual: threads joined, atexit run
        returncode, timed_out = wait(pid, request["timeout"], request["new_session"])
        print(json.dumps({"returncode": returncode, "timed_out": timed_out}), flush=True)
    return 0


sys.exit(serve())
"""


@dataclass
class Completed:
    """What :class:`subprocess.CompletedProcess` gives: the exit status and the captured output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class ForkServer:
    """Runs scripts in processes forked from one that has imported torch and hooktrain (see the
    module's docstring). *env* is the environment of the server and so of every script."""

    def __init__(self, env: dict[str, str]):
        self.env = dict(env)
        self._logs = tempfile.mkdtemp(prefix="hooktrain-forkserver-")
        self._count = 0
        with open(os.path.join(self._logs, "server.err"), "wb") as errors:
            self._proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=errors, env=self.env, text=True)

    def run(self, script: str | os.PathLike, *args: str, cwd: str | os.PathLike | None = None,
            timeout: float = 120, module: bool = False, env: dict[str, str] | None = None,
            new_session: bool = False, code: str | None = None) -> Completed:
        """``python SCRIPT ARGS...`` (``python -m SCRIPT ARGS...`` with *module*, ``python -c CODE
        ARGS...`` with *code*, SCRIPT then only names it) in *cwd*, in a
        forked process with *env* added to its environment (only what is read after the server's
        imports; a ``PYTHONPATH`` there also goes onto ``sys.path``, as at a start), in a session of its own with *new_session* (a signal to its process group then
        reaches it and its children only); raises ``TimeoutError`` (the process killed) when it
        runs longer than *timeout* seconds."""
        self._count += 1
        stdout = os.path.join(self._logs, f"{self._count}.out")
        stderr = os.path.join(self._logs, f"{self._count}.err")
        request = {"script": str(script), "args": [str(a) for a in args], "cwd": str(cwd or os.getcwd()),
                   "stdout": stdout, "stderr": stderr, "timeout": timeout, "module": module,
                   "env": dict(env or {}), "new_session": new_session, "code": code}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended: {Path(self._logs, 'server.err').read_text()[-3000:]}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        done = Completed([str(script), *request["args"]], answer["returncode"],
                         Path(stdout).read_text(errors="replace"), Path(stderr).read_text(errors="replace"))
        if answer["timed_out"]:
            raise TimeoutError(f"{script} {' '.join(request['args'])} ran over {timeout} s:\n{done.stderr[-3000:]}")
        return done

    def close(self) -> None:
        """Ends the server at once (it runs nothing between two runs: every child was waited for);
        an orderly exit of an interpreter holding torch takes seconds on a busy machine."""
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe:
                pipe.close()
        import shutil

        shutil.rmtree(self._logs, ignore_errors=True)
