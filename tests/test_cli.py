"""The ``hooktrain`` command: a user's mistake is one clear message and exit status 2, not a crash.

Each case runs the real command (``hooktrain.__main__.main``, as the console script does) on one
small shared config; two of them also run ``python -m hooktrain`` in a subprocess. Every case
fails before training starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hooktrain.__main__ import TRACEBACK_ENV, main
from hooktrain.core.errors import ArgumentError

ROOT = Path(__file__).resolve().parents[1]

TASK = '''
import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i)), "labels": torch.tensor(float(i))}


def build(args):
    return {"model": Model(), "train_dataset": Data()}


def broken(args):
    raise ValueError("a bug in the task's own code")
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "task.py").write_text(TASK)
    (root / "config.yaml").write_text(textwrap.dedent(f"""\
        task: task.py:build
        output_dir: {root / 'out'}
        max_steps: 1
        report_to: none
        disable_tqdm: true
        save_strategy: "no"
        """))
    return root


def run(capsys, *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``hooktrain ARGV``; nothing may go to stdout on an error."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code != 2 or out == "", out
    return code, err


def assert_one_error(code: int, err: str, command: str = "train") -> str:
    assert code == 2
    assert err.startswith(f"hooktrain {command}: error: " if command else "hooktrain: error: ")
    assert "Traceback" not in err
    return err


def test_unknown_flag_keeps_the_suggestion(capsys, workdir):
    err = assert_one_error(*run(capsys, "train", str(workdir / "config.yaml"), "--learnin_rate", "0.1"))
    assert "unknown flag '--learnin_rate'; did you mean '--learning_rate'?" in err
    assert "unexpected value" not in err  # 0.1 is the unknown flag's value, not a second problem


def test_every_bad_value_is_listed(capsys, workdir):
    err = assert_one_error(*run(capsys, "train", str(workdir / "config.yaml"), "--learning_rate", "abc",
                                "--per_device_train_batch_size", "0", "--lr_scheduler_type", "cosin"))
    assert "3 invalid settings" in err
    assert "learning_rate='abc' is invalid: must be a number" in err
    assert "per_device_train_batch_size=0 is invalid: must be >= 1" in err
    assert "did you mean 'cosine'?" in err


def test_unknown_reporter_found_when_the_trainer_starts(capsys, workdir):
    err = assert_one_error(*run(capsys, "train", str(workdir / "config.yaml"), "--report_to", "wandbb"))
    assert "unknown reporter 'wandbb'" in err and "Did you mean 'wandb'?" in err


def test_yaml_syntax_error_names_file_line_and_column(capsys, workdir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: task.py:build\nlearning_rate: 0.1\n  max_steps: 3\n")
    err = assert_one_error(*run(capsys, "train", str(bad)))
    assert f"config file {str(bad)!r}: line 3, column 12: mapping values are not allowed here" in err
    assert len(err.splitlines()) == 2  # the message and the --traceback hint, not 67 lines


def test_json_syntax_error_names_file_line_and_column(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"task": "task.py:build",\n "max_steps": }\n')
    err = assert_one_error(*run(capsys, "train", str(bad)))
    assert f"config file {str(bad)!r}: line 2, column 15: Expecting value" in err


def test_missing_config_file(capsys, tmp_path):
    err = assert_one_error(*run(capsys, "train", str(tmp_path / "nope.yaml")))
    assert "does not exist" in err


def test_task_entry_problems(capsys, workdir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: 1\n")
    assert "needs a 'task: module:function' entry" in assert_one_error(*run(capsys, "train", str(config)))
    config.write_text(f"task: {workdir / 'task.py'}:biuld\noutput_dir: {tmp_path}\n")
    assert "has no function 'biuld'; did you mean 'build'?" in assert_one_error(*run(capsys, "train", str(config)))
    config.write_text(f"task: no_such_module_xyz:build\noutput_dir: {tmp_path}\n")
    assert "no module named 'no_such_module_xyz'" in assert_one_error(*run(capsys, "train", str(config)))


def test_resume_from_a_missing_checkpoint(capsys, workdir):
    err = assert_one_error(*run(capsys, "train", str(workdir / "config.yaml"),
                                "--resume_from_checkpoint", str(workdir / "nope")))
    assert "no such directory" in err


def test_no_config_and_unknown_command(capsys):
    assert "the config file comes first" in assert_one_error(*run(capsys, "train"))
    err = assert_one_error(*run(capsys, "trian"), command="")
    assert "unknown command 'trian'; did you mean 'train'?" in err


def test_traceback_switch(capsys, workdir, monkeypatch):
    argv = ["train", str(workdir / "config.yaml"), "--report_to", "wandbb"]
    with pytest.raises(ArgumentError, match="wandbb"):
        main([*argv, "--traceback"])
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ArgumentError):
        main(argv)


def test_error_in_the_task_code_keeps_its_traceback(workdir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"task: {workdir / 'task.py'}:broken\noutput_dir: {tmp_path / 'out'}\nreport_to: none\n")
    with pytest.raises(ValueError, match="a bug in the task's own code"):
        main(["train", str(config)])


def test_python_dash_m_hooktrain(workdir, tmp_path):
    """The real process: exit status and stderr, for a user's mistake and for a bug in the task."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TRACEBACK_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "hooktrain", "train", str(workdir / "config.yaml"),
                           "--learnin_rate", "0.1"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == ("hooktrain train: error: unknown flag '--learnin_rate'; "
                                           "did you mean '--learning_rate'?")
    config = tmp_path / "c.yaml"
    config.write_text(f"task: {workdir / 'task.py'}:broken\noutput_dir: {tmp_path / 'out'}\nreport_to: none\n")
    proc = subprocess.run([sys.executable, "-m", "hooktrain", "train", str(config)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ValueError: a bug in the task's own code" in proc.stderr


def test_version_has_one_source_and_the_package_is_typed(capsys):
    import tomllib

    import hooktrain

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    setuptools = project["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "hooktrain.__version__"}
    assert main(["--version"]) == 0 and capsys.readouterr().out == f"hooktrain {hooktrain.__version__}\n"
    assert "py.typed" in setuptools["package-data"]["hooktrain"]
    assert (ROOT / "hooktrain" / "py.typed").is_file()
