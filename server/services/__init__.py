"""The gRPC servicers, one per service: validate the request against the API's limits, call
the stage (or the search pipeline) with plain values, and build the response. No model, index
or pipeline logic lives here."""
