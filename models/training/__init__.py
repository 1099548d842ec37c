"""Training, evaluation and export of the project's cross-encoder reranker.

Run the modules from the repository root, e.g.
``python -m models.training.pairs`` (or ``python -m neuralir.models.training.pairs``
once the package is installed); the modules import each other relatively.
"""
