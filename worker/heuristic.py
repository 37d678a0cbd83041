"""A rule-based offline agent that reads plain-English instructions: an honest baseline, not AI.

:class:`HeuristicPolicy` sees only what a user sees: the page's ARIA snapshot (Playwright's YAML outline, see
:func:`parse_aria`), plus the URL and title. It never runs JavaScript or reads the DOM. It turns the instruction into
*intents* (:func:`parse_instruction`: click X, type V into field F, select items, focus a field) and grounds each
intent in the outline as ``Action`` s with ``Target`` s that the browser computer resolves through Playwright's
``get_by_role`` / ``get_by_label`` / ``get_by_text``.

Instructions it understands (quotes optional where unambiguous)::

    Click on the "ok" button.                Click on the link "Eget".        Click on Tab #2.
    Close the dialog box by clicking the "x".                                  Focus into the textbox.
    Enter "Bob" into the text field and press Submit.
    Type "bob" in all upper case letters in the text input and press Submit.
    Enter the username "kim" and the password "x1" into the text fields and press login.
    Login with username kim and password x1.
    Enter the password "x" into both text fields and press submit.
    Select TqDX3, ab and click Submit.       Select nothing and click Submit.  Press Enter.
    Follow the instruction on the page.      (the instruction is then read from the page, e.g. MiniWoB's query)

MiniWoB++ pages show a "START" cover: the policy clicks it first, and once its episode has ended (the cover shows
again) it finishes with ``done``, quoting the page's visible "Last reward".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

from worker.computer import CLICKABLE_ROLES, FIELD_ROLES, TEXT_FIELD_ROLES, Action, Observation, Target
from worker.policy import Decision, Episode

# --- the ARIA outline -------------------------------------------------------------------------------------------------

FOCUSABLE_ROLES = frozenset({
    "textbox", "searchbox", "spinbutton", "combobox", "button", "link", "checkbox", "radio", "slider", "switch",
})
"""Roles reached by the Tab key (approximately: the outline does not say which elements are focusable)."""
TEXT_ROLES = frozenset({"text", "paragraph", "heading", "generic", "label", "cell", "listitem", "strong", "emphasis",
                        "status", "caption", "term", "definition", "note", "blockquote"})

_LINE = re.compile(r"^(?P<indent>\s*)- (?P<body>.*)$")
_KEY = re.compile(
    r'^(?P<role>[A-Za-z][\w-]*)(?:\s+(?:"(?P<name>(?:[^"\\]|\\.)*)"|(?P<rx>/(?:[^/\\]|\\.)*/)))?'
    r"(?P<attrs>(?:\s*\[[^\]]*\])*)\s*$"
)
_ATTR = re.compile(r"\[([^\]=]+)(?:=([^\]]*))?\]")


@dataclass
class AriaNode:
    """One entry of the outline, in document order.

    ``role``: ARIA role ("button", "textbox", "text" for a bare text run ...); ``name``: accessible name ("" when
    none); ``text``: inline text after the colon (a text run, a paragraph's words, a textbox's current value);
    ``attrs``: bracketed states such as ``{"checked": "", "level": "1"}``; ``props``: ``/url`` and ``/placeholder``;
    ``parent``: index of the enclosing node or None at the top level.
    """

    index: int
    depth: int
    role: str
    name: str = ""
    text: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    props: dict[str, str] = field(default_factory=dict)
    parent: int | None = None

    @property
    def checked(self) -> bool:
        return "checked" in self.attrs and self.attrs["checked"] in ("", "true")

    def label(self) -> str:
        """What names this node on screen: its accessible name, else its placeholder, else its inline text."""
        return self.name or self.props.get("placeholder", "") or self.text


def _yaml_scalar(raw: str) -> str:
    """Decode one YAML scalar as Playwright writes it: plain, 'single-quoted' or "double-quoted" with escapes."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        body = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: "\\u00" + m.group(1), raw[1:-1])
        try:
            return str(json.loads(f'"{body}"'))
        except ValueError:
            return body.replace('\\"', '"').replace("\\\\", "\\")
    return raw


def _split_key(body: str) -> tuple[str, str | None]:
    """Split ``KEY[: VALUE]`` where KEY may be a single-quoted YAML scalar. Returns (key, value or None)."""
    if body.startswith("'"):
        i = 1
        while i < len(body):
            if body[i] == "'":
                if i + 1 < len(body) and body[i + 1] == "'":
                    i += 2
                    continue
                break
            i += 1
        key = body[1:i].replace("''", "'")
        rest = body[i + 1:]
        if rest.startswith(":"):
            return key, rest[1:].strip()
        return key, None
    # an unquoted key cannot contain ": " (Playwright quotes it then), but a quoted name inside it can
    in_quotes = False
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and in_quotes:
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == ":" and not in_quotes and (i + 1 == len(body) or body[i + 1] == " "):
            return body[:i], body[i + 1:].strip()
        i += 1
    return body, None


