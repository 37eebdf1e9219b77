"""w11's sabotage twin (a chain retrieving random chunks fails the recall and F1 targets, at the profile's own
size), the reader (every span scored in one pass as separate forward passes score it; greedy decoding from the
shared prompt cache as transformers' own), the index as a checked artifact (never unpickled; corrupt, truncated,
mismatched and empty indexes refused), the one prompt that cuts context but never the question, SQuAD's official
scoring, and the gpu1 path shrunk onto this CPU (a SQuAD-format local directory, bf16, a tiny chat model), with
the LangChain chain giving the answers that were scored."""
import json

import pytest

from impl import adapters
from impl.core.artifacts import Runs
from impl.core.corpora import DataError
from impl.core.fixtures import fixture_path
from impl.core.hf import resolve_model
from impl.core.metrics import load_metric
from impl.core.profiles import load_profile, override
from impl.w11_rag import chain, index
from impl.w11_rag.index import IndexError_
from tests.conftest import tiny_llama_dir

CPU = load_profile("cpu").milestone("w11")
GPU1 = load_profile("gpu1").milestone("w11")
MINILM = "fixture:minilm"
DOCS = {"d1": "The Rhine flows from the Swiss Alps to the North Sea. " * 3,
        "d2": "Oxygen makes up about a fifth of the Earth's atmosphere by volume.",
        "d3": "Galileo showed that falling objects fall at the same rate regardless of weight."}


@pytest.fixture
def runs(tmp_path):
    """The twin's index is the acceptance check's when it ran before in this process (share)."""
    return Runs("w11", "test", share=True, root=tmp_path / "artifacts")


@pytest.fixture
def built_index(tmp_path):
    index.build(DOCS, tmp_path / "index", resolve_model(MINILM), MINILM, size=80, overlap=10)
    return tmp_path / "index"


# --- the sabotage twin ---------------------------------------------------------------------------------------
def test_a_chain_retrieving_random_chunks_fails_the_recall_and_f1_targets(runs):
    """The cpu profile itself (its paragraphs, questions, prompt, reader, chunking and k), the chain's retriever
    replaced by one returning random chunks: its F1 is the random-context baseline's, below closed-book and
    copying. The positive control is the acceptance check: the same spec with the dense retriever passes."""
    m = adapters.w11_rag(CPU, runs, retriever="random").metrics
    f1, recall = CPU.targets["f1"], CPU.targets["recall_at_k"]
    baselines = {name: m[f"{name}_f1"] for name in ("closed_book", "random_context", "copy")}
    assert not f1.passes(f1.checked_value(m["f1"], baselines)), (m["f1"], baselines)
    assert not recall.passes(recall.checked_value(m["recall_at_k"], {"random": m["random_recall_at_k"]})), m["recall_at_k"]
    assert m["recall"]["dense"][str(CPU.retrieve_k)] > m["recall_at_k"]  # the index itself was fine
    assert m["retriever"] == "random" and m["questions"] == CPU.questions and m["oracle_f1"] is None


# --- the index as an artifact --------------------------------------------------------------------------------
def test_the_index_is_written_without_pickle_and_reloads_into_langchains_faiss_store(built_index):
    assert sorted(p.name for p in built_index.iterdir()) == sorted(index.INDEX_FILES)
    store, chunks, manifest = index.load(built_index, resolve_model(MINILM), MINILM)
    assert manifest["dimension"] == 384 and manifest["chunks"] == len(chunks) > len(DOCS)  # d1 was split
    top = store.as_retriever(search_kwargs={"k": 1}).invoke("What fraction of the atmosphere is oxygen?")
    assert top[0].metadata["doc_id"] == "d2"


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "chunks.jsonl").write_text((d / "chunks.jsonl").read_text().replace("Rhine", "Rhone")),
     "sha256 does not match"),
    (lambda d: (d / "index.faiss").write_bytes((d / "index.faiss").read_bytes()[:100]), "sha256 does not match"),
    (lambda d: (d / "index.faiss").unlink(), "missing index.faiss"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not a valid manifest"),
])
def test_a_corrupt_or_truncated_index_is_refused_with_one_clear_error(built_index, damage, message):
    damage(built_index)
    with pytest.raises(IndexError_, match=message):
        index.load(built_index, resolve_model(MINILM), MINILM)


