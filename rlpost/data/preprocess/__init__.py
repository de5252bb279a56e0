"""Per-task converters from a dataset's own format into verl-schema rows."""
