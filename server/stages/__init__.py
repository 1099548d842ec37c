"""The three stages as transport-free engines: each owns its model or index, its threads and
its batching queue, takes plain Python values and returns plain results with their timing.

The gRPC servicers (`neuralir.server.services`) adapt them to the wire; the search pipeline
(`neuralir.server.pipeline`) calls them directly when they live in the same process.
"""
