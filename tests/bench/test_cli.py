"""``bench/cli.py``: the ``lodestar bench`` subcommands stay in step with the benchmarks they run."""

from __future__ import annotations

import argparse

import pytest

from bench.cli import ROW_NAMES, add_bench_parsers, add_eval_parsers


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


def test_miniwob_takes_families_or_all_and_keeps_tasks_as_an_alias() -> None:
    parser = argparse.ArgumentParser()
    add_bench_parsers(parser)
    assert parser.parse_args(["miniwob", "--families", "all"]).families == "all"
    assert parser.parse_args(["miniwob", "--tasks", "click-button,login-user"]).families == "click-button,login-user"


def test_families_resolve_to_every_page_the_package_ships_or_the_names_given() -> None:
    pytest.importorskip("miniwob")
    from bench.miniwob import available_tasks, resolve_families

    shipped = available_tasks()
    assert len(shipped) >= 100 and "click-button" in shipped and shipped == sorted(shipped)
    assert resolve_families("all") == shipped
    assert resolve_families(" enter-text, click-button,enter-text ") == ["enter-text", "click-button"]
    with pytest.raises(ValueError, match="unknown MiniWoB\\+\\+ families: no-such-family"):
        resolve_families("click-button,no-such-family")


def test_eval_options_and_how_agents_and_models_are_told_apart() -> None:
    from bench.eval import subjects_of
    from bench.eval.run import Subject

    parser = argparse.ArgumentParser()
    add_eval_parsers(parser)
    args = parser.parse_args(["miniwob"])
    assert (args.suite, args.families, args.episodes, args.repeats, args.out) == ("miniwob", "all", 5, 1,
                                                                                  "eval-report")
    assert subjects_of(args) == [Subject("heuristic", "agent")]
    assert subjects_of(parser.parse_args(["miniwob", "--model", "openai/computer-use-preview"])) == [
        Subject("openai/computer-use-preview", "model")]
    # --compare: the offline agents' names are agents, anything else a model
    assert subjects_of(parser.parse_args(["miniwob", "--compare", "heuristic", "anthropic/claude-sonnet-4-5"])) == [
        Subject("heuristic", "agent"), Subject("anthropic/claude-sonnet-4-5", "model")]
    assert Subject("heuristic", "agent").task_fields() == {"agent_type": "heuristic"}
    assert Subject("tzafon.northstar-cua-fast", "model").task_fields() == {"model": "tzafon.northstar-cua-fast"}
    with pytest.raises(ValueError):
        subjects_of(parser.parse_args(["miniwob", "--compare", "heuristic", "heuristic"]))
    with pytest.raises(SystemExit):  # one way to name who plays
        parser.parse_args(["miniwob", "--agent", "heuristic", "--model", "x"])
