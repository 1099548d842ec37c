"""Retrieval evaluation: test collections, runs through the real services, metrics, reports."""
