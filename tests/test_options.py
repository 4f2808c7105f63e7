""" The one options table: every MemwatchOptions field is an environment
variable and a ``--memwatch-*`` flag with its unit in its name, the old
unit-less flags still work, the command line wins over the environment, and
one validation answers every way in. """
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Mapping

import pytest

from bokeh_memwatch import MemwatchOptions, options_from_env
from bokeh_memwatch.options import ENV_PREFIX, add_arguments, flag_given, flag_name, options_from_args

FIELDS = [f.name for f in dataclasses.fields(MemwatchOptions)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_arguments(p)
    return p


def parse(*argv: str, environ: Mapping[str, str] | None = None) -> MemwatchOptions:
    return MemwatchOptions(**options_from_args(parser().parse_args(list(argv)), environ or {}))


def _sample_value(name: str) -> str:
    """ A valid value other than the default, as text. """
    default = getattr(MemwatchOptions(), name)
    special = {"heap_fork": "never", "allocations": "memray", "token": "a-token-of-sixteen-chars", "recycle_at": "0.5",
               "limit_fraction": "0.5", "history_dir": "none", "cgroup_root": "/nonexistent"}
    if name in special:
        return special[name]
    if isinstance(default, bool):
        return "0" if default else "1"
    return str(default * 2)


def test_every_field_has_a_flag_and_an_environment_variable() -> None:
    text = parser().format_help()
    for name in FIELDS:
        assert flag_name(name) in text, name
        raw = _sample_value(name)
        from_env = options_from_env({ENV_PREFIX + name.upper(): raw})
        assert list(from_env) == [name], name
        kind = type(getattr(MemwatchOptions(), name))
        argv = [flag_name(name)] if kind is bool else [flag_name(name), raw]
        assert getattr(parse(*argv), name) == from_env[name], name


def test_units_are_in_the_names_and_the_old_flags_still_work() -> None:
    assert flag_name("interval_ms") == "--memwatch-interval-ms"
    assert flag_name("chain_timeout_s") == "--memwatch-chain-timeout-s"
    assert flag_name("http") == "--memwatch-no-http"
    # The README's demo command.
    old = parse("--memwatch-interval", "1000", "--memwatch-orphan-grace", "1000")
    new = parse("--memwatch-interval-ms", "1000", "--memwatch-orphan-grace-ms", "1000")
    assert old == new and old.interval_ms == 1000 and old.orphan_grace_ms == 1000
    assert parse("--memwatch-history", "60").history_s == 60
    assert parse("--memwatch-chain-timeout", "5").chain_timeout_s == 5.0
    assert parse("--memwatch-drain-timeout", "42").drain_timeout_s == 42.0


def test_the_command_line_wins_over_the_environment() -> None:
    environ = {"BOKEH_MEMWATCH_INTERVAL_MS": "900", "BOKEH_MEMWATCH_HTTP": "0"}
    assert parse(environ=environ).interval_ms == 900
    assert parse("--memwatch-interval-ms", "700", environ=environ).interval_ms == 700
    assert parse(environ=environ).http is False
    assert parse(environ={"BOKEH_MEMWATCH_ALLOW_REMOTE": "1"}).allow_remote is True


def test_booleans_and_what_was_given() -> None:
    args = parser().parse_args(["--memwatch-no-probes", "--memwatch-show-values"])
    assert flag_given(args, "probes") and flag_given(args, "show_values") and not flag_given(args, "http")
    options = MemwatchOptions(**options_from_args(args, {}))
    assert options.probes is False and options.show_values is True and options.http is True
    assert parse() == MemwatchOptions()


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--memwatch-interval-ms", "0"], {}, "interval_ms must be > 0, got 0"),
    ([], {"BOKEH_MEMWATCH_INTERVAL_MS": "0"}, "interval_ms must be > 0, got 0"),
    (["--memwatch-orphan-grace-ms", "-1"], {}, "orphan_grace_ms must be >= 0, got -1"),
    (["--memwatch-history-max-bytes", "10"], {}, "history_max_bytes must be >= 65536, got 10"),
    (["--memwatch-limit-fraction", "2"], {}, "limit_fraction must be between 0 (off) and 1"),
    (["--memwatch-recycle-samples", "0"], {}, "recycle_samples must be >= 1, got 0"),
    (["--memwatch-recycle-at", "2"], {}, "neither a fraction"),
    (["--memwatch-token", "short"], {}, "token must be at least 16 characters"),
])
def test_one_validation_for_every_way_in(argv: list[str], environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(*argv, environ=environ)
    field, value = (argv[0][len("--memwatch-"):].replace("-", "_"), argv[1]) if argv else ("interval_ms", "0")
    kind = type(getattr(MemwatchOptions(), field))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemwatchOptions(**{field: kind(value)})


def test_bad_values_are_refused_before_the_constructor() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--memwatch-heap-fork", "sometimes"])
    with pytest.raises(ValueError, match="BOKEH_MEMWATCH_INTERVAL_MS must be a int"):
        options_from_env({"BOKEH_MEMWATCH_INTERVAL_MS": "fast"})
    with pytest.raises(ValueError, match="BOKEH_MEMWATCH_HTTP must be a bool"):
        options_from_env({"BOKEH_MEMWATCH_HTTP": "maybe"})


def test_serve_help_shows_the_new_names_and_their_aliases() -> None:
    result = subprocess.run([sys.executable, "-m", "bokeh_memwatch.cli.main", "serve", "--help"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--memwatch-interval-ms MS, --memwatch-interval MS" in result.stdout
    assert "--memwatch-no-http" in result.stdout and "--memwatch-no-forward" in result.stdout