def test_an_index_of_another_dimension_or_embedding_model_is_refused(built_index):
    import faiss

    with pytest.raises(IndexError_, match="built with 'fixture:minilm'"):
        index.load(built_index, resolve_model(MINILM), "sentence-transformers/all-mpnet-base-v2")
    # an index of 8-d vectors whose manifest agrees with it: the query embedder's 384 dimensions do not
    manifest = json.loads((built_index / "manifest.json").read_text())
    small = faiss.IndexFlatIP(8)
    small.add(__import__("numpy").zeros((manifest["chunks"], 8), dtype="float32"))
    faiss.write_index(small, str(built_index / "index.faiss"))
    manifest["dimension"] = 8
    manifest["sha256"]["index.faiss"] = index._sha256(built_index / "index.faiss")
    (built_index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexError_, match="dimension 8, but fixture:minilm embeds to 384"):
        index.load(built_index, resolve_model(MINILM), MINILM)


def test_an_empty_corpus_is_refused_and_nothing_is_left_in_the_artifacts(tmp_path, runs):
    with pytest.raises(IndexError_, match="no chunks"):
        index.build({"empty": "   "}, tmp_path / "index", resolve_model(MINILM), MINILM, 500, 50)
    assert not (tmp_path / "index").exists()
    empty = squad_dir(tmp_path / "empty", rows=[])
    with pytest.raises(DataError, match="empty"):
        adapters.w11_rag(override(GPU1, data={"local_dir": str(empty)}), runs)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("metrics.json"))


# --- the reader and its one prompt ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fixture_path("smollm2"))


@pytest.fixture(scope="module")
def reader():
    return chain.load_reader(str(fixture_path("smollm2")), max_new_tokens=8, max_prompt_tokens=512, span_words=4,
                             sentences=2)


CONTEXT = ("The Rhine rises in the Swiss Alps. It flows north through Germany and the Netherlands, and reaches the "
           "North Sea at Rotterdam after 1,230 kilometres. Its largest tributary is the Moselle.")
QUESTION = "Where does the Rhine reach the North Sea?"


def test_every_span_is_scored_in_one_pass_as_separate_forward_passes_score_it(reader):
    """log P(span, end of turn | prompt) from the packed pass (a 4-D mask, the shared prompt's cache reused)
    against one plain forward pass per span of prompt + span + end of turn."""
    import torch

    prompt = reader.render({"question": QUESTION, "context": CONTEXT})
    sentences = chain.best_sentences(CONTEXT, QUESTION, reader.sentences)
    assert sentences[0].startswith("It flows north")  # "north" and "sea" against the first sentence's "rhine"
    packed = reader.span_scores(prompt, sentences, QUESTION)
    assert "Rotterdam" in packed and "the North Sea" not in packed and "North Sea" not in packed  # question words only
    prompt_ids = reader.tokenizer(prompt, add_special_tokens=False).input_ids
    for span in ("Rotterdam", "Germany and", "1,230 kilometres", "Swiss Alps"):
        if span not in packed:
            continue
        ids = [t for w in span.split() for t in reader.tokenizer(" " + w, add_special_tokens=False).input_ids]
        ids.append(reader.tokenizer.eos_token_id)
        with torch.no_grad():
            logp = torch.log_softmax(reader.model(torch.tensor([prompt_ids + ids])).logits[0].float(), -1)
        alone = sum(logp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(ids))
        assert packed[span] == pytest.approx(alone, abs=2e-3), span
    assert reader.answer({"question": QUESTION, "context": CONTEXT}) == max(packed, key=packed.get)


