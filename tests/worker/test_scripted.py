"""The scripted agent's grammar (``worker.scripted.parse_script``), key-chord names (``normalize_key``) and the
browser's network guard (``NetworkGuard``). Pure functions: no Redis, no browser, no network traffic (the guard is
only ever given IP literals, which it parses without resolving or connecting)."""

from __future__ import annotations

import pytest

from worker.computer import Action, ActionError, NetworkGuard, Target, normalize_key
from worker.policy import PolicyError
from worker.scripted import ScriptedPolicy, parse_script

# --- parse_script: one line per command of the grammar -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command", "action"),
    [
        ("goto https://example.com/a?b=1", "goto", Action("navigate", url="https://example.com/a?b=1")),
        ('click "Sign in"', "click_text", Action("click", target=Target("text", "Sign in"))),
        ('double_click "Row 3"', "click_text", Action("double_click", target=Target("text", "Row 3"))),
        ('right_click "File"', "click_text", Action("right_click", target=Target("text", "File"))),
        ("click 10,20", "click_xy", Action("click", x=10, y=20)),
        ("click 10 , 20", "click_xy", Action("click", x=10, y=20)),
        ("double_click 5,6", "click_xy", Action("double_click", x=5, y=6)),
        ("right_click 7, 8", "click_xy", Action("right_click", x=7, y=8)),
        ('type "hello world"', "type", Action("type", text="hello world")),
        ('type "Ada" into "Name"', "type_into", Action("type", text="Ada", target=Target("label", "Name"))),
        ('select "Pro" in "Plan"', "select", Action("select", text="Pro", target=Target("label", "Plan"))),
        ("press Enter", "press", Action("key", keys="Enter")),
        ("press Ctrl+A", "press", Action("key", keys="Ctrl+A")),
        ("scroll down", "scroll", Action("scroll", dy=500)),
        ("scroll down 120", "scroll", Action("scroll", dy=120)),
        ("scroll up", "scroll", Action("scroll", dy=-500)),
        ("scroll up 200", "scroll", Action("scroll", dy=-200)),
        ("wait 2", "wait", Action("wait", seconds=2.0)),
        ("wait 0.25", "wait", Action("wait", seconds=0.25)),
        ('expect "Welcome back"', "expect", Action("wait", text="Welcome back")),
        ("done", "done", Action("done")),
        ('done "42 items"', "done", Action("done", text="42 items", value="42 items")),
        ('done {"name": "ada", "n": 3}', "done",
         Action("done", text='{"name": "ada", "n": 3}', value={"name": "ada", "n": 3})),
        ("done [1, 2]", "done", Action("done", text="[1, 2]", value=[1, 2])),
        ("fail", "fail", Action("fail", text="the script failed")),
        ('fail "no invoice"', "fail", Action("fail", text="no invoice")),
    ],
)
def test_parse_script_maps_each_command_to_its_action(line: str, command: str, action: Action) -> None:
    # Given a one-line script / When it is parsed
    steps = parse_script(line)
    # Then it is exactly one step on line 1 with the expected command and action
    assert steps == [(1, command, action)]


def test_parse_script_commands_are_case_insensitive_and_lowercase_the_click_kind() -> None:
    steps = parse_script('CLICK "OK"\nDouble_Click 1,2\nGOTO http://x.test/')
    assert [s[2] for s in steps] == [
        Action("click", target=Target("text", "OK")),
        Action("double_click", x=1, y=2),
        Action("navigate", url="http://x.test/"),
    ]


def test_parse_script_unescapes_quotes_and_backslashes() -> None:
    # Given strings holding escaped quotes, an escaped backslash and a unicode escape
    script = r'type "say \"hi\" to C:\\temp" into "Le \"nom\""' + "\n" + r'done "caf\u00e9"'
    # When parsed
    steps = parse_script(script)
    # Then the escapes are resolved in both the text and the target
    assert steps[0][2] == Action("type", text='say "hi" to C:\\temp', target=Target("label", 'Le "nom"'))
    assert steps[1][2] == Action("done", text="café", value="café")


