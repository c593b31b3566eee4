"""Speed and memory measurements on random weights of named architectures (`vococli bench`)."""