def parse_aria(snapshot: str | None) -> list[AriaNode]:
    """Parse Playwright's ARIA snapshot (``locator.aria_snapshot()``, a YAML outline) into nodes in document order.

    Understands ``- role "name" [attr] [attr=v]``, ``- role "name": inline text``, ``- role:`` followed by
    indented children, ``- text: words``, ``- /url: ...`` properties and YAML quoting of keys and values.
    Lines it cannot read are skipped: the outline is advisory, never trusted to be complete.
    """
    nodes: list[AriaNode] = []
    stack: list[AriaNode] = []  # open ancestors
    for raw_line in (snapshot or "").splitlines():
        m = _LINE.match(raw_line)
        if not m:
            continue
        depth = len(m.group("indent")) // 2
        key, value = _split_key(m.group("body").rstrip())
        while stack and stack[-1].depth >= depth:
            stack.pop()
        parent = stack[-1] if stack else None
        if key.startswith("/"):
            if parent is not None and value is not None:
                parent.props[key[1:]] = _yaml_scalar(value)
            continue
        if value is None and key.startswith('"'):
            node = AriaNode(len(nodes), depth, "text", text=_yaml_scalar(key))
        else:
            km = _KEY.match(key)
            if not km:
                continue
            name = ""
            if km.group("name") is not None:
                try:
                    name = str(json.loads(f'"{km.group("name")}"'))
                except ValueError:
                    name = km.group("name")
            elif km.group("rx"):
                name = km.group("rx")[1:-1]
            attrs = {a.strip(): (v or "").strip() for a, v in _ATTR.findall(km.group("attrs") or "")}
            node = AriaNode(len(nodes), depth, km.group("role"), name=name,
                            text=_yaml_scalar(value) if value else "", attrs=attrs)
        node.parent = parent.index if parent is not None else None
        nodes.append(node)
        stack.append(node)
    return nodes


# --- MiniWoB's cover and HUD (visible on the page, read like a user would) ------------------------------------------
_START = re.compile(r"(?:^|\s)START(?:\s|$)")
_LAST_REWARD = re.compile(r"Last reward:\s*(-?\d+(?:\.\d+)?)")
_HUD = re.compile(r"\s*Last reward:.*$", re.S)


def start_cover_visible(nodes: list[AriaNode]) -> bool:
    """True when a "START" cover (MiniWoB++'s sync screen) is on the page: a text run or button reading START."""
    return any(_START.search(n.text) or _START.search(n.name) for n in nodes
               if n.role in TEXT_ROLES or n.role in ("button", "text"))


def shown_reward(nodes: list[AriaNode]) -> str | None:
    """The "Last reward: X" a MiniWoB++ page shows in its corner, or None (also None while it shows "-")."""
    for n in nodes:
        m = _LAST_REWARD.search(n.text) or _LAST_REWARD.search(n.name)
        if m:
            return m.group(1)
    return None


# --- instructions -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Click:
    """Click the element named ``target`` (a button, link, tab, checkbox, or any visible text).

    ``role``: hint from the instruction ("button", "link", "tab", "checkbox") or None;
    ``alternatives``: other names to try ("Close" for "x"); an entry "key:Enter" presses that key when nothing on
    the page is called ``target``.
    """

    target: str
    role: str | None = None
    alternatives: tuple[str, ...] = ()
    optional: bool = False
    """Skip it (no failure) when nothing on the page matches: an implied step such as submitting a form."""


@dataclass(frozen=True)
class TypeText:
    """Type ``value`` into the field described by ``field`` ("username", "text field"; None: the first field);
    ``every``: into every matching field ("both text fields")."""

    value: str
    field: str | None = None
    every: bool = False


