"""Video input: which frames to take (sampling), reading them through a backend (reader, backends/),
and feeding them to the model in the background (feed)."""
