"""A Hugging Face style training script, with transformers' callbacks, run by hooktrain.

    python examples/hf_callbacks/train.py [--output_dir out/hf_callbacks] [--num_train_epochs 20]

Written as for Hugging Face's ``Trainer``: only the import says hooktrain. The callbacks are
transformers' own ``EarlyStoppingCallback`` and a custom ``TrainerCallback`` that stops the run
once the eval accuracy reaches a target, through ``control.should_training_stop``. The model and
data are the digits MLP of ``examples/digits`` (scikit-learn's 8x8 digits, no download).

Needs ``pip install "hooktrain[hf,examples]"``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from hooktrain import Trainer, TrainingArguments  # the one line that differs from an HF script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "digits"))
from task import MLP, accuracy, load_splits  # noqa: E402


class StopAtAccuracy(TrainerCallback):
    """Stops training as soon as an evaluation reaches *target* accuracy."""

    def __init__(self, target: float):
        self.target = target

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        if metrics.get("eval_accuracy", 0.0) >= self.target:
            print(f"step {state.global_step}: eval_accuracy {metrics['eval_accuracy']:.4f} >= {self.target}")
            control.should_training_stop = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="out/hf_callbacks")
    parser.add_argument("--num_train_epochs", type=float, default=20)
    parser.add_argument("--target_accuracy", type=float, default=0.98)
    cli = parser.parse_args()

    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    torch.manual_seed(42)
    train_dataset, eval_dataset = load_splits()
    args = TrainingArguments(
        output_dir=cli.output_dir, overwrite_output_dir=True, num_train_epochs=cli.num_train_epochs,
        per_device_train_batch_size=32, per_device_eval_batch_size=256, learning_rate=0.002,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model="accuracy", logging_steps=20, report_to="none", disable_tqdm=True,
    )
    trainer = Trainer(
        model=MLP(), args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        compute_metrics=accuracy,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=3), StopAtAccuracy(cli.target_accuracy)],
    )
    result = trainer.train()
    trainer.save_model()
    trainer.save_state()
    print(f"finished: {result.global_step} steps, train_loss {result.training_loss:.4f}")
    print(f"stopped by: {trainer.state.stop_reason or 'nothing (all epochs ran)'}")
    print(f"best: step {trainer.state.best_global_step}, accuracy {trainer.state.best_metric:.4f}")


if __name__ == "__main__":
    main()