@dataclass(frozen=True)
class Choose:
    """Select/check the named items: checkboxes, radio buttons, options of a list; () means "nothing"."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Focus:
    """Put the cursor into the field described by ``field`` (None: the first field)."""

    field: str | None = None


@dataclass(frozen=True)
class PressKey:
    """Press one key chord such as "Enter"."""

    keys: str


@dataclass(frozen=True)
class Autocomplete:
    """Type ``prefix`` into a field, then pick the suggestion that starts with it (and ends with ``suffix``).

    ``typed``: the prefix has been typed (the second phase picks from the suggestion list).
    """

    prefix: str
    suffix: str = ""
    field: str | None = None
    typed: bool = False


Intent = Click | TypeText | Choose | Focus | PressKey | Autocomplete

_FOLLOW_PAGE = re.compile(
    r"\b(?:follow|do|complete|perform|carry\s+out|execute|read)\b.{0,40}?\b(?:instructions?|task|directions?|what)\b"
    r".{0,40}?\b(?:on|in|from|at)\s+(?:the\s+|this\s+)?(?:web\s*)?(?:page|screen|site|website)\b"
    r"|\bwhat\s+the\s+(?:web\s*)?page\s+says\b",
    re.I | re.S,
)
_VERB = (r"(?:double[- ]?click|click|press|hit|tap|push|select|uncheck|check|tick|choose|pick|mark|enter|type|input|"
         r"fill|write|put|submit|focus|close|dismiss|log\s*in|login|sign\s*in|switch|open|go)")
_VERB_AT_START = re.compile(rf"^{_VERB}\b", re.I)
_PH = re.compile(r"\x01(\d+)\x02")
_KEY_WORDS = {"enter": "Enter", "return": "Enter", "tab": "Tab", "escape": "Escape", "esc": "Escape",
              "space": "Space", "backspace": "Backspace", "delete": "Delete"}
_TIMES = "\u00d7"  # the multiplication sign many close buttons show
_CLOSE_WORDS = ("Close", "close", _TIMES, "\u2715", "\u2716", "X", "x", "Close dialog", "Dismiss")
_SUBMIT_WORDS = ("Submit", "submit", "OK", "Ok", "Okay", "Done", "Send", "Go", "Continue")
_LOGIN_WORDS = ("Login", "Log in", "Log In", "Sign in", "Sign In", "login", "Submit")
_STOP_FIELD_WORDS = frozenset({
    "the", "a", "an", "enter", "type", "input", "write", "fill", "put", "text", "value", "string", "word", "words",
    "and", "with", "as", "of", "then", "in", "into", "to", "phrase", "following", "characters", "letters", "on",
    "same", "both", "also", "its", "please", "just", "exactly", "only", "your",
})
_GENERIC_FIELD_WORDS = frozenset({
    "the", "a", "an", "text", "field", "fields", "box", "boxes", "textbox", "textboxes", "input", "inputs", "area",
    "entry", "form", "only", "one", "this", "that", "empty", "blank", "textfield", "textarea", "search",
    "all", "both", "each", "every", "two",
})


def follows_page(instruction: str) -> bool:
    """True when the instruction defers to the page ("Follow the instruction on the page") or is empty."""
    return not instruction.strip() or bool(_FOLLOW_PAGE.search(instruction))


def _protect_quotes(text: str) -> tuple[str, list[str]]:
    """Replace quoted strings with placeholders \\x01N\\x02 so splitting on punctuation cannot cut them."""
    values: list[str] = []

    def keep(m: re.Match[str]) -> str:
        values.append(m.group(1) if m.group(1) is not None else m.group(2))
        return f"\x01{len(values) - 1}\x02"

    for curly, straight in (("\u201c", '"'), ("\u201d", '"'), ("\u2018", "'"), ("\u2019", "'")):
        text = text.replace(curly, straight)
    text = re.sub(r'"([^"]*)"|(?<![\w])\'([^\']+)\'(?![\w])', keep, text)
    return text, values


def _restore(text: str, values: list[str]) -> str:
    return _PH.sub(lambda m: values[int(m.group(1))], text)


def _clauses(text: str) -> list[str]:
    """Sentences, then the parts of each joined by "and", "then" or a comma in front of a verb."""
    out: list[str] = []
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", text):
        sentence = sentence.strip().rstrip(".!?;").strip()
        if not sentence:
            continue
        parts = re.split(rf",?\s+(?:and\s+then|and|then)\s+(?={_VERB}\b)|,\s*(?:then\s+)?(?={_VERB}\b)",
                         sentence, flags=re.I)
        out.extend(p.strip() for p in parts if p and p.strip())
    return out


def _clean_target(words: str) -> tuple[str, str | None]:
    """'on the Submit button' -> ('Submit', 'button')."""
    role = None
    words = re.sub(r"^(?:on|at)\s+", "", words.strip(), flags=re.I)
    words = re.sub(r"^(?:the|a|an)\s+", "", words, flags=re.I)
    m = re.search(r"\s+(button|link|tab|checkbox|check\s*box|radio\s*button|option|icon)$", words, re.I)
    if m:
        role = _role_word(m.group(1))
        words = words[: m.start()]
    m = re.match(r"^(button|link|tab|checkbox|option)\s+(?:labeled\s+|named\s+|called\s+)?(.+)$", words, re.I)
    if m and not words.lower().startswith("tab #"):
        role = _role_word(m.group(1))
        words = m.group(2)
    return words.strip().strip(",.:;").strip(), role


def _role_word(word: str) -> str | None:
    w = re.sub(r"\s+", "", word.lower())
    return {"button": "button", "link": "link", "tab": "tab", "checkbox": "checkbox", "radiobutton": "radio",
            "option": "option"}.get(w)


def _role_hint(clause: str) -> str | None:
    words = re.sub(r"\x01\d+\x02", " ", clause.lower())
    for word, role in (("link", "link"), ("checkbox", "checkbox"), ("check box", "checkbox"),
                       ("radio", "radio"), ("tab", "tab"), ("button", "button")):
        if re.search(rf"\b{word}\b", words):
            return role
    return None


def _field_before(clause: str, pos: int) -> str | None:
    """The field named just before a value: 'the username "x"' -> 'username'; 'Enter "x"' -> None."""
    words = re.findall(r"[A-Za-z][\w-]*", clause[:pos].split("\x02")[-1])
    picked: list[str] = []
    for word in reversed(words[-3:]):
        if word.lower() in _STOP_FIELD_WORDS:
            break
        picked.insert(0, word)
    if not picked or _VERB_AT_START.match(picked[0]):
        return None
    return " ".join(picked).lower()


def _case(clause: str, value: str) -> str:
    low = clause.lower()
    if re.search(r"\b(?:upper\s*-?\s*case|uppercase|capital letters|all caps|capitals)\b", low):
        return value.upper()
    if re.search(r"\b(?:lower\s*-?\s*case|lowercase|small letters)\b", low):
        return value.lower()
    return value


def _parse_type(clause: str, values: list[str]) -> list[Intent]:
    body = re.sub(rf"^{_VERB}\s*(?:in\s+)?", "", clause, flags=re.I)
    holders = list(_PH.finditer(body))
    dest_m = re.search(r"^.*\b(?:into|in|on|to)\s+([^\x01]*)$", body, re.I | re.S)  # the last "into ..."
    dest = None
    if dest_m and (not holders or dest_m.start(1) > holders[-1].end()):
        dest = dest_m.group(1).strip()
        if re.search(r"\b(?:upper|lower)\s*-?\s*case|letters\b", dest, re.I):
            dest = None
    plural = r"\b(?:both|all|each|every)\s+(?:the\s+)?(?:text\s*)?(?:fields|boxes|inputs|textboxes)\b"
    every = bool(dest and re.search(r"\b(?:both|all|each|every)\b", dest, re.I)) or bool(re.search(plural, body, re.I))
    if not holders:
        # unquoted: 'Enter Bob into the text field', 'Type hello'
        m = re.match(r"^(?:the\s+)?(?:text\s+|value\s+|word\s+)?(.+?)(?:\s+(?:into|in|on|to)\s+.*)?$", body, re.I)
        if not m or not m.group(1).strip():
            return []
        return [TypeText(_case(clause, m.group(1).strip()), dest, every)]
    pairs = [(_field_before(body, h.start()), values[int(h.group(1))]) for h in holders]
    named = [(f, v) for f, v in pairs if f]
    if len(pairs) >= 2 and len(named) == len(pairs):
        return [TypeText(_case(clause, v), f) for f, v in named]
    field_word, value = pairs[0]
    return [TypeText(_case(clause, value), field_word or dest, every)]


def _parse_login(clause: str, values: list[str]) -> list[Intent] | None:
    val = r"(\x01\d+\x02|[^\s,;]+)"
    user_m = re.search(rf"\b(?:user\s*name|user|e-?mail)\s*(?:is|:|=|as|of)?\s*{val}", clause, re.I) or re.search(
        rf"\b(?:log\s*in|login|sign\s*in)\s+as\s+{val}", clause, re.I)
    pass_m = re.search(rf"\bpass(?:word|code)?\s*(?:is|:|=|as|of)?\s*{val}", clause, re.I)
    if not user_m or not pass_m:
        return None
    user, password = (_restore(m.group(1), values).rstrip(".") for m in (user_m, pass_m))
    return [TypeText(user, "username"), TypeText(password, "password"),
            Click("Login", "button", alternatives=_LOGIN_WORDS)]


def _parse_clause(clause: str, values: list[str]) -> list[Intent]:
    clause = re.sub(r"^(?:please|now|first|then|next|finally|and|also)[,\s]+", "", clause.strip(), flags=re.I)
    clause = re.sub(r"^.*?\bby\s+(click|press|select|tapp|typ|enter|check)(?:ing)?\b", lambda m: {
        "tapp": "tap", "typ": "type"}.get(m.group(1).lower(), m.group(1)), clause, flags=re.I)
    low = clause.lower()
    holders = [values[int(h.group(1))] for h in _PH.finditer(clause)]
    verb_m = _VERB_AT_START.match(clause)
    if not verb_m:
        return []
    verb = re.sub(r"[\s-]+", "", verb_m.group(0).lower())
    rest = clause[verb_m.end():].strip()
    if verb in ("login", "signin"):
        login = _parse_login(clause, values)
        return login if login is not None else [Click("Login", "button", alternatives=_LOGIN_WORDS)]
    auto = re.search(r"\bstarts?\s+with\s+(\x01\d+\x02|\S+)(?:.*?\bends?\s+with\s+(\x01\d+\x02|\S+))?", clause, re.I)
    if auto and verb in ("enter", "type", "input", "fill", "write", "put", "select", "choose", "pick"):
        prefix, suffix = (_restore(g or "", values).rstrip(".,") for g in auto.groups())
        return [Autocomplete(prefix, suffix)]
    if verb in ("enter", "type", "input", "fill", "write", "put"):
        login = _parse_login(clause, values) if re.search(r"\bpass(?:word)?\b", low) and len(holders) != 1 else None
        if login is not None:
            return login[:2]
        if verb == "fill":  # 'Fill in the name field with "Bob"'
            m = re.match(r"^(?:in|out)?\s*(?:the\s+)?(.*?)\s+with\s+(.+)$", rest, re.I)
            if m:
                return [TypeText(_case(clause, _restore(m.group(2), values).strip()), _restore(m.group(1), values))]
        return _parse_type(clause, values)
    if verb == "focus":
        target = re.sub(r"^(?:in|into|on|onto)\s+", "", rest, flags=re.I)
        return [Focus(_restore(target, values) or None)]
    if verb == "submit":
        return [Click("Submit", "button", alternatives=_SUBMIT_WORDS)]
    if verb in ("close", "dismiss") and not holders:
        return [Click("Close", "button", alternatives=_CLOSE_WORDS)]
    if verb in ("select", "check", "tick", "choose", "pick", "mark"):
        items_text = re.sub(r"\s+(?:from|in|on)\s+the\s+.*$", "", rest, flags=re.I)
        items_text = re.sub(r"^(?:the\s+)?(?:following\s+)?(?:items?|options?|checkboxes|boxes)?\s*:?\s*", "",
                            items_text, flags=re.I)
        if re.fullmatch(r"(?:nothing|none|no\s+\w+)", items_text.strip(), re.I):
            return [Choose(())]
        parts = [p.strip() for p in re.split(r"\s*,\s*|\s+and\s+|\s*&\s*", items_text) if p.strip()]
        items = tuple(_restore(p, values) for p in parts)
        return [Choose(items)] if items else []
    # click / press / tap / switch / open / go / close "x"
    if holders:
        hint = _role_hint(clause)
        target = holders[0]
        if target.strip().lower() in ("x", _TIMES) or verb in ("close", "dismiss"):
            return [Click(target, hint, alternatives=_CLOSE_WORDS)]
        return [Click(target, hint)]
    rest = re.sub(r"^(?:to|on)\s+", "", rest, flags=re.I) if verb in ("switch", "go", "open") else rest
    target, role = _clean_target(_restore(rest, values))
    if not target:
        return []
    chord = re.fullmatch(r"(?:the\s+)?((?:(?:ctrl|control|alt|shift|cmd|meta)\s*\+\s*)+\w+|\w+)(?:\s+key)?", target,
                         re.I)
    if verb in ("press", "hit") and chord and ("+" in chord.group(1) or target.lower().endswith(" key")):
        return [PressKey(re.sub(r"\s+", "", chord.group(1)))]
    if verb in ("press", "hit") and target.lower() in _KEY_WORDS:
        return [Click(target, "button", alternatives=("key:" + _KEY_WORDS[target.lower()],))]
    if target.lower() in ("submit", "ok", "okay", "done"):
        return [Click(target, role or "button", alternatives=_SUBMIT_WORDS)]
    if target.lower() in ("login", "log in", "sign in"):
        return [Click(target, role or "button", alternatives=_LOGIN_WORDS)]
    return [Click(target, role)]


def parse_instruction(instruction: str) -> list[Intent]:
    """Turn a plain-English instruction into intents, in order; [] when nothing in it is understood.

    Clauses with no known verb (e.g. the filler text after a MiniWoB++ query) are ignored.
    """
    text, values = _protect_quotes(instruction.strip())
    intents: list[Intent] = []
    for clause in _clauses(text):
        intents.extend(_parse_clause(clause, values))
    if intents and isinstance(intents[-1], Autocomplete):  # a form entry is finished by submitting it
        intents.append(Click("Submit", "button", alternatives=_SUBMIT_WORDS, optional=True))
    return intents


def page_instruction(nodes: list[AriaNode]) -> str | None:
    """The instruction written on the page: the first text run near the top that reads as one.

    MiniWoB++'s query (``#query``) shares a text run with the filler words after it and the corner HUD; both are
    cut off (the HUD at "Last reward:", the filler as sentences with no verb).
    """
    for node in nodes:
        if node.role == "textbox":
            continue
        raw = node.text or (node.name if node.role in ("heading", "paragraph") else "")
        if not raw:
            continue
        raw = _HUD.sub("", raw).strip()
        if not raw or raw == "START":
            continue
        if parse_instruction(raw):
            return _first_sentences(raw)
    return None


def _first_sentences(text: str) -> str:
    """The first sentence plus any following ones that start with a verb (quote-aware)."""
    protected, values = _protect_quotes(text)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", protected) if s.strip()]
    kept = sentences[:1] + [s for s in sentences[1:] if _VERB_AT_START.match(s.strip())]
    return _PH.sub(lambda m: '"' + values[int(m.group(1))] + '"', " ".join(kept))


# --- grounding ----------------------------------------------------------------------------------------------------
class GroundingError(Exception):
    """An intent names nothing on the page."""


@dataclass
class _Batch:
    actions: list[Action] = field(default_factory=list)
    focus: int | None = None
    """Outline index of the field that has the keyboard focus after ``actions`` (None: unknown)."""
    stop: bool = False
    """The last action may change the page: ground the rest on the next observation."""


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def _find_clickable(nodes: list[AriaNode], name: str, role: str | None) -> AriaNode | None:
    candidates = [n for n in nodes if n.role in CLICKABLE_ROLES and n.name]
    for exact in (True, False):
        matches = [n for n in candidates if (n.name == name if exact else _norm(n.name) == _norm(name))]
        if role:
            preferred = [n for n in matches if n.role == role]
            if preferred:
                return preferred[0]
        if matches:
            return matches[0]
    return None


def _target_for(node: AriaNode) -> Target:
    return Target("role", node.name, role=node.role)


def _text_present(nodes: list[AriaNode], text: str) -> bool:
    needle = _norm(text)
    return bool(needle) and any(needle in _norm(t) for n in nodes for t in (n.name, n.text) if t)


def _field_label(nodes: list[AriaNode], node: AriaNode) -> str:
    """A field's name, placeholder, or the short text just before it in the same container (an unlinked <label>)."""
    own = node.name or node.props.get("placeholder", "")
    if own:
        return own
    for prev in reversed(nodes[: node.index]):
        if prev.parent != node.parent:
            if prev.index == node.parent:
                break
            continue
        if prev.role in FOCUSABLE_ROLES:
            break
        words = prev.text or prev.name
        if words and len(words) <= 60:
            return words
        if words:
            break
    return ""


