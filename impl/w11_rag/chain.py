"""The RAG pipeline as LangChain writes it today (LCEL): `retriever | prompt | llm | parser`.

    rag = rag_chain(store.as_retriever(search_kwargs={"k": 3}), generator)
    rag.invoke("What part of the Earth's atmosphere is oxygen?")

The generator is a transformers text-generation pipeline behind LangChain's `HuggingFacePipeline` (greedy). Its
prompt is rendered with the model's own chat template, and fitted to `max_prompt_tokens` by cutting retrieved
context from its end — never the question; how many prompts were cut is counted. The same answer step serves
the two baselines: closed-book (no context) and oracle (the gold paragraph).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from impl.core.errors import MilestonesError

RAG_INSTRUCTION = ("Answer the question using the context. Reply with the shortest span of words copied from the "
                   "context that answers it, and nothing else.")
CLOSED_BOOK_INSTRUCTION = "Answer the question. Reply with a short answer of a few words, and nothing else."
EXAMPLE = {"context": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is "
                      "named after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 "
                      "to 1889.",
           "question": "Whose company designed and built the Eiffel Tower?", "answer": "Gustave Eiffel"}


class PromptTooLong(MilestonesError):
    pass


@dataclass
class Generator:
    """A causal LM with a chat template, as a LangChain LLM, and the prompt fitting that goes with it."""
    llm: object  # langchain_community HuggingFacePipeline
    tokenizer: object
    max_prompt_tokens: int
    truncated: list = field(default_factory=list)  # questions whose context was cut to fit

    def render(self, inputs: dict) -> str:
        """{"question", "context": list of Documents | str | None} -> the chat-formatted prompt text."""
        question, context = inputs["question"], inputs.get("context")
        if isinstance(context, list):
            context = "\n\n".join(d.page_content for d in context)
        if context is None:
            return self._chat(CLOSED_BOOK_INSTRUCTION, f"Question: {question}")
        shell = self._chat(RAG_INSTRUCTION, f"Context:\n\n\nQuestion: {question}")
        room = self.max_prompt_tokens - len(self.tokenizer(shell, add_special_tokens=False).input_ids)
        if room <= 0:
            raise PromptTooLong(f"the question alone takes {self.max_prompt_tokens - room} of the generator's "
                                f"{self.max_prompt_tokens} prompt tokens: no room for any context ({question[:80]!r}...)")
        ids = self.tokenizer(context, add_special_tokens=False).input_ids
        if len(ids) <= room:
            return self._chat(RAG_INSTRUCTION, f"Context:\n{context}\n\nQuestion: {question}")
        self.truncated.append(question)
        while True:  # decoded pieces can merge into other tokens at the seams: re-count, cut more if needed
            prompt = self._chat(RAG_INSTRUCTION, f"Context:\n{self.tokenizer.decode(ids[:room])}\n\nQuestion: {question}")
            over = len(self.tokenizer(prompt, add_special_tokens=False).input_ids) - self.max_prompt_tokens
            if over <= 0 or room <= 0:
                return prompt
            room -= over

    def _chat(self, instruction: str, content: str) -> str:
        """One worked example first (ours, not from any dataset): a 135M model copies its short-answer form
        (measured on 24 disfl_qa questions, gold paragraph: F1 0.064 without it, 0.093 with it)."""
        shot = instruction + "\n\n" + (f"Context:\n{EXAMPLE['context']}\n\n" if instruction == RAG_INSTRUCTION else "")
        messages = [{"role": "user", "content": shot + f"Question: {EXAMPLE['question']}"},
                    {"role": "assistant", "content": EXAMPLE["answer"]},
                    {"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def load_generator(model_dir: str, max_new_tokens: int, max_prompt_tokens: int, batch_size: int,
                   dtype: str = "float32") -> Generator:
    import torch
    from langchain_community.llms import HuggingFacePipeline
    from transformers import AutoModelForCausalLM, pipeline

    from impl.core.hf import device, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        raise MilestonesError(f"{model_dir}: the generator needs a chat template (an instruct model)")
    tokenizer.padding_side = "left"  # batched greedy decoding continues every prompt from its last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(AutoModelForCausalLM, model_dir, dtype=getattr(torch, dtype)).to(device()).eval()
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_prompt_tokens + max_new_tokens > limit:
        raise MilestonesError(f"max_prompt_tokens {max_prompt_tokens} + max_new_tokens {max_new_tokens} exceed "
                              f"the generator's {limit} positions")
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device=device(), batch_size=batch_size)
    llm = HuggingFacePipeline(pipeline=pipe, batch_size=batch_size, pipeline_kwargs={
        "max_new_tokens": max_new_tokens, "do_sample": False, "return_full_text": False,
        "pad_token_id": tokenizer.pad_token_id})
    return Generator(llm, tokenizer, max_prompt_tokens)


def short_answer(text: str) -> str:
    """The model's first line, without a leading "Answer:" or a closing full stop."""
    line = text.strip().split("\n", 1)[0].strip()
    if line.lower().startswith("answer:"):
        line = line[7:].strip()
    return line.rstrip(".").strip()


def answer_chain(generator: Generator):
    """{"question", "context"} -> a short answer: the step the RAG chain and both baselines share."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(generator.render) | generator.llm | StrOutputParser() | RunnableLambda(short_answer)


def rag_chain(retriever, generator: Generator):
    """question -> retrieved chunks -> prompt -> generator -> short answer."""
    from langchain_core.runnables import RunnablePassthrough

    return {"context": retriever, "question": RunnablePassthrough()} | answer_chain(generator)
