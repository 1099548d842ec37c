"""Indexes, offline and read-only: the on-disk format, the build and its atomic publish, the
store that serves a built index, shards, corpus readers and the demo corpus. No gRPC here:
the server's index service wraps `store.IndexStore`.
"""
