"""Parameter types shared by the CLI's commands."""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A float option that must be a finite number within an optional range. click's FloatRange lets
    ``nan`` through every bound (comparisons with NaN are false) and ``inf`` through an open top; this
    refuses both, with click's usual one-line usage error naming the option."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)


POSITIVE = FiniteFloat(min=0, min_open=True)  # > 0
NON_NEGATIVE = FiniteFloat(min=0)  # >= 0
FINITE = FiniteFloat()
