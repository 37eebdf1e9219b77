"""w19: web-data cleaning with datatrove, deduplication, and a custom SentencePiece tokenizer."""
