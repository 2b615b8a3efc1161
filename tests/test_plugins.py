"""The plugin system: entry points from a really installed distribution, listing, layering, docs."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hooktrain
from hooktrain.core import hookspecs
from hooktrain.core.args import argument_specs
from hooktrain.core.manager import BUILTIN_PLUGINS, build_manager

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
"""A third-party reporter writing one JSON line per report."""
import json, os
from hooktrain import hookimpl


class JsonlReporter:
    def __init__(self, args):
        self.path = os.path.join(args.output_dir, "metrics.jsonl")

    def _write(self, record):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\\n")

    @hookimpl
    def report_run_start(self, run_name, config):
        self._write({"start": run_name})

    @hookimpl
    def report_scalars(self, scalars, step):
        self._write({"step": step, **scalars})

    @hookimpl
    def report_run_end(self, status):
        self._write({"end": status})


@hookimpl
def register_reporters(register):
    register("jsonl", JsonlReporter)
'''

TRAIN_SCRIPT = '''
import sys, torch
from hooktrain import Trainer, TrainingArguments

class DS(torch.utils.data.Dataset):
    def __len__(self): return 8
    def __getitem__(self, i): return {"x": torch.ones(2) * i, "labels": torch.tensor(float(i))}

class M(torch.nn.Module):
    def __init__(self):
        super().__init__(); self.l = torch.nn.Linear(2, 1)
    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.l(x).squeeze(-1), labels)}

args = TrainingArguments(output_dir=sys.argv[1], report_to=["jsonl"], max_steps=4, logging_steps=2,
                         save_strategy="no", disable_tqdm=True, per_device_train_batch_size=2)
Trainer(M(), args, train_dataset=DS()).train()
'''


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """``hooktrain-jsonl`` built and installed for real (pip --target) into a fresh directory."""
    src = tmp_path_factory.mktemp("src")
    (src / "hooktrain_jsonl.py").write_text(PLUGIN_MODULE)
    (src / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "hooktrain-jsonl"
        version = "0.3.1"
        [project.entry-points.hooktrain]
        jsonl = "hooktrain_jsonl"
        [tool.setuptools]
        py-modules = ["hooktrain_jsonl"]
    '''))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        check=True, capture_output=True,
    )
    return target


def run(forks, args, env_extra, cwd=None):
    """``python ARGS`` (a script or ``-m MODULE``) with *env_extra* added to the environment, in a
    process forked from one that imported torch and hooktrain (*forks*: the ``fork_servers`` fixture)."""
    assert args[0] == sys.executable
    module = args[1] == "-m"
    script, rest = (args[2], args[3:]) if module else (args[1], args[2:])
    return forks(dict(os.environ)).run(script, *rest, module=module, env=env_extra, cwd=cwd, timeout=120)


def test_entry_point_plugin_is_loaded_and_selected(installed_plugin, tmp_path, fork_servers):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    out = tmp_path / "out"
    proc = run(fork_servers, [sys.executable, str(script), str(out)], {"PYTHONPATH": str(installed_plugin)})
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["start"].startswith("out-")
    assert [r["step"] for r in records if "step" in r and "train/loss" in r] == [2, 4]
    assert records[-1] == {"end": "completed"}


def test_autoload_can_be_switched_off(installed_plugin, tmp_path, fork_servers):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    proc = run(
        fork_servers, [sys.executable, str(script), str(tmp_path / "out")],
        {"PYTHONPATH": str(installed_plugin), "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert proc.returncode != 0
    assert "unknown reporter 'jsonl'" in proc.stderr and "Installed: comet" in proc.stderr


def test_plugins_command_lists_the_installed_plugin(installed_plugin, fork_servers):
    proc = run(fork_servers, [sys.executable, "-m", "hooktrain", "plugins", "--json"], {"PYTHONPATH": str(installed_plugin)})
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert infos["jsonl"]["distribution"] == "hooktrain-jsonl"
    assert infos["jsonl"]["version"] == "0.3.1"
    assert infos["jsonl"]["hooks"] == ["register_reporters"]
    assert infos["jsonl"]["registers"] == {"reporters": ["jsonl"]}
    assert infos["reporters.comet"]["registers"] == {"reporters": ["comet", "comet_ml"]}
    assert infos["training"]["builtin"] is True
    text = run(fork_servers, [sys.executable, "-m", "hooktrain", "plugins"], {"PYTHONPATH": str(installed_plugin)}).stdout
    assert "jsonl  [hooktrain-jsonl 0.3.1]" in text and "reporters: jsonl" in text


def test_a_broken_entry_point_names_plugin_distribution_and_the_way_out(tmp_path, fork_servers):
    site = tmp_path / "site"
    dist = site / "hooktrain_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hooktrain-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hooktrain]\nbroken = no_such_module_xyz\n")
    proc = run(fork_servers, [sys.executable, "-m", "hooktrain", "plugins"], {"PYTHONPATH": str(site)})
    assert proc.returncode != 0
    assert "plugin 'broken'" in proc.stderr and "hooktrain-broken" in proc.stderr
    assert "HOOKTRAIN_DISABLE_PLUGIN_AUTOLOAD=1" in proc.stderr


def test_import_is_light():
    code = (
        "import sys, hooktrain; "
        "heavy = [m for m in ('wandb', 'mlflow', 'comet_ml', 'tensorboard', 'transformers', 'matplotlib', "
        "'torch.utils.tensorboard') if m in sys.modules]; print(heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_one_list_of_builtin_plugins():
    """hooktrain.plugins.BUILTINS is the only list: the manager and the config groups derive from
    it, and pyproject.toml declares no entry point of its own (they were never read)."""
    from hooktrain.core.args import OWNERS
    from hooktrain.plugins import BUILTINS

    assert BUILTIN_PLUGINS == tuple((b.name, b.module) for b in BUILTINS)
    assert OWNERS == ("core", *(b.name for b in BUILTINS if b.settings))
    assert "[project.entry-points.hooktrain]" not in (ROOT / "pyproject.toml").read_text()


# ---- layering and documentation ------------------------------------------------------------

CORE_FILES = ["loop.py", "data.py", "losses.py", "manager.py", "registry.py", "state.py", "types.py"]


@pytest.mark.parametrize("filename", CORE_FILES)
def test_core_reads_no_feature_argument(filename):
    """core never reads an argument owned by a plugin (save_*, report_to, fp16, early_stopping_* …)."""
    owners = {s.name: s.owner for s in argument_specs()}
    tree = ast.parse((ROOT / "hooktrain" / "core" / filename).read_text())
    read = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute))
        and (getattr(node.value, "id", None) == "args" or getattr(node.value, "attr", None) == "args")
    }
    feature = sorted(name for name in read if owners.get(name, "core") != "core")
    assert feature == [], f"{filename} reads plugin-owned arguments {feature}"


def test_loop_stays_small():
    assert len((ROOT / "hooktrain" / "core" / "loop.py").read_text().splitlines()) <= 480


def test_every_builtin_plugin_is_registered():
    assert {name for name, _ in BUILTIN_PLUGINS} <= {name for name, _ in build_manager().list_name_plugin()}


def test_every_owner_is_a_builtin_plugin():
    plugins = {name for name, _ in BUILTIN_PLUGINS} | {"core"}
    assert {s.owner for s in argument_specs()} <= plugins


def test_every_hook_is_documented_with_its_signature():
    doc = (ROOT / "docs" / "hooks.md").read_text()
    for name in hookspecs.__all__:
        spec = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(spec).parameters)
        assert f"### `{name}({params})`" in doc, f"docs/hooks.md lacks or has a stale `{name}({params})`"
        assert spec.__doc__ and all(f":param {p}:" in spec.__doc__ for p in inspect.signature(spec).parameters)
        opts = spec.hooktrain_spec if hasattr(spec, "hooktrain_spec") else {}
        if opts.get("firstresult"):
            assert "Stops at first non-None result" in spec.__doc__


def test_manager_lists_builtins_without_a_trainer():
    infos = {i.name: i for i in build_manager().describe()}
    assert "create_optimizer" in infos["optimizers"].hooks
    assert infos["reporters.tensorboard"].registers == {"reporters": ["tensorboard"]}
    assert hooktrain.__version__


def test_every_hookspec_is_exported_and_so_documented():
    """pluggy registers every @hookspec of the module, listed in __all__ or not; the docs follow __all__."""
    specs = {n for n in dir(hookspecs) if getattr(getattr(hookspecs, n), "hooktrain_spec", None) is not None}
    assert specs == set(hookspecs.__all__)


def test_hooks_doc_is_fresh():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gen_hooks_doc import render
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "hooks.md").read_text() == render(), "run: python tools/gen_hooks_doc.py"


def test_every_hook_call_goes_through_pluggy_wrappers_and_monitoring(tmp_path):
    """Hooks called one implementation at a time (on_log, on_evaluate, on_train_end …) and the
    per-step fast callers still run wrapper implementations and are seen by call monitoring."""
    import torch

    from hooktrain import Trainer, TrainingArguments, hookimpl

    ran = []

    class Wraps:
        @hookimpl(wrapper=True)
        def on_log(self, logs):
            ran.append(("on_log", "loss" in logs or "train_loss" in logs))
            return (yield)

        @hookimpl(wrapper=True)
        def on_train_end(self, status):
            ran.append(("on_train_end", status))
            return (yield)

    data = [{"x": torch.randn(3), "labels": torch.tensor(1.0)} for _ in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, max_steps=2,
                             logging_steps=1)
    trainer = Trainer(torch.nn.Linear(3, 1), args, train_dataset=data, plugins=[Wraps()],
                      compute_loss=lambda m, b: torch.nn.functional.mse_loss(m(b["x"]).squeeze(-1), b["labels"]))
    called = []
    undo = trainer.plugin_manager.add_hookcall_monitoring(
        lambda name, impls, kwargs: called.append(name), lambda *a: None)
    try:
        trainer.train()
    finally:
        undo()
    assert ran == [("on_log", True)] * 3 + [("on_train_end", "completed")]
    assert {"training_step", "backward", "optimizer_step", "on_log", "on_train_end"} <= set(called)
