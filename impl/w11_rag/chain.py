"""The RAG pipeline as LangChain writes it today (LCEL): `{"context": retriever, "question": passthrough} | reader`.

    rag = rag_chain(store.as_retriever(search_kwargs={"k": 3}), reader)
    rag.invoke("What part of the Earth's atmosphere is oxygen?")

One prompt for every condition (the model's own chat template, one worked example, then the context — retrieved
chunks, random chunks, the gold paragraph, or none — and the question; the answer turn opens with "Answer:"),
fitted to `max_prompt_tokens` by cutting context from its end, never the question (cut prompts are counted).

The answer is the one the model finds most probable, P(answer, end of turn | prompt):
- with a context, among the context's short spans (an extractive reader, as SQuAD's task is defined): every run
  of 1 to `span_words` words inside the `sentences` sentences sharing most words with the question that does not
  start with a function word nor hold only function words and the question's own words, all scored by the LM at
  once (below); a 135M model asked to generate paraphrases instead of copying (generated RAG F1
  0.12 on the cpu profile, below the 0.14 of copying the best-overlap sentence whole);
- without one (closed-book), by greedy decoding, the usual approximation of that argmax over all strings.

Scoring every span at once: the prompt is run once (its KV cache kept), then one sequence holds, for every start
word, the next `span_words` words; a 4-D attention mask lets each of those continuations see the prompt and its
own earlier tokens only, with positions continuing the prompt's. Each span's score is the continuation's token
log-probabilities up to its last word plus the log-probability of the end-of-turn token there (one forward pass
instead of one per span; the same scores within float error).
"""
from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

from impl.core.errors import MilestonesError

INSTRUCTION = ("Answer the question. Reply with the shortest span of words that answers it, copied from the context "
               "when there is one, and nothing else.")
NO_CONTEXT = "(none)"
ANSWER_PREFIX = "Answer:"
EXAMPLE = {"context": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
                      "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
                      "to 1889.",
           "question": "Whose company designed and built the Eiffel Tower?", "answer": "Gustave Eiffel"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_EDGE_PUNCTUATION = "\"'()[]{},.;:!?"
# function words: a span made only of them and the question's words answers nothing, and one starting with one
# has the span without it as its answer. Not a search engine's stop list (scikit-learn's holds "two", "hundred",
# "first", "several": answers).
FUNCTION_WORDS = frozenset("""a an the of in on at to for from by with into onto upon as and or but nor if than then so
    is are was were be been being am do does did has have had it its this that these those which who whom whose what
    when where why how he she they them him his her hers their theirs we us our you your i me my there here not no
    any some such very also only just""".split())


class PromptTooLong(MilestonesError):
    pass


def _context_text(context) -> str | None:
    if isinstance(context, list):  # LangChain Documents
        return "\n\n".join(d.page_content for d in context)
    return context


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (what BM25 indexes and what a question shares with a sentence)."""
    return re.findall(r"\w+", text.lower())


def best_sentences(context: str, question: str, n: int) -> list[str]:
    """The context's `n` sentences sharing the most distinct words with the question, function words aside (ties:
    the earlier), in that order."""
    asked = set(word_tokens(question)) - FUNCTION_WORDS
    sentences = [s.strip() for part in context.split("\n") for s in _SENTENCE_END.split(part) if s.strip()]
    ranked = sorted(range(len(sentences)), key=lambda i: (-len(asked & set(word_tokens(sentences[i]))), i))
    return [sentences[i] for i in ranked[:n]]


def candidate_spans(sentence: str, span_words: int) -> list[list[str]]:
    """For each word of the sentence, it and the words after it, `span_words` at most (edge punctuation stripped
    from every word): the spans starting there are this list's prefixes."""
    words = [w.strip(_EDGE_PUNCTUATION) for w in sentence.split()]
    words = [w for w in words if w]
    return [words[i:i + span_words] for i in range(len(words))]


_answers: dict[tuple, str] = {}