_FIELD_ALIASES = {
    "username": ("username", "user name", "user", "login", "email", "e-mail", "account"),
    "password": ("password", "pass", "passcode", "pwd"),
    "email": ("email", "e-mail", "mail"),
}


def _field_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower())]


_ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
             "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "last": -1}


def _ordinal(words: list[str]) -> tuple[int | None, list[str]]:
    """Pull an ordinal ("2nd", "third", "last") out of words: (1-based position or -1 for last, other words)."""
    for i, w in enumerate(words):
        if w in _ORDINALS:
            return _ORDINALS[w], words[:i] + words[i + 1:]
    return None, words


def _nth(items: list[AriaNode], position: int | None) -> list[AriaNode]:
    if position is None:
        return items
    if position == -1:
        return items[-1:]
    return items[position - 1: position]


def _match_fields(nodes: list[AriaNode], fields: list[AriaNode], descriptor: str | None) -> list[AriaNode]:
    """Fields matching a descriptor, best first; all fields (document order) for a generic one.

    An ordinal ("the 2nd text field", "the last input") picks that one of the matching fields in document order.
    """
    position, words = _ordinal(_field_words(descriptor or ""))
    words = [w for w in words if w not in _GENERIC_FIELD_WORDS]
    if position is not None:
        matched = _match_fields(nodes, fields, " ".join(words)) if words else fields
        return _nth(sorted(matched, key=lambda n: n.index), position)
    if not words:
        return fields
    wanted = " ".join(words)
    scored: list[tuple[float, int, AriaNode]] = []
    for f in fields:
        label_words = _field_words(_field_label(nodes, f))
        label = " ".join(label_words)
        if not label:
            continue
        if label == wanted:
            score = 3.0
        elif all(w in label_words for w in words):
            score = 2.0 - 0.1 * (len(label_words) - len(words))
        else:
            aliases = next((a for k, a in _FIELD_ALIASES.items() if wanted == k or wanted in a), ())
            if any(a in label for a in aliases):
                score = 1.0
            elif any(w in label_words for w in words):
                score = 0.5
            else:
                continue
        scored.append((score, f.index, f))
    scored.sort(key=lambda t: (-t[0], t[1]))
    if scored:
        return [f for _, _, f in scored]
    # no label matches: username/password by position, as login forms are laid out
    if wanted in _FIELD_ALIASES["username"] and fields:
        return [fields[0]]
    if wanted in _FIELD_ALIASES["password"] and len(fields) >= 2:
        return [fields[1]]
    if len(fields) == 1:
        return fields
    return []


