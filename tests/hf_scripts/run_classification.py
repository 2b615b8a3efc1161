"""A text-classification script shaped like Hugging Face's examples/pytorch/text-classification/run_glue.py.

Written for HF's Trainer; tests/test_hf_script.py runs it unchanged except for the import line below,
and also with transformers' own Trainer. Nothing is downloaded: the data, the word-level tokenizer and
a tiny BERT are made here.
"""

import logging
import os
import random
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    set_seed,
)

from hooktrain import Trainer, TrainingArguments  # the only line that differs from the HF script

logger = logging.getLogger(__name__)
WORDS = ["good", "bad", "movie", "plot", "actor", "scene", "long", "short", "music", "story", "end", "the"]


@dataclass
class ModelArguments:
    hidden_size: int = field(default=32, metadata={"help": "Hidden size of the tiny BERT."})


@dataclass
class DataTrainingArguments:
    max_seq_length: int = field(default=32, metadata={"help": "Longest tokenized sequence."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    train_size: int = field(default=128)
    eval_size: int = field(default=64)


def make_split(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS[2:]) for _ in range(rng.randint(3, 12))]
        words.insert(rng.randint(0, len(words)), "good" if i % 2 else "bad")
        rows.append({"sentence": " ".join(words), "label": i % 2})
    return datasets.Dataset.from_list(rows)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    logger.info(f"Training/evaluation parameters {training_args}")
    set_seed(training_args.seed)

    raw_datasets = datasets.DatasetDict(
        train=make_split(data_args.train_size, 0), validation=make_split(data_args.eval_size, 1),
        test=make_split(data_args.eval_size, 2))
    label_list = raw_datasets["train"].unique("label")
    label_list.sort()
    num_labels = len(label_list)

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=model_args.hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * model_args.hidden_size,
                        max_position_embeddings=64, num_labels=num_labels)
    model = BertForSequenceClassification(config)

    def preprocess_function(examples):
        return tokenizer(examples["sentence"], padding=False, max_length=data_args.max_seq_length, truncation=True)

    raw_datasets = raw_datasets.map(preprocess_function, batched=True, desc="Running tokenizer on dataset")
    if training_args.do_train:
        train_dataset = raw_datasets["train"]
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    if training_args.do_eval:
        eval_dataset = raw_datasets["validation"]
    if training_args.do_predict:
        predict_dataset = raw_datasets["test"]

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.argmax(preds, axis=1)
        return {"accuracy": (preds == p.label_ids).astype(np.float32).mean().item()}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        data_collator=DataCollatorWithPadding(tokenizer),
    )

    if training_args.do_train:
        train_result = trainer.train()
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_dataset = predict_dataset.remove_columns("label")
        predictions = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
        predictions = np.argmax(predictions, axis=1)
        output_predict_file = os.path.join(training_args.output_dir, "predict_results.txt")
        if trainer.is_world_process_zero():
            with open(output_predict_file, "w") as writer:
                logger.info("***** Predict results *****")
                writer.write("index\tprediction\n")
                for index, item in enumerate(predictions):
                    writer.write(f"{index}\t{label_list[item]}\n")

    kwargs = {"finetuned_from": "a tiny BERT", "tasks": "text-classification", "dataset": "good/bad sentences"}
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)


if __name__ == "__main__":
    main()
