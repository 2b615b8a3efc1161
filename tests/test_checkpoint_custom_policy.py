"""The example third-party save policy, installed for real and selected with ``save_strategy="walltime"``.

``pip install --no-deps --target`` puts the distribution (with its entry point) in a folder; the
runs are child processes (forked from one that imported torch: tests/forkserver.py) with that
folder on ``PYTHONPATH``, as for a user who installed it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import checkpoint_steps

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_save_policy"

RUN = """
import sys, torch
sys.path.insert(0, {tests!r})
from helpers import tiny_trainer_parts
from hooktrain import Trainer, TrainingArguments
args = TrainingArguments(output_dir=sys.argv[1], max_steps=int(sys.argv[2]), save_strategy="walltime",
                         per_device_train_batch_size=4, report_to="none", disable_tqdm=True)
trainer = Trainer(args=args, **tiny_trainer_parts(n=16))
trainer.train(resume_from_checkpoint=sys.argv[3] == "resume" or None)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory, fork_servers):
    """The example installed with pip into its own folder (built from a copy: the source stays clean)."""
    base = tmp_path_factory.mktemp("walltime")
    source, target = base / "src", base / "site"
    shutil.copytree(EXAMPLE, source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("hooktrain_walltime-0.1.0.dist-info")), sorted(p.name for p in target.iterdir())
    script = base / "run.py"
    script.write_text(RUN.format(tests=str(ROOT / "tests")))
    env = {k: v for k, v in os.environ.items() if k != "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD"}
    return target, script, fork_servers({**env, "OMP_NUM_THREADS": "1"})


def run(installed, out: Path, max_steps: int, minutes: str, resume: bool = False) -> None:
    """The run script in a process forked from one that imported torch and hooktrain (the
    ``installed`` fixture's fork server: tests/forkserver.py), the example on its PYTHONPATH."""
    target, script, forks = installed
    done = forks.run(script, out, max_steps, "resume" if resume else "fresh", timeout=120,
                     env={"PYTHONPATH": str(target), "HOOKTRAIN_WALLTIME_MINUTES": minutes})
    assert done.returncode == 0, done.stderr


def walltime_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "plugin_state.json").read_text())["walltime"]


def test_listed_by_hooktrain_plugins(installed):
    target, _, forks = installed
    done = forks.run("hooktrain", "plugins", "--json", module=True, env={"PYTHONPATH": str(target)})
    assert done.returncode == 0, done.stderr
    plugin = next(p for p in json.loads(done.stdout) if p["name"] == "walltime")
    assert plugin["distribution"] == "hooktrain-walltime" and not plugin["builtin"]
    assert "walltime" in json.dumps(plugin["registers"])


def test_saves_at_the_end_and_restores_its_clock_on_resume(installed, tmp_path):
    run(installed, tmp_path, max_steps=4, minutes="600")  # never due: only the save at train end
    assert checkpoint_steps(tmp_path) == [4]
    first = walltime_state(tmp_path / "checkpoint-4")
    assert first["saves"] == 1 and first["interval_seconds"] == 600 * 60
    assert first["training_seconds"] > 0

    run(installed, tmp_path, max_steps=7, minutes="600", resume=True)
    assert checkpoint_steps(tmp_path) == [4, 7]
    second = walltime_state(tmp_path / "checkpoint-7")
    assert second["saves"] == 2, "the save count came back from checkpoint-4"
    assert second["training_seconds"] > first["training_seconds"], "the clock continued, not restarted"


def test_a_short_interval_saves_after_every_step(installed, tmp_path):
    run(installed, tmp_path, max_steps=3, minutes="0")
    assert checkpoint_steps(tmp_path) == [1, 2, 3]
    assert [walltime_state(tmp_path / f"checkpoint-{s}")["saves"] for s in (1, 2, 3)] == [1, 2, 3]


def test_the_policy_clock_saves_on_time_and_carries_over_a_resume():
    """The policy's own clock parameter drives it step by step (the subprocess runs above show it
    installed and resumed for real; here each second is exact)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hooktrain_walltime_src", EXAMPLE / "hooktrain_walltime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    now = [0.0]
    policy = module.WalltimePolicy(minutes=1, clock=lambda: now[0])
    policy.on_train_begin()
    answers = []
    for t in (59.0, 60.0, 61.0, 119.0, 120.0):
        now[0] = t
        due = policy.should_save(trigger="step")
        answers.append(due)
        if due:
            policy.on_save()
    assert answers == [False, True, False, False, True]
    _, state = policy.plugin_state()
    assert state["training_seconds"] == 120.0 and state["saves"] == 3

    now[0] = 5000.0  # a new process: its clock has nothing to do with the first one's
    resumed = module.WalltimePolicy(minutes=1, clock=lambda: now[0])
    resumed.on_train_begin()
    resumed.load_plugin_state(states={module.STATE_KEY: state})
    now[0] = 5030.0
    assert resumed.training_seconds() == 150.0 and not resumed.should_save(trigger="step")
    now[0] = 5060.0
    assert resumed.should_save(trigger="step")
