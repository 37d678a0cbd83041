"""``bench/cli.py``: the ``lodestar bench`` subcommands stay in step with the benchmarks they run."""

from __future__ import annotations

import argparse

from bench.cli import ROW_NAMES, add_bench_parsers


def test_row_names_are_the_suites_rows_in_order() -> None:
    from bench.suite import ROWS

    assert tuple(ROWS) == ROW_NAMES


def test_each_row_and_miniwob_is_a_subcommand() -> None:
    parser = argparse.ArgumentParser()
    add_bench_parsers(parser)
    assert parser.parse_args(["step", "--steps", "5"]).steps == 5
    assert parser.parse_args(["all"]).rows == []
    assert parser.parse_args(["miniwob", "--url", "http://h:1"]).url == "http://h:1"
    for row in ROW_NAMES:
        assert parser.parse_args([row]).bench == row