@pytest.mark.parametrize("line", ['done "a" extra', "done {name: 1}", "done ada"])
def test_done_takes_one_json_value_and_a_line_that_is_not_one_is_refused_naming_it(line: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_script(f"goto https://example.com\n{line}")
    assert "line 2 has a value that is not JSON" in str(info.value) and repr(line) in str(info.value)


def test_parse_script_skips_comments_and_blank_lines_but_keeps_line_numbers() -> None:
    script = "# log in first\n\n   \ngoto https://example.com\n  # indented comment\n  click \"Go\"  \n\ndone"
    steps = parse_script(script)
    assert [(n, c) for n, c, _ in steps] == [(4, "goto"), (6, "click_text"), (8, "done")]
    assert parse_script("# nothing but comments\n\n") == []


@pytest.mark.parametrize(
    ("script", "number", "text"),
    [
        ('goto https://example.com\nclik "Go"\ndone', 2, 'clik "Go"'),
        ("wait 1\n\n# c\nscroll sideways", 4, "scroll sideways"),
        ('click "unterminated', 1, 'click "unterminated'),
        ("type hello", 1, "type hello"),
        ("wait soon", 1, "wait soon"),
        ("press", 1, "press"),
    ],
)
def test_parse_script_rejects_a_bad_line_naming_its_number(script: str, number: int, text: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_script(script)
    message = str(info.value)
    assert f"line {number} " in message
    assert repr(text) in message
    assert "commands: goto" in message  # the error lists the grammar's commands


def test_parse_script_rejects_an_invalid_escape_as_a_policy_error() -> None:
    # A Windows path typed naively: \d is not a JSON escape
    with pytest.raises(PolicyError, match="line 2"):
        parse_script('goto https://example.com\ntype "C:\\dir\\file.txt"')


def test_scripted_policy_builds_from_a_valid_script_and_refuses_a_bad_one() -> None:
    assert len(ScriptedPolicy('goto https://example.com\ndone "ok"').steps) == 2
    with pytest.raises(PolicyError, match="line 1"):
        ScriptedPolicy("launch the rockets")


# --- normalize_key ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chord", "expected"),
    [
        ("ctrl+a", "Control+a"),
        ("Ctrl+A", "Control+A"),
        ("CTRL+c", "Control+c"),
        ("control+v", "Control+v"),
        ("Return", "Enter"),
        ("enter", "Enter"),
        ("cmd+shift+t", "Meta+Shift+t"),
        ("CMD+shift+t", "Meta+Shift+t"),
        ("alt+F4", "Alt+F4"),
        ("option+tab", "Alt+Tab"),
        ("F5", "F5"),
        ("f12", "F12"),
        ("esc", "Escape"),
        ("Escape", "Escape"),
        ("shift+Tab", "Shift+Tab"),
        ("ctrl-a", "Control+a"),
        ("ctrl + a", "Control+a"),
        ("backspace", "Backspace"),
        ("del", "Delete"),
        ("pagedown", "PageDown"),
        ("page_up", "PageUp"),
        ("up", "ArrowUp"),
        ("space", " "),
        ("a", "a"),
        ("A", "A"),
        ("+", "+"),
        ("-", "-"),
    ],
)
def test_normalize_key_maps_chords_to_playwright_names(chord: str, expected: str) -> None:
    assert normalize_key(chord) == expected


@pytest.mark.parametrize("chord", ["", "ctrl+", "+a", "ctrl++a"])
def test_normalize_key_refuses_an_empty_part(chord: str) -> None:
    with pytest.raises(ActionError, match="bad key chord"):
        normalize_key(chord)


# --- NetworkGuard ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8000/admin",
        "https://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::1]:8080/x",
        "http://192.168.1.1/",
        "http://172.16.0.5/",
        "http://0.0.0.0:80/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://224.0.0.1/",
        "HTTP://127.0.0.1/",
        "ws://127.0.0.1:9222/devtools",
    ],
)
def test_network_guard_refuses_private_ip_literals(url: str) -> None:
    reason = NetworkGuard(allow_private=False).check(url)
    assert reason is not None and "private address" in reason, (url, reason)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://93.184.216.34/x", "chrome://settings", "gopher://x/"])
def test_network_guard_refuses_other_schemes_even_when_private_is_allowed(url: str) -> None:
    for guard in (NetworkGuard(False), NetworkGuard(True), NetworkGuard(False, ("etc",))):
        reason = guard.check(url)
        assert reason is not None and "scheme" in reason, (url, reason)


@pytest.mark.parametrize("url", ["data:text/html,hi", "about:blank", "blob:https://example.com/1"])
def test_network_guard_lets_inline_schemes_through(url: str) -> None:
    assert NetworkGuard(False).check(url) is None


def test_network_guard_allows_a_public_ip_literal() -> None:
    assert NetworkGuard(False).check("https://93.184.216.34/page") is None


def test_network_guard_allows_a_listed_host_only_on_its_port() -> None:
    # Given the operator allowed one private host:port
    guard = NetworkGuard(False, ("127.0.0.1:8765",))
    # Then that host:port is reachable, while other ports and other private hosts stay refused
    assert guard.check("http://127.0.0.1:8765/form.html") is None
    assert guard.check("http://127.0.0.1:8766/") is not None
    assert guard.check("http://127.0.0.1/") is not None
    assert guard.check("http://10.0.0.1:8765/") is not None


def test_network_guard_allows_a_listed_bare_host_on_any_port_case_insensitively() -> None:
    guard = NetworkGuard(False, ("192.168.1.1",))
    assert guard.check("http://192.168.1.1/") is None
    assert guard.check("http://192.168.1.1:9000/x") is None
    assert guard.check("http://192.168.1.2/") is not None
    assert NetworkGuard(False, ("LOCALHOST:80",)).check("http://localhost:80/") is None


def test_network_guard_allow_private_lets_every_http_host_through() -> None:
    guard = NetworkGuard(allow_private=True)
    for url in ("http://127.0.0.1/", "http://10.0.0.1/", "http://169.254.169.254/", "http://[::1]/",
                "http://192.168.1.1:8080/"):
        assert guard.check(url) is None, url


def test_network_guard_refuses_an_out_of_range_port_without_raising() -> None:
    assert NetworkGuard(False).check("http://93.184.216.34:99999/") is not None