def _directly_targetable(nodes: list[AriaNode], node: AriaNode) -> bool:
    """True when Target(role, name) picks this node: it is the first of its role with exactly its name."""
    first = next(n for n in nodes if n.role == node.role and n.name == node.name)
    return first.index == node.index


def _reach(nodes: list[AriaNode], node: AriaNode, batch: _Batch) -> tuple[list[Action], bool]:
    """Actions that put the keyboard focus in ``node``; the flag says they already cleared it for typing."""
    if _directly_targetable(nodes, node):
        return [], True
    # Tab from the focused field, or from the nearest earlier field a Target can name
    start: AriaNode | None = None
    pre: list[Action] = []
    if batch.focus is not None and batch.focus < node.index:
        start = nodes[batch.focus]
    else:
        for prev in reversed(nodes[: node.index]):
            if prev.role in FOCUSABLE_ROLES and prev.role not in ("link", "button") and _directly_targetable(nodes,
                                                                                                            prev):
                start = prev
                break
        if start is None:
            raise GroundingError(f"cannot reach the {node.role} #{node.index}: nothing before it has a name")
        pre.append(Action("click", target=_target_for(start)))
    tabs = 1 + sum(1 for n in nodes[start.index + 1: node.index] if n.role in FOCUSABLE_ROLES)
    pre.extend(Action("key", keys="Tab") for _ in range(tabs))
    return pre, False


