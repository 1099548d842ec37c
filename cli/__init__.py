"""The `neuralir` command: the composition root that gathers each layer's subcommands."""
