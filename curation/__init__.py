"""Curation: QC, reconstruction and packing of raw recordings into the curated dataset format."""