def _ground_type(nodes: list[AriaNode], intents: list[TypeText], batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in TEXT_FIELD_ROLES]
    if not fields:
        raise GroundingError("there is no text field on the page")
    plan: dict[int, str] = {}
    for intent in intents:
        matches = _match_fields(nodes, fields, intent.field)
        if not matches:
            raise GroundingError(f'no field matches "{intent.field}"')
        if intent.every:
            chosen = matches if len(matches) >= 2 else fields
            for f in chosen:
                plan.setdefault(f.index, intent.value)
        else:
            free = [f for f in matches if f.index not in plan] or matches
            plan[free[0].index] = intent.value
    for index in sorted(plan):  # document order, so Tab moves forward
        node = nodes[index]
        pre, direct = _reach(nodes, node, batch)
        batch.actions.extend(pre)
        if direct:
            batch.actions.append(Action("type", text=plan[index], target=_target_for(node)))
        else:
            batch.actions.extend([Action("key", keys="Control+a"), Action("type", text=plan[index])])
        batch.focus = index


def _ground_click(nodes: list[AriaNode], intent: Click, batch: _Batch) -> None:
    for alt in intent.alternatives:
        if alt.startswith("key:") and _find_clickable(nodes, intent.target, intent.role) is None:
            batch.actions.append(Action("key", keys=alt[4:]))
            return
    node = _find_clickable(nodes, intent.target, intent.role)
    for alt in intent.alternatives:
        if node is None and not alt.startswith("key:"):
            node = _find_clickable(nodes, alt, intent.role)
    if node is None and intent.role == "button" and intent.alternatives:
        buttons = [n for n in nodes if n.role == "button" and n.name]
        if len(buttons) == 1:
            node = buttons[0]
    if node is None:  # "the button", "the 2nd link": an element named by its role alone
        position, words = _ordinal(_field_words(intent.target))
        role = _role_word(" ".join(words)) if words else intent.role
        if role and len(words) <= 2:
            picked = _nth([n for n in nodes if n.role == role], position or 1)
            if picked and _directly_targetable(nodes, picked[0]):
                node = picked[0]
    if node is not None:
        batch.actions.append(Action("click", target=_target_for(node)))
        batch.focus = None
        batch.stop = node.role in ("link", "tab", "menuitem", "treeitem")
        return
    if _text_present(nodes, intent.target):
        batch.actions.append(Action("click", target=Target("text", intent.target)))
        batch.focus = None
        batch.stop = True
        return
    raise GroundingError(f'nothing called "{intent.target}" to click on the page')


