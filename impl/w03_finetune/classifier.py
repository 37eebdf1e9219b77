"""w03 check 1: fine-tune a pretrained BERT-architecture encoder into a sentiment classifier, and measure it on
the test split beside two baselines trained on the same training split: the majority class and TF-IDF + logistic
regression (scikit-learn, its C chosen on the validation split).

    python -m impl train w03 --profile cpu     # all three w03 checks; this one: MiniLM on Pang & Lee sentences

The fine-tuned model is saved to `<run_dir>/model` and the test accuracy is measured on that saved artifact,
reloaded through `load_classifier`, which refuses a missing or mismatched checkpoint with one clear message.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from impl.core.artifacts import CheckpointError, RunResult, environment, write_json
from impl.core.hf import JsonlLog, ModelLoadError, load_model, load_tokenizer, training_arguments
from impl.core.metrics import load_metric
from impl.w03_finetune.data import Labelled, SentimentSplits, sentiment_splits
from impl.w03_finetune.spec import ClassifierSpec


def tfidf_logreg_accuracy(splits: SentimentSplits) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(splits.train.texts)
    best = None
    for c in (0.25, 1.0, 4.0, 16.0, 64.0):  # the baseline gets its own model selection on the validation split
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, splits.train.labels)
        val = clf.score(vec.transform(splits.val.texts), splits.val.labels)
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    return {"tfidf_logreg": float(clf.score(vec.transform(splits.test.texts), splits.test.labels)),
            "tfidf_logreg_val": float(val), "tfidf_logreg_C": c}


def majority_accuracy(splits: SentimentSplits) -> float:
    majority = Counter(splits.train.labels).most_common(1)[0][0]
    return sum(y == majority for y in splits.test.labels) / len(splits.test)


def load_classifier(model_dir: Path, label_names: list[str]):
    """The saved classifier, or a CheckpointError saying what is wrong with `model_dir`."""
    from transformers import AutoModelForSequenceClassification

    config_file = Path(model_dir) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"no classifier checkpoint at {model_dir} (config.json missing); "
                              f"train one with: python -m impl train w03 --profile PROFILE")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise CheckpointError(f"{model_dir} holds a {', '.join(archs) or 'model'} checkpoint, "
                              f"not a sequence classifier")
    saved = [config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label", {})))]
    if saved != label_names:
        raise CheckpointError(f"{model_dir} classifies into {saved}; this task's labels are {label_names}")
    try:
        return load_model(AutoModelForSequenceClassification, str(model_dir))
    except ModelLoadError as e:
        raise CheckpointError(f"{model_dir}: checkpoint unreadable: {e}") from None


def _dataset(part: Labelled, tokenizer, max_length: int):
    import datasets

    ds = datasets.Dataset.from_dict({"text": part.texts, "label": part.labels})
    return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                  remove_columns=["text"])


def predict_accuracy(trainer, part: Labelled, tokenizer, max_length: int) -> float:
    out = trainer.predict(_dataset(part, tokenizer, max_length))
    return load_metric("accuracy").compute(predictions=out.predictions.argmax(-1).tolist(),
                                           references=part.labels)["accuracy"]


def run(spec: ClassifierSpec, run_dir: Path, progress: bool = False, shuffle_labels: bool = False) -> RunResult:
    if (run_dir / "metrics.json").exists():
        return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), reused=True)
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              set_seed)

    splits = sentiment_splits(spec.data)
    baselines = {"majority_class": majority_accuracy(splits), **tfidf_logreg_accuracy(splits)}
    train = splits.train
    if shuffle_labels:  # sabotage: the same sentences, labels permuted, so there is nothing to learn
        labels = list(train.labels)
        random.Random(spec.train.seed).shuffle(labels)
        train = Labelled(train.texts, labels)

    set_seed(spec.train.seed)  # the new classification head's initialisation
    tokenizer = load_tokenizer(spec.model)
    names = splits.label_names
    model = load_model(AutoModelForSequenceClassification, spec.model, num_labels=len(names),
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    args = training_arguments(spec.train, run_dir / "trainer", progress)
    collator = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(train, tokenizer, spec.max_length),
                      data_collator=collator, processing_class=tokenizer, callbacks=[JsonlLog(run_dir / "train_log.jsonl")])
    t0 = time.time()
    trainer.train()
    train_s = time.time() - t0
    trainer.save_model(str(run_dir / "model"))

    # measure the artifact, not the object in memory
    saved = Trainer(model=load_classifier(run_dir / "model", names), args=args, data_collator=collator,
                    processing_class=tokenizer)
    t0 = time.time()
    test_acc = predict_accuracy(saved, splits.test, tokenizer, spec.max_length)
    eval_s = time.time() - t0
    metrics = {
        "accuracy": test_acc,
        **baselines, "labels_shuffled": shuffle_labels, "data": splits.description, "label_names": names,
        "model": spec.model, "params": sum(p.numel() for p in model.parameters()),
        "train_examples": len(train), "train_s": round(train_s, 1), "test_eval_s": round(eval_s, 1),
        "train_examples_per_s": round(len(train) * spec.train.epochs / train_s, 1) if not spec.train.steps else
        round(spec.train.steps * spec.train.batch_size / train_s, 1),
    }
    write_json(run_dir / "env.json", environment())
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics)
