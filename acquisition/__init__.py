"""Acquisition: cameras, stages and raw recordings (the first stage; imports no other chdl stage)."""