def _ground_choose(nodes: list[AriaNode], intent: Choose, batch: _Batch) -> None:
    choosable = [n for n in nodes if n.role in ("checkbox", "radio", "switch", "option", "menuitemcheckbox",
                                                "menuitemradio", "treeitem", "tab") and n.name]
    for item in intent.items:
        node = next((n for n in choosable if n.name == item), None) or next(
            (n for n in choosable if _norm(n.name) == _norm(item)), None)
        if node is None:
            if _text_present(nodes, item):
                batch.actions.append(Action("click", target=Target("text", item)))
                continue
            raise GroundingError(f'nothing called "{item}" to select on the page')
        if node.role == "option":
            parent = nodes[node.parent] if node.parent is not None else None
            if parent is not None and parent.role == "combobox":
                if "selected" not in node.attrs:
                    batch.actions.append(Action("select", text=node.name, target=_target_for(parent)))
                continue
        if node.role in ("checkbox", "radio", "switch", "menuitemcheckbox", "menuitemradio") and node.checked:
            continue
        batch.actions.append(Action("click", target=_target_for(node)))
    batch.focus = None


def _ground_focus(nodes: list[AriaNode], intent: Focus, batch: _Batch) -> None:
    fields = [n for n in nodes if n.role in FIELD_ROLES]
    matches = _match_fields(nodes, fields, intent.field) if fields else []
    if not matches:
        raise GroundingError(f'no field matches "{intent.field or "the text field"}"')
    node = matches[0]
    pre, direct = _reach(nodes, node, batch)
    batch.actions.extend(pre)
    if direct:
        batch.actions.append(Action("click", target=_target_for(node)))
    batch.focus = node.index


def _ground_autocomplete(nodes: list[AriaNode], intent: Autocomplete, batch: _Batch) -> Autocomplete | None:
    """First phase: type the prefix (returns the intent for the second phase). Second: click the suggestion."""
    if not intent.typed:
        _ground_type(nodes, [TypeText(intent.prefix, intent.field)], batch)
        batch.stop = True  # the suggestions appear after typing
        return replace(intent, typed=True)
    prefix, suffix = intent.prefix.lower(), intent.suffix.lower()
    items = [n for n in nodes if n.role in ("listitem", "option", "menuitem", "gridcell", "row") and n.label()]
    starts = [n for n in items if n.label().strip().lower().startswith(prefix)]
    both = [n for n in starts if n.label().strip().lower().endswith(suffix)]
    if not starts:
        raise GroundingError(f'no suggestion starting with "{intent.prefix}" is shown')
    pick = (both or starts)[0]
    target = Target("role", pick.name, role=pick.role) if pick.name else Target("text", pick.text.strip())
    batch.actions.append(Action("click", target=target))
    batch.focus = None
    return None


def ground(nodes: list[AriaNode], intents: list[Intent]) -> tuple[list[Action], list[Intent]]:
    """Ground as many leading intents as the current outline allows, as one batch of actions.

    Returns (actions, the intents left for later steps). Consecutive ``TypeText`` intents are grounded together so
    fields are filled in document order. Stops after a click that may change the page (a link, a tab).
    Raises ``GroundingError`` when the first intent names nothing on the page.
    """
    batch = _Batch()
    used = 0
    while used < len(intents) and not batch.stop:
        intent = intents[used]
        try:
            if isinstance(intent, Autocomplete):
                second = _ground_autocomplete(nodes, intent, batch)
                if second is not None:
                    return batch.actions, [second, *intents[used + 1:]]
                used += 1
                continue
            if isinstance(intent, TypeText):
                run: list[TypeText] = []
                for later in intents[used:]:
                    if not isinstance(later, TypeText):
                        break
                    run.append(later)
                _ground_type(nodes, run, batch)
                used += len(run)
                continue
            if isinstance(intent, Click):
                _ground_click(nodes, intent, batch)
            elif isinstance(intent, Choose):
                _ground_choose(nodes, intent, batch)
            elif isinstance(intent, Focus):
                _ground_focus(nodes, intent, batch)
            else:
                batch.actions.append(Action("key", keys=intent.keys))
        except GroundingError:
            if isinstance(intent, Click) and intent.optional:
                used += 1
                continue
            if used == 0:
                raise
            break  # the rest may appear after these actions: try again on the next observation
        used += 1
    return batch.actions, intents[used:]


