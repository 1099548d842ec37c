"""The search pipeline without its transport: retrieve -> fuse -> fetch -> rerank over three
backends (encoder, index, reranker), each either in this process or reached over gRPC.

`search.SearchPipeline` knows only the protocols in `backends`; `local` implements them on
the stages of this process (no serialization, no loopback hop), `remote` over gRPC channels
(deadlines, retries, errors naming the stage) and `sharded` fans one index out to several.
"""
