"""The limits of the neuralir.v1 API, as numbers: the proto comments state them, the server
enforces them, and evaluation and clients read them here instead of repeating them.

A request over a limit is refused with INVALID_ARGUMENT naming the field, never cut silently.
"""

MAX_TEXTS_PER_ENCODE = 256  # EncodeRequest.texts
MAX_QUERY_CHARS = 8192  # every query text, and EncodeRequest.texts[i]
MAX_PASSAGE_CHARS = 16384  # Passage.text
MAX_PASSAGES_PER_RERANK = 1000  # RerankRequest.passages
MAX_K = 1000  # results of one search (SearchRequest.k, index k)
MAX_DOC_IDS = 1000  # GetDocumentsRequest.doc_ids
MAX_EF = 4096  # HNSW expansion at search time
MAX_RERANK_DEPTH = 200  # SearchRequest.rerank_depth
MAX_SNIPPET_CHARS = 4096  # SearchRequest.snippet_chars
MAX_BATCH_SEARCHES = 64  # BatchSearchRequest.requests

# What one response may carry, so that every accepted Search or BatchSearch answers within the
# 16 MiB message limit (--max-message-mib) instead of failing after the work. Counted over the
# searches of one call (a Search is a call of one):
MAX_RESULTS_PER_CALL = 10_000  # sum of k
# sum of k * snippet_chars: at most 4 UTF-8 bytes a character, 8,192,000 bytes of snippets
MAX_SNIPPET_CHARS_PER_CALL = 2_048_000
# What the budget leaves each hit for its doc_id and title (UTF-8 bytes, on average over the
# hits) with the response still 3 MiB under 16 MiB (tests/test_response_budget.py measures
# it); an index with longer ids or titles needs a larger --max-message-mib.
HIT_ID_AND_TITLE_BYTES = 448