# --- the policy ---------------------------------------------------------------------------------------------------
class HeuristicPolicy:
    """Rule-based offline agent (``agent_type="heuristic"``): reads the instruction, grounds it in the ARIA outline.

    State across steps (one instance per episode): whether it clicked a START cover, the intents still to do, the
    actions it sent last and how many retries it has used. Each step: a START cover at the start is clicked; a START
    cover after the episode began means the page ended it (``done`` with the visible "Last reward"); otherwise the
    next intents are grounded and sent as one batch. A batch whose actions failed (per ``episode.history``) is
    grounded again once, then the policy fails with the error.
    """

    needs_accessibility = True
    MAX_RETRIES = 2
    MAX_WAITS = 4
    WAIT_SECONDS = 0.25

    def __init__(self, instruction: str):
        self.instruction = instruction
        self.from_page = follows_page(instruction)
        self._intents: list[Intent] | None = None if self.from_page else parse_instruction(instruction)
        self._started = False  # clicked a START cover
        self._acted = False  # sent task actions since then
        self._pending: list[Intent] | None = None  # what is left once the last decision's actions succeed
        self._sent = 0  # len(episode.history) when the last decision was made
        self._retries = 0
        self._waits = 0
        self._start_clicks = 0
        self._read_instruction: str | None = None

    def decide(self, observation: Observation, episode: Episode) -> Decision:
        """Next actions for this observation. Never raises for a page it does not understand: returns ``fail``."""
        nodes = parse_aria(observation.accessibility)
        error = self._settle(episode)
        if start_cover_visible(nodes):
            if self._acted or (self._started and self._intents == []):
                reward = shown_reward(nodes)
                result = "the page ended the episode" + (f" (last reward shown: {reward})" if reward else "")
                return Decision([Action("done", text=result)], thought=result)
            if self._start_clicks >= 3:
                return Decision([Action("fail", text="the START cover does not go away")])
            self._started = True
            self._start_clicks += 1
            return Decision([Action("click", target=Target("text", "START"))], thought="start the episode")
        if error is not None:
            self._retries += 1
            if self._retries > self.MAX_RETRIES:
                return Decision([Action("fail", text=f"an action failed: {error}")], thought=error)
        if self._intents is None:
            text = page_instruction(nodes)
            if text is None:
                return self._wait_or_fail("no instruction found on the page")
            self._read_instruction = text
            self._intents = parse_instruction(text)
        if not self._intents:
            if self._acted:
                if self._started and self._waits < self.MAX_WAITS:  # the page may still be scoring the episode
                    self._waits += 1
                    return Decision([Action("wait", seconds=self.WAIT_SECONDS)], thought="waiting for the page")
                return Decision([Action("done", text=f"done: {self._read_instruction or self.instruction}")])
            return Decision([Action("fail", text=f"cannot understand the instruction: {self._current_text()!r}")])
        try:
            actions, remaining = ground(nodes, self._intents)
        except GroundingError as exc:
            return self._wait_or_fail(str(exc))
        self._pending = remaining
        self._acted = True
        self._sent = len(episode.history)
        thought = f"{self._current_text()} -> {', '.join(_describe(a) for a in actions) or 'nothing to do'}"
        if not actions:  # e.g. "Select nothing": the intent is satisfied as the page stands
            self._intents, self._pending = remaining, None
            return self.decide(observation, episode) if self._intents else Decision(
                [Action("wait", seconds=0)], thought=thought)
        return Decision(actions, thought=thought)

    def _settle(self, episode: Episode) -> str | None:
        """Account for the last decision: drop the intents it did, or return its error so they are retried."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        if len(episode.history) > self._sent:
            record = episode.history[-1]
            failed = next((r for r in record.results if not r.ok), None)
            if failed is not None or len(record.results) < len(record.actions):
                return failed.error if failed is not None and failed.error else "not all actions ran"
        self._intents = pending
        return None

    def _wait_or_fail(self, reason: str) -> Decision:
        if self._waits < self.MAX_WAITS:  # the page may still be loading or rendering
            self._waits += 1
            return Decision([Action("wait", seconds=self.WAIT_SECONDS)], thought=f"{reason}; waiting")
        return Decision([Action("fail", text=reason)], thought=reason)

    def _current_text(self) -> str:
        return self._read_instruction or self.instruction


def _describe(action: Action) -> str:
    what = action.target.describe() if action.target else (action.keys or "")
    if action.type == "type":
        return f"type {action.text!r}" + (f" into {what}" if what else "")
    return f"{action.type} {what}".strip()
