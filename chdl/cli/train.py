"""Placeholder: this stage is not implemented yet (exits non-zero)."""

import click


@click.command('train', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Not implemented yet."""
    raise click.ClickException('train' + ': not implemented yet')


@click.command('eval', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def eval_(args):
    """Not implemented yet."""
    raise click.ClickException('eval' + ': not implemented yet')


@click.command('predict', context_settings={'ignore_unknown_options': True})
@click.argument('args', nargs=-1, type=click.UNPROCESSED)
def predict(args):
    """Not implemented yet."""
    raise click.ClickException('predict' + ': not implemented yet')
