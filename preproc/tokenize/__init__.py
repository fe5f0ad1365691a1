"""Tokenizing: HF tokenizers, the tiktoken backend, the tokenize stage and its writers."""
