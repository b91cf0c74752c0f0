"""The seeded study: does the early tail forecast token efficiency, at which scale, by which early definition and
rank window (docs/results.md "the study")."""
