"""The synthetic video world whose answers are exact: scenes, clips and their questions."""
