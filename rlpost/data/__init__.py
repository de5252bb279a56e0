"""Datasets in verl's schema: row files, validation, prompt datasets, sampling, collation, preprocessing."""