def test_a_prompt_is_read_with_the_lm_head_at_its_last_position_only(reader):
    """The next-token distribution after the prompt is the full forward pass's last row; the LM head (49,152 words
    wide) ran at that one position, not at every position of the prompt."""
    import torch

    prompt = reader.render({"question": QUESTION, "context": CONTEXT})
    head_rows = []
    hook = reader.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: head_rows.append(args[0].shape[1]))
    try:
        ids, logprobs, _ = reader._prompt(prompt)
    finally:
        hook.remove()
    assert head_rows and set(head_rows) == {1}
    with torch.no_grad():
        full = torch.log_softmax(reader.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert torch.allclose(logprobs, full, atol=1e-4)


def test_closed_book_greedy_decoding_from_the_shared_cache_is_transformers_own(reader):
    prompt = reader.render({"question": QUESTION, "context": None})
    ids = reader.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = reader.model.generate(ids, max_new_tokens=reader.max_new_tokens, do_sample=False,
                                pad_token_id=reader.tokenizer.eos_token_id)
    expected = chain.short_answer(reader.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert reader.greedy(prompt) == expected and reader.answer({"question": QUESTION, "context": None}) == expected


def test_a_second_reader_of_the_same_model_answers_what_the_first_read_from_memory(reader, monkeypatch):
    """The twin's reader (another instance, the same model and settings) answers what its check's reader read
    without reading it again; another context, or other settings, are read."""
    inputs = {"question": QUESTION, "context": CONTEXT}
    first = reader.answer(inputs)
    twin = chain.load_reader(str(fixture_path("smollm2")), max_new_tokens=8, max_prompt_tokens=512, span_words=4,
                             sentences=2)
    assert twin.name == reader.name
    monkeypatch.setattr(twin, "span_scores", lambda *a: pytest.fail("read twice"))
    assert twin.answer(inputs) == first and twin.answer(dict(inputs)) == first
    monkeypatch.setattr(twin, "span_scores", lambda *a: {"Moselle": 0.0})
    assert twin.answer({"question": QUESTION, "context": CONTEXT + " The Rhine is long."}) == "Moselle"
    twin.span_words = 3
    assert twin.answer(inputs) == "Moselle"
    assert reader.answer({"question": QUESTION, "context": " \n "}) == ""  # no sentence, no candidate: remembered too


def test_spans_of_function_words_or_the_questions_own_words_are_never_the_answer(reader):
    prompt = reader.render({"question": "Who is it?", "context": "It is the one of them."})
    # "It", "It is", "is the one" ...: a function word first; "them": function words only
    assert set(reader.span_scores(prompt, ["It is the one of them."], "Who is it?")) == {"one", "one of", "one of them"}
    assert reader.answer({"question": "Who is it?", "context": "It is of the."}) == ""  # no candidate at all


def test_the_copy_baseline_is_the_sentence_sharing_most_words_with_the_question():
    assert chain.copy_baseline({"question": QUESTION, "context": CONTEXT}) == chain.best_sentences(
        CONTEXT, QUESTION, 1)[0]
    assert chain.copy_baseline({"question": QUESTION, "context": None}) == ""


def test_one_prompt_for_every_condition_only_the_context_differs(smollm2_tokenizer):
    r = chain.Reader(model=None, tokenizer=smollm2_tokenizer, max_prompt_tokens=512)
    closed = r.render({"question": QUESTION, "context": None})
    with_context = r.render({"question": QUESTION, "context": CONTEXT})
    assert closed.replace(chain.NO_CONTEXT, CONTEXT) == with_context and closed.endswith(chain.ANSWER_PREFIX)


def test_a_long_context_is_cut_from_its_end_never_the_question_and_counted(smollm2_tokenizer):
    g = chain.Reader(model=None, tokenizer=smollm2_tokenizer, max_prompt_tokens=300)
    question = "Which river flows from the Swiss Alps to the North Sea?"
    prompt = g.render({"question": question, "context": "The Rhine is long. " * 200})
    assert question in prompt and len(smollm2_tokenizer(prompt, add_special_tokens=False).input_ids) <= 300
    assert prompt.count("The Rhine is long.") < 200 and g.truncated == [question]
    assert "Question:" in g.render({"question": question, "context": None}) and len(g.truncated) == 1


def test_a_question_longer_than_the_readers_prompt_is_a_clear_error(smollm2_tokenizer):
    g = chain.Reader(model=None, tokenizer=smollm2_tokenizer, max_prompt_tokens=300)
    with pytest.raises(chain.PromptTooLong, match="no room for any context"):
        g.render({"question": "why " * 300, "context": "The Rhine."})


# --- scoring --------------------------------------------------------------------------------------------------
def test_squad_scoring_normalises_as_the_official_script():
    squad = load_metric("squad")
    r = squad.compute(predictions=["The  Denver Broncos!", "Carolina", "a cat"],
                      references=[["Denver Broncos"], ["Carolina Panthers", "the Panthers"], ["dog"]])
    assert r["exact_match_per_example"] == [1.0, 0.0, 0.0]
    assert r["f1_per_example"] == pytest.approx([1.0, 2 / 3, 0.0])
    assert r["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


# --- the gpu1 path, shrunk -----------------------------------------------------------------------------------
def squad_dir(out, rows):
    """What `datasets` fetches for rajpurkar/squad (id, title, context, question, answers{text, answer_start}),
    as one validation parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "id": [r["id"] for r in rows], "title": ["t"] * len(rows), "context": [r["context"] for r in rows],
        "question": [r["question"] for r in rows],
        "answers": [{"text": [r["answer"]], "answer_start": [r["context"].find(r["answer"])]} for r in rows]},
        schema=pa.schema([("id", pa.string()), ("title", pa.string()), ("context", pa.string()),
                          ("question", pa.string()),
                          ("answers", pa.struct([("text", pa.list_(pa.string())),
                                                 ("answer_start", pa.list_(pa.int32()))]))])),
        out / "validation-00000-of-00001.parquet")
    return out


@pytest.fixture(scope="module")
def squad_like_dir(tmp_path_factory):
    """Real SQuAD paragraphs and answers from the offline squad fixture, in the hub dataset's format."""
    with open(fixture_path("squad") / "validation.jsonl") as f:
        rows = [json.loads(next(f)) for _ in range(12)]
    return squad_dir(tmp_path_factory.mktemp("squad"), [
        {"id": r["id"], "question": r["question"], "context": r["context"], "answer": r["answers"]["text"][0]}
        for r in rows])


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """Positions for the gpu1 prompt budget (2,048 + new tokens)."""
    return tiny_llama_dir(tmp_path_factory.mktemp("tiny-chat-llama"), max_positions=4096)


@pytest.mark.gpu_smoke
def test_gpu1_path_runs_here_shrunk_and_the_langchain_chain_gives_the_scored_answers(squad_like_dir, tiny_chat_model,
                                                                                     runs):
    spec = override(GPU1, data={"local_dir": str(squad_like_dir)}, questions=4, embedding_model=MINILM,
                    reader=tiny_chat_model, read={"max_new_tokens": 4})
    assert spec.read.dtype == "bfloat16" and spec.targets["f1"].threshold == 0.6
    r = adapters.w11_rag(spec, runs)
    m = r.metrics
    assert m["questions"] == 4 and m["index"]["documents"] == 12 and "rajpurkar/squad" in m["data"]
    assert 0 <= m["f1"] <= 1 and 0 <= m["oracle_f1"] <= 1 and m["latency_ms"]["reading"]["p95"] > 0
    first = json.loads((r.run_dir / "answers.jsonl").read_text().splitlines()[0])
    rag = adapters.w11_chain(spec, runs)
    assert rag.invoke(first["question"]) == first["rag"]  # the same chain gave the scored answer
    again = adapters.w11_rag(spec, Runs("w11", "test", reuse=True, root=runs.root))
    assert again.reused and again.metrics["f1"] == m["f1"]
