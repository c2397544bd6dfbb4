"""Versions of chdl's on-disk formats: a file a newer chdl wrote is refused as such ("upgrade chdl"), not as
"not a chdl file". One rule for every format (raw recordings, datasets, checkpoints, scorer files); it lives in
``acquisition`` (the first stage) so that every later stage may import it.
"""

from __future__ import annotations


def newer_format(what: str, got: object, expected: str) -> str | None:
    """The refusal of a file a newer chdl wrote, when ``got`` names a later version of the on-disk format
    ``expected`` (e.g. ``"chdl.dataset/2"`` against ``"chdl.dataset/1"``): "a {what} {got} (made by a newer chdl);
    this chdl reads {expected}: upgrade chdl to use it" (``what``: e.g. "checkpoint of format"); None otherwise.
    Such a file was refused as "not a chdl file"."""
    if not isinstance(got, str):
        return None
    name, _, version = got.rpartition("/")
    expected_name, _, expected_version = expected.rpartition("/")
    if name == expected_name and version.isdigit() and expected_version.isdigit() \
            and int(version) > int(expected_version):
        return f"a {what} {got} (made by a newer chdl); this chdl reads {expected}: upgrade chdl to use it"
    return None
