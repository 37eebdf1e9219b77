"""w03 at toy scale and its sabotage twins: the cpu targets fail on shuffled labels and on learning rate 0; the
gpu1 code paths (hub-format data, bf16, Trainer) run here shrunk; bad checkpoints, empty splits and incomplete
tokenizer directories give one clear error each."""
import re
import shutil

import pytest

from impl import adapters
from impl.core.artifacts import CheckpointError, Runs
from impl.core.corpora import DataError
from impl.core.fixtures import fixture_path
from impl.core.hf import ModelLoadError, TokenizerError, load_tokenizer
from impl.core.metrics import load_metric
from impl.core.profiles import load_profile, override
from impl.core.targets import Target


@pytest.fixture
def runs(tmp_path):
    return Runs("w03", "test", root=tmp_path / "artifacts")


CPU = load_profile("cpu").milestone("w03")


# --- sabotage twins: the cpu targets, the cpu data and protocol, a broken run --------------------------------
def test_shuffled_labels_fail_the_cpu_classifier_target(runs):
    m = adapters.w03_classifier(CPU, runs, shuffle_labels=True).metrics
    target = CPU.targets["sentiment_accuracy"]
    value = target.checked_value(m["accuracy"], {"tfidf_logreg": m["tfidf_logreg"], "majority_class": m["majority_class"]})
    assert not target.passes(value)
    assert m["accuracy"] < m["tfidf_logreg"]


def test_learning_rate_zero_fails_the_cpu_causal_lm_target(runs):
    """lr 0 leaves the weights where they were, so two steps stand for the whole budget, and a quarter of the
    validation tokens and 8-token stories for the whole evaluation: on any tokens the perplexity after tuning is
    the one before it."""
    broken = override(CPU, clm={"train": {"lr": 0.0, "steps": 2}, "eval_tokens": 1024,
                                "stories": {"max_new_tokens": 8}})
    m = adapters.w03_clm(broken, runs).metrics
    target = CPU.targets["clm_val_ppl"]
    assert not target.passes(target.checked_value(m["val_ppl"], {"before_finetune": m["ppl_before_finetune"]}))
    assert m["val_ppl"] == pytest.approx(m["ppl_before_finetune"], rel=1e-6)
    assert len(m["stories"]) == len(CPU.clm.stories.prompts) >= 5


def test_learning_rate_zero_fails_the_cpu_mlm_target(runs):
    broken = override(CPU, mlm={"train": {"lr": 0.0, "steps": 2}})
    m = adapters.w03_mlm(broken, runs).metrics
    target = CPU.targets["mlm_accuracy"]
    assert not target.passes(target.checked_value(m["masked_accuracy"], {"most_frequent_token": m["most_frequent_token"]}))
    assert m["masked_positions_scored"] > 1000


# --- the gpu1 forms, shrunk, on local copies of the hub's formats ---------------------------------------------
def _tiny_bert_dir(path):
    """A 2-layer BERT in the layout of a hub model directory, with MiniLM's uncased WordPiece tokenizer."""
    from transformers import BertConfig, BertModel

    path.mkdir()
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(fixture_path("minilm") / f, path / f)
    return path


def _tiny_gpt2_dir(path):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    path.mkdir()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(path)
    GPT2Tokenizer.from_pretrained(fixture_path("gpt2-tokenizer")).save_pretrained(path)
    return path


