"""qabot: a question-answering chatbot that a community trains on its own question/answer pairs."""

__version__ = "0.1.0"