@dataclass
class Reader:
    """A causal LM with a chat template: the prompt, the span scorer and greedy decoding."""
    model: object  # a transformers causal LM, in eval mode
    tokenizer: object
    max_prompt_tokens: int
    span_words: int = 4
    sentences: int = 2
    max_new_tokens: int = 12
    truncated: list = field(default_factory=list)  # questions whose context was cut to fit
    name: str = ""  # the model and its settings (load_reader): readers of one name answer alike (see `answer`)
    _shared: tuple | None = None  # (token ids every prompt starts with, their KV cache)
    _cache_kwarg: str = "cache"
    _last_logits_only: dict = field(default_factory=dict)

    def __post_init__(self):
        # transformers 5.2x calls the KV cache `cache` (`past_key_values` before, still read with a warning); looked
        # up once, not at every decoding step
        if self.model is None:
            return
        parameters = inspect.signature(self.model.forward).parameters
        if "cache" not in parameters:
            self._cache_kwarg = "past_key_values"
        # a prompt's next-token distribution needs the LM head at its last position only: over SmolLM2's 49,152
        # words, the head at every position of the prompts took ~11% of the reading (the same answers without it)
        if "logits_to_keep" in parameters:
            self._last_logits_only = {"logits_to_keep": 1}

    def render(self, inputs: dict) -> str:
        """{"question", "context": list of Documents | str | None} -> the chat-formatted prompt text."""
        question, context = inputs["question"], _context_text(inputs.get("context"))
        if context is None:
            return self._chat(NO_CONTEXT, question)
        room = self.max_prompt_tokens - len(self.tokenizer(self._chat("", question), add_special_tokens=False).input_ids)
        if room <= 0:
            raise PromptTooLong(f"the question alone takes {self.max_prompt_tokens - room} of the reader's "
                                f"{self.max_prompt_tokens} prompt tokens: no room for any context ({question[:80]!r}...)")
        ids = self.tokenizer(context, add_special_tokens=False).input_ids
        if len(ids) <= room:
            return self._chat(context, question)
        self.truncated.append(question)
        while True:  # decoded pieces can merge into other tokens at the seams: re-count, cut more if needed
            prompt = self._chat(self.tokenizer.decode(ids[:room]), question)
            over = len(self.tokenizer(prompt, add_special_tokens=False).input_ids) - self.max_prompt_tokens
            if over <= 0 or room <= 0:
                return prompt
            room -= over

    def _chat(self, context: str, question: str) -> str:
        """One worked example first (ours, not from any dataset): a small model copies its short-answer form."""
        turn = lambda c, q: f"Context:\n{c}\n\nQuestion: {q}"  # noqa: E731
        messages = [{"role": "user", "content": INSTRUCTION + "\n\n" + turn(EXAMPLE["context"], EXAMPLE["question"])},
                    {"role": "assistant", "content": f"{ANSWER_PREFIX} {EXAMPLE['answer']}"},
                    {"role": "user", "content": turn(context, question)}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX

    def answer(self, inputs: dict) -> str:
        """{"question", "context"} -> a short answer: the step the RAG chain and every baseline share. Remembered in
        this process by the reader's name, its prompt and candidate sentences (the answer is a pure function of
        them): w11's twin reads the random chunks and answers the closed-book questions its check read already."""
        prompt = self.render(inputs)
        context = _context_text(inputs.get("context"))
        sentences = None if context is None else best_sentences(context, inputs["question"], self.sentences)
        key = (self.name, self.max_prompt_tokens, self.span_words, self.max_new_tokens, prompt,
               None if sentences is None else tuple(sentences))
        if not self.name or key not in _answers:
            if sentences is None:
                answer = self.greedy(prompt)
            else:
                scores = self.span_scores(prompt, sentences, inputs["question"])
                answer = max(scores, key=scores.get) if scores else ""
            if not self.name:
                return answer
            _answers[key] = answer
        return _answers[key]

    def _forward(self, ids, cache=None, **kwargs):
        import torch

        name = self._cache_kwarg
        with torch.no_grad():
            out = self.model(torch.tensor([ids], device=self.model.device), **{name: cache}, **kwargs)
        return out, getattr(out, name) if kwargs.get("use_cache") else None

    def _prompt(self, prompt: str):
        """The prompt through the model -> (its ids, the last position's log-probabilities, its KV cache). The
        tokens every prompt starts with (system turn, instruction, worked example) are run once and their cache
        copied: a third of a RAG prompt here."""
        import torch

        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if self._shared is None:
            a, b = (self.tokenizer(self._chat(c, q), add_special_tokens=False).input_ids
                    for c, q in (("a", "b"), ("c d", "e f")))
            n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            self._shared = (a[:n], self._forward(a[:n], use_cache=True, **self._last_logits_only)[1])
        shared, cache = self._shared
        if ids[:len(shared)] == shared:
            out, cache = self._forward(ids[len(shared):], copy.deepcopy(cache), use_cache=True,
                                       **self._last_logits_only)
        else:  # a prompt of another shape: all of it
            out, cache = self._forward(ids, use_cache=True, **self._last_logits_only)
        return ids, torch.log_softmax(out.logits[0, -1].float(), -1), cache

    def greedy(self, prompt: str) -> str:
        """Greedy decoding to the end of the turn or `max_new_tokens`; the first line of it."""
        ids, logprobs, cache = self._prompt(prompt)
        new = []
        while len(new) < self.max_new_tokens:
            token = int(logprobs.argmax())
            if token == self.tokenizer.eos_token_id:
                break
            new.append(token)
            out, cache = self._forward([token], cache, use_cache=True)
            logprobs = out.logits[0, -1]
        return short_answer(self.tokenizer.decode(new, skip_special_tokens=True))

    def span_scores(self, prompt: str, sentences: list[str], question: str) -> dict[str, float]:
        """Each candidate span of the sentences -> log P(span, end of turn | prompt) (see the module's docstring);
        the first occurrence of a span wins. Not candidates: a span starting with a function word, and one made
        only of function words and the question's own words."""
        import torch

        tok = self.tokenizer
        end_of_turn = tok.eos_token_id  # what the chat template closes an assistant turn with (SmolLM2: <|im_end|>)
        dull = set(word_tokens(question)) | FUNCTION_WORDS
        flat, pieces = [], []  # pieces: (start in flat, tokens per word, words)
        for sentence in sentences:
            for words in candidate_spans(sentence, self.span_words):
                if words[0].lower() in FUNCTION_WORDS:
                    continue
                ids = [tok(" " + w, add_special_tokens=False).input_ids for w in words]
                pieces.append((len(flat), ids, words))
                flat += [t for word in ids for t in word]
        if not flat:
            return {}
        prompt_ids, first, cache = self._prompt(prompt)
        device, dtype = self.model.device, self.model.dtype
        n, p = len(flat), len(prompt_ids)
        allowed = torch.zeros(n, p + n, dtype=torch.bool, device=device)
        allowed[:, :p] = True
        positions = torch.empty(n, dtype=torch.long, device=device)
        for start, ids, _ in pieces:
            length = sum(map(len, ids))
            allowed[start:start + length, p + start:p + start + length] = torch.ones(
                length, length, dtype=torch.bool, device=device).tril()
            positions[start:start + length] = torch.arange(p, p + length, device=device)
        mask = torch.zeros(1, 1, n, p + n, dtype=dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        tail, _ = self._forward(flat, cache, attention_mask=mask, position_ids=positions[None], use_cache=False)
        tokens = torch.tensor(flat, device=device)
        rest = torch.log_softmax(tail.logits[0].float(), -1)
        # log P(token i | what precedes it in its continuation): from position i - 1, or from the prompt's last
        # position for a continuation's first token
        token_lp = torch.cat([first[tokens[:1]], rest[:-1].gather(1, tokens[1:, None])[:, 0]])
        starts = torch.tensor([start for start, _, _ in pieces], device=device)
        token_lp[starts] = first[tokens[starts]]
        token_lp, end_lp = token_lp.tolist(), rest[:, end_of_turn].tolist()
        scores = {}
        for start, ids, words in pieces:
            at, score = start, 0.0
            for k, word in enumerate(ids):
                score += sum(token_lp[at:at + len(word)])
                at += len(word)
                if not {w.lower() for w in words[:k + 1]} <= dull:
                    scores.setdefault(" ".join(words[:k + 1]), score + end_lp[at - 1])
        return scores


def load_reader(model_dir: str, max_new_tokens: int, max_prompt_tokens: int, span_words: int, sentences: int,
                dtype: str = "float32") -> Reader:
    import torch
    from transformers import AutoModelForCausalLM

    from impl.core.hf import device, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise MilestonesError(f"{model_dir}: the reader needs a chat template (an instruct model)")
    model = load_model(AutoModelForCausalLM, model_dir, dtype=getattr(torch, dtype)).to(device()).eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_prompt_tokens + max(max_new_tokens, 8 * span_words) > limit:
        raise MilestonesError(f"max_prompt_tokens {max_prompt_tokens} + the answer's tokens exceed the reader's "
                              f"{limit} positions")
    return Reader(model, tokenizer, max_prompt_tokens, span_words, sentences, max_new_tokens,
                  name=f"{Path(model_dir).resolve()} {dtype}")


def short_answer(text: str) -> str:
    """The model's first line, without a leading "Answer:" or a closing full stop."""
    line = text.strip().split("\n", 1)[0].strip()
    if line.lower().startswith("answer:"):
        line = line[7:].strip()
    return line.rstrip(".").strip()


def copy_baseline(inputs: dict, sentences: int = 1) -> str:
    """The generator-free baseline: the context's sentence sharing the most words with the question, whole."""
    context = _context_text(inputs.get("context"))
    return " ".join(best_sentences(context, inputs["question"], sentences)) if context else ""


def answer_chain(reader: Reader):
    """{"question", "context"} -> a short answer."""
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(reader.answer)


def rag_chain(retriever, reader: Reader):
    """question -> retrieved chunks -> prompt -> reader -> short answer."""
    from langchain_core.runnables import RunnablePassthrough

    return {"context": retriever, "question": RunnablePassthrough()} | answer_chain(reader)
