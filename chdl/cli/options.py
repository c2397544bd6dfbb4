"""Options and parameter types shared by several ``chdl`` commands, spelled the same everywhere."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import click

_ALIAS_SEEN = "chdl.quiet_alias"


def quiet_option(*old_spellings: str, help: str = "No progress bars (results, warnings and errors still print)."):
    """``--quiet/-q``: no progress bars (results, warnings and errors still print).

    ``old_spellings`` (e.g. ``--no-progress``) keep working as hidden aliases of ``--quiet``. The command
    receives one ``quiet`` argument whichever spelling was used.
    """

    def seen_alias(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta[_ALIAS_SEEN] = True
            if "quiet" in ctx.params:  # --quiet was processed first: set it now
                ctx.params["quiet"] = True

    def decorate(f):
        for name in old_spellings:
            f = click.option(name, f"_quiet_alias_{name.strip('-').replace('-', '_')}", is_flag=True, hidden=True,
                             expose_value=False, callback=seen_alias)(f)
        return click.option("--quiet", "-q", "quiet", is_flag=True,
                            callback=lambda ctx, p, v: v or ctx.meta.get(_ALIAS_SEEN, False),
                            help=help)(f)

    return decorate

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

    def _describe_range(self) -> str:
        # click's FloatRange describes an unbounded range as "x<=None"; an unbounded finite float is just that
        return super()._describe_range() if (self.min, self.max) != (None, None) else "finite"


POSITIVE = FiniteFloat(min=0, min_open=True)  # > 0
NON_NEGATIVE = FiniteFloat(min=0)  # >= 0
FINITE = FiniteFloat()
STEP_UM = FiniteFloat(min=0, min_open=True, max=1e6)  # a stage step (micrometres): > 0, at most a metre
# A lane pass's positions and a capture's lane passes: 1..100000 (the plan lists every position in the manifest;
# 1e8 positions took 15 GB and wrote a 2 GB manifest.json for a recording of no frame)
PLAN_COUNT = click.IntRange(1, 100_000)


class LocalPath(click.Path):
    """A click.Path that must be a local path. Given a URL (``s3://bucket/x``) click.Path turned it into the local
    path ``s3:/bucket/x``: outputs went to a folder named ``s3:`` with a success message, and an existing dataset
    on S3 was "no such dataset". Only ``chdl curate``'s OUT, ``chdl info`` and ``chdl verify`` take object-store
    URLs; everywhere else a URL is a usage error naming the option."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value and not value.startswith("file://"):
            self.fail(f"{value!r} is a URL; this takes a local path (object-store URLs: chdl curate's OUT, chdl info "
                      "and chdl verify; copy the data to a local folder first)", param, ctx)
        if isinstance(value, str) and value.startswith("file://"):
            from chdl.dataset import file_url_path

            value = file_url_path(value)
        if isinstance(value, str):
            value = checked_path_text(value, lambda message: self.fail(message, param, ctx))
        return super().convert(value, param, ctx)


class OutputPath(LocalPath):
    """A :class:`LocalPath` that a command writes (or replaces): a symlink there is followed to its folder
    (:func:`through_link`), so the output lands where the link points."""

    def convert(self, value, param, ctx):
        converted = super().convert(value, param, ctx)
        followed = checked_output(Path(converted), lambda message: self.fail(message, param, ctx))
        if followed == Path(converted):
            return converted
        return followed if isinstance(converted, Path) else str(followed)


# the longest name chdl gives a working file beside an output: ".<name>.chdl-writer.lock" (chdl.locks)
WORKING_NAME_EXTRA = len("..chdl-writer.lock")
NAME_MAX = 255  # bytes in one file name (Linux filesystems)


def shell_word(value) -> str:
    """``value`` as one word a shell reads back as that path: quoted where needed (spaces, non-ASCII), and with
    ``./`` before a path that starts with ``-`` (``Path("./-x")`` prints as ``-x``, which a command reads as an
    option). For the commands chdl records and suggests, so that they can be pasted."""
    import shlex

    text = str(value)
    return shlex.quote(f"./{text}" if isinstance(value, Path) and text.startswith("-") else text)


def check_output_name(path: Path, fail) -> None:
    """``fail(message)`` if the output's name leaves no room for the working files chdl writes beside it (its
    lock, ``.<name>.creating``): a 250-byte name the OS accepts failed with "File name too long" after a check."""
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX - WORKING_NAME_EXTRA:
        fail(f"{path}: the name is {size} bytes; chdl's working files beside an output (.<name>.chdl-writer.lock) "
             f"need it to be at most {NAME_MAX - WORKING_NAME_EXTRA}")


def checked_path_text(value: str, fail) -> str:
    """``value`` with a leading ``~`` expanded (a quoted ``"~/x"`` made a folder named ``~`` here, while --cti
    expanded it); ``fail(message)`` if it is not valid UTF-8 (bytes of another encoding: the reports, logs and
    plots that name it cannot, so curate finished its shards and then failed on the HTML report, every rerun)."""
    import os

    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{value.encode('utf-8', 'backslashreplace').decode()}: the name is not valid UTF-8 (bytes of another "
             "encoding); rename it")
    return os.path.expanduser(value) if value.startswith("~") else value


def checked_output(path: Path, fail) -> Path:
    """The local output ``path`` (its text already :func:`checked_path_text`), or the folder it links to
    (:func:`through_link`), after the output checks: its name leaves room for chdl's working files
    (:func:`check_output_name`), and a linked-to folder passes the text checks too. ``fail(message)`` otherwise."""
    check_output_name(path, fail)
    followed = through_link(path)
    if followed != path:
        checked_path_text(str(followed), fail)
        check_output_name(followed, fail)
    return followed


def through_link(path: Path) -> Path:
    """The folder an output symlink points to (``path`` itself if it is not one): an output written *through* the
    link. ``--overwrite`` replaced the link by a new folder (on the small disk, the old data left stale on the
    big one the link pointed at), and predict refused only after all its work."""
    import os

    return Path(os.path.realpath(path)) if os.path.islink(path) else path


@contextlib.contextmanager
def output_lock(out: Path):
    """Held while a command writes ``out``: :func:`chdl.locks.exclusive_output`, its refusal (another chdl process
    writes ``out``, or the lock cannot be made) as one click error."""
    from chdl.locks import OutputLockError, exclusive_output

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_output(Path(out)))
        except OutputLockError as e:
            raise click.ClickException(str(e)) from None
        yield
