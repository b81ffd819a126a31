"""Parquet result tables: their schema and their atomic, idempotent storage."""
