"""The .voco cache: its metadata schema, reading, writing, 8-bit storage, and the keys/values laid
out in time for answering."""
