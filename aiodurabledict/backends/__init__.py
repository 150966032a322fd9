"""One module per store; each imports its client library only when it is imported itself."""