def _parquet(path, split, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(exist_ok=True)
    pq.write_table(pa.table(columns), path / f"{split}-00000-of-00001.parquet")


@pytest.fixture(scope="module")
def imdb_like_dir(tmp_path_factory):
    from impl.core.fixtures import read_documents

    sentences = read_documents("pang-lee", "sentences.jsonl")
    pos, neg = [r for r in sentences if r["label"] == 1][:80], [r for r in sentences if r["label"] == 0][:80]
    rows = [r for pair in zip(pos, neg) for r in pair]  # the file lists the classes in blocks: interleave them
    d = tmp_path_factory.mktemp("imdb")
    _parquet(d, "train", text=[r["text"] for r in rows[:120]], label=[r["label"] for r in rows[:120]])
    _parquet(d, "test", text=[r["text"] for r in rows[120:]], label=[r["label"] for r in rows[120:]])
    return d


@pytest.fixture(scope="module")
def writingprompts_like_dir(tmp_path_factory):
    from impl.core.fixtures import read_documents

    docs = read_documents("austen")[:12]
    d = tmp_path_factory.mktemp("writingprompts")
    for split, part in (("train", docs[:8]), ("validation", docs[8:])):
        _parquet(d, split, prompt=[f"[ WP ] {x['text'][:80]}" for x in part],
                 story=[x["text"][80:3000].replace("\n\n", " <newline> ") for x in part])
    return d


GPU1 = load_profile("gpu1").milestone("w03")
SMALL_TRAIN = {"steps": 2, "batch_size": 4, "warmup_steps": 1, "log_every": 1}


@pytest.mark.gpu_smoke
def test_gpu1_classifier_path_on_imdb_format_with_bf16(imdb_like_dir, tmp_path, runs):
    assert GPU1.classifier.train.precision == "bf16" and GPU1.classifier.data.source == "hub"
    spec = override(GPU1, classifier=dict(model=str(_tiny_bert_dir(tmp_path / "bert")), max_length=32,
                        data={"local_dir": str(imdb_like_dir)}, train=SMALL_TRAIN))
    m = adapters.w03_classifier(spec, runs).metrics
    assert 0 <= m["accuracy"] <= 1 and 0.3 < m["majority_class"] < 0.7
    n_train, n_val, n_test = map(int, re.search(r"(\d+)/(\d+)/(\d+) train/validation/test", m["data"]).groups())
    assert n_train + n_val == 120 and n_val > 0 and n_test == 40 and "imdb" in m["data"]


@pytest.mark.gpu_smoke
def test_gpu1_causal_lm_path_on_writingprompts_format(writingprompts_like_dir, tmp_path, runs):
    spec = override(GPU1, clm=dict(model=str(_tiny_gpt2_dir(tmp_path / "gpt2")), block_size=32, eval_tokens=256,
                        data={"local_dir": str(writingprompts_like_dir)}, train=SMALL_TRAIN,
                        stories={"max_new_tokens": 4}))
    m = adapters.w03_clm(spec, runs).metrics
    assert m["val_ppl"] > 1 and m["val_tokens_scored"] == 8 * 31 and len(m["stories"]) == 5
    assert "writingprompts" in m["data"] and "prompt+story" in m["data"]


@pytest.mark.gpu_smoke
def test_gpu1_mlm_path_on_wikitext_format(wikitext_like_dir, runs):
    spec = override(GPU1, mlm=dict(vocab_size=500, n_layer=1, n_embd=32, n_head=2, seq_len=32, eval_sequences=16,
                        max_train_sequences=64, data={"local_dir": str(wikitext_like_dir)}, train=SMALL_TRAIN))
    m = adapters.w03_mlm(spec, runs).metrics
    assert 0 <= m["masked_accuracy"] <= 1 and m["vocab_size"] <= 500 and m["train_sequences"] == 64


# --- bad input -------------------------------------------------------------------------------------------------
def test_a_missing_classifier_checkpoint_is_a_clear_error(tmp_path):
    from impl.w03_finetune.classifier import load_classifier

    with pytest.raises(CheckpointError, match="no classifier checkpoint at .*python -m impl train w03"):
        load_classifier(tmp_path / "nowhere", ["negative", "positive"])


def test_a_mismatched_classifier_checkpoint_is_a_clear_error(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    from impl.w03_finetune.classifier import load_classifier

    small = dict(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    three = BertForSequenceClassification(BertConfig(**small, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}))
    three.save_pretrained(tmp_path / "three")
    with pytest.raises(CheckpointError, match=r"classifies into \['neg', 'neu', 'pos'\].*\['negative', 'positive'\]"):
        load_classifier(tmp_path / "three", ["negative", "positive"])
    BertForMaskedLM(BertConfig(**small)).save_pretrained(tmp_path / "mlm")
    with pytest.raises(CheckpointError, match="BertForMaskedLM checkpoint, not a sequence classifier"):
        load_classifier(tmp_path / "mlm", ["negative", "positive"])
    two = BertForSequenceClassification(BertConfig(**small, num_labels=2, id2label={0: "negative", 1: "positive"}))
    two.save_pretrained(tmp_path / "two")
    weights = tmp_path / "two" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated, as after a crash mid-copy
    with pytest.raises(CheckpointError, match="checkpoint unreadable"):
        load_classifier(tmp_path / "two", ["negative", "positive"])


def test_an_empty_split_is_a_clear_error(tmp_path, runs):
    with pytest.raises(DataError, match="the test split is empty"):
        adapters.w03_classifier(override(CPU, classifier={"data": {"test_fraction": 0.0}}), runs)
    import pyarrow as pa

    _parquet(tmp_path / "hub", "train", text=["good film", "bad film"] * 20, label=[1, 0] * 20)
    _parquet(tmp_path / "hub", "test", text=pa.array([], pa.string()), label=pa.array([], pa.int64()))
    spec = override(GPU1, classifier={"data": {"local_dir": str(tmp_path / "hub")}})
    with pytest.raises(DataError, match="the test split is empty"):
        adapters.w03_classifier(spec, runs)


def test_a_tokenizer_directory_with_missing_files_is_a_clear_error(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(fixture_path("minilm") / "tokenizer_config.json", d)
    with pytest.raises(TokenizerError, match="not a complete tokenizer directory.*found tokenizer_config.json"):
        load_tokenizer(str(d))
    with pytest.raises(TokenizerError, match="no such directory"):
        load_tokenizer(str(tmp_path / "absent"))
    shutil.copy(fixture_path("minilm") / "vocab.txt", d)
    assert load_tokenizer(str(d))("Hello world")["input_ids"][0] == 101  # [CLS]


def test_a_model_directory_without_weights_is_a_clear_error(tmp_path, runs):
    d = tmp_path / "model"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(fixture_path("minilm") / f, d)
    spec = override(CPU, classifier={"model": str(d)})
    with pytest.raises(ModelLoadError, match="config.json missing"):
        adapters.w03_classifier(spec, runs)


# --- the pieces the checks rely on -----------------------------------------------------------------------------
def test_local_accuracy_metric_loads_offline_and_computes():
    assert load_metric("accuracy").compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0]) == {"accuracy": 0.5}
    with pytest.raises(Exception, match="no local metric 'bleu'"):
        load_metric("bleu")


def test_relative_targets_judge_against_the_strongest_baseline():
    t = Target(direction="higher", threshold=0.05, protocol="p", baselines=["tfidf", "majority"])
    assert t.checked_value(0.80, {"tfidf": 0.72, "majority": 0.5}) == pytest.approx(0.08)
    assert t.label("accuracy") == "accuracy - max(tfidf, majority)"
    with pytest.raises(Exception, match="baselines"):
        t.checked_value(0.8, {"tfidf": 0.7})
    r = Target(direction="lower", threshold=0.9, protocol="p", baselines=["before"], compare="ratio")
    assert r.passes(r.checked_value(18.0, {"before": 24.0})) and not r.passes(r.checked_value(24.0, {"before": 24.0}))


def test_the_mlm_collator_masks_fifteen_percent_eighty_ten_ten():
    from impl.w03_finetune.mlm import masked_batches

    tok = load_tokenizer("fixture:minilm")
    seqs = [tok("the quick brown fox jumps over the lazy dog " * 12)["input_ids"][:128] for _ in range(64)]
    (b,) = masked_batches(tok, seqs, 0.15)
    chosen = b["labels"] != -100
    frac = chosen.float().mean().item()
    as_mask = (b["input_ids"][chosen] == tok.mask_token_id).float().mean().item()
    assert 0.12 < frac < 0.18 and 0.75 < as_mask < 0.85
    (again,) = masked_batches(tok, seqs, 0.15)
    assert (again["labels"] == b["labels"]).all()  # the held-out masks are fixed
