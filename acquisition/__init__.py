"""Acquisition: cameras, stages, raw recordings, and the config validator every stage shares (the first
stage; imports no other chdl stage)."""
