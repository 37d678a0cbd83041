"""The heuristic agent's instruction grammar: plain English in, *intents* out (no page involved).

:func:`parse_instruction` protects quoted values, splits the text into clauses (sentences, then the parts joined by
"and", "then" or a comma in front of a verb) and reads each clause that starts with a known verb as intents:
:class:`Click`, :class:`TypeText`, :class:`Choose`, :class:`Focus`, :class:`PressKey`, :class:`Autocomplete`. A
clause with no known verb (filler text) yields nothing. ``grounding.py`` finds what the intents name on the page.

Instructions it understands (quotes optional where unambiguous)::

    Click on the "ok" button.                Click on the link "Eget".        Click on Tab #2.
    Close the dialog box by clicking the "x".                                  Focus into the textbox.
    Enter "Bob" into the text field and press Submit.
    Type "bob" in all upper case letters in the text input and press Submit.
    Enter the username "kim" and the password "x1" into the text fields and press login.
    Login with username kim and password x1.
    Enter the password "x" into both text fields and press submit.
    Select TqDX3, ab and click Submit.       Select nothing and click Submit.  Press Enter.
    Enter an item that starts with "An" and ends with "ica".
    Follow the instruction on the page.      (:func:`follows_page`; the policy then reads it from the page)
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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
    ``every``: into every matching field ("both text fields").

    ``recall``: the value is what the last :class:`Read` read off the page ("type that into the textbox"); grounding
    fills it in. ``skip``: outline indices of fields not to type into (where the text came from). ``paste``: paste
    the clipboard (Ctrl+V) instead of typing ``value`` (after a copied text).
    """

    value: str
    field: str | None = None
    every: bool = False
    recall: bool = False
    skip: tuple[int, ...] = ()
    paste: bool = False


@dataclass(frozen=True)
class PickDate:
    """Pick ``month``/``day``/``year`` in a date picker: open it from its field, page to the month with its Prev /
    Next controls, click the day ("Select 02/22/2016 as the date")."""

    month: int
    day: int
    year: int


@dataclass(frozen=True)
class ClickResult:
    """Click the ``position``-th result of a search (1-based), paging through the results when it is on a later
    page; ``skipped``: results on the pages before the one shown."""

    position: int
    skipped: int = 0


@dataclass(frozen=True)
class Hover:
    """Move the mouse over the element named ``target`` (a menu item whose submenu opens on hover)."""

    target: str


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
class Wait:
    """Let ``seconds`` pass before the next action ("wait 2 seconds")."""

    seconds: float


@dataclass(frozen=True)
class Read:
    """Read a value off the page for the next ``TypeText`` with ``recall``.

    ``what``: "word" (the ``position``-th word of the text in ``source``, 1-based, -1 the last), "text" (all of the
    text in the field ``source``: copying it), or "cell" (the table cell next to the one reading ``key``).
    ``source``: a descriptor as the instruction words it ("the paragraph", "the 3rd text area"), None: the first.
    """

    what: str
    source: str | None = None
    position: int | None = None
    key: str | None = None


@dataclass(frozen=True)
class FillFromTable:
    """Type into each labelled text field the value the page's table gives for that label ("Enter the value that
    corresponds with each label into the form")."""


@dataclass(frozen=True)
class Expand:
    """Open the collapsed section, menu or folder whose name contains ``what`` ("Expand the section below")."""

    what: str


@dataclass(frozen=True)
class Autocomplete:
    """Type ``prefix`` into a field, then pick the suggestion that starts with it (and ends with ``suffix``).

    ``typed``: the prefix has been typed (the second phase picks from the suggestion list).
    """

    prefix: str
    suffix: str = ""
    field: str | None = None
    typed: bool = False


Intent = (Click | TypeText | Choose | Focus | PressKey | Autocomplete | Wait | Read | FillFromTable | Expand | Hover
          | PickDate | ClickResult)

_FOLLOW_PAGE = re.compile(
    r"\b(?:follow|do|complete|perform|carry\s+out|execute|read)\b.{0,40}?\b(?:instructions?|task|directions?|what)\b"
    r".{0,40}?\b(?:on|in|from|at)\s+(?:the\s+|this\s+)?(?:web\s*)?(?:page|screen|site|website)\b"
    r"|\bwhat\s+the\s+(?:web\s*)?page\s+says\b",
    re.I | re.S,
)
_VERB = (r"(?:double[- ]?click|click|press|hit|tap|push|select|uncheck|check|tick|choose|pick|mark|enter|type|input|"
         r"fill|write|put|submit|focus|close|dismiss|log\s*in|login|sign\s*in|switch|open|go|wait|find|copy|paste|expand|"
         r"use)")
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
    "same", "both", "also", "its", "please", "just", "exactly", "only", "your", "number", "numbers", "digits",
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
        role = role_word(m.group(1))
        words = words[: m.start()]
    m = re.match(r"^(button|link|tab|checkbox|option)\s+(?:labeled\s+|named\s+|called\s+)?(.+)$", words, re.I)
    if m and not words.lower().startswith("tab #"):
        role = role_word(m.group(1))
        words = m.group(2)
    return words.strip().strip(",.:;").strip(), role


def role_word(word: str) -> str | None:
    """A role as instructions word it ("button", "check box", "radio button") -> its ARIA role, or None."""
    w = re.sub(r"\s+", "", word.lower())
    return {"button": "button", "link": "link", "tab": "tab", "checkbox": "checkbox", "radiobutton": "radio",
            "radio": "radio", "option": "option", "textarea": "textbox", "textbox": "textbox", "textfield": "textbox",
            "input": "textbox"}.get(w)


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


_PRONOUNS = frozenset({"it", "that", "this", "them", "the word", "that word", "the text", "the value", "the answer",
                       "the result"})
"""Values that name what was just read or copied ("type that into the textbox")."""


def _position(word: str) -> int | None:
    low = word.lower()
    if low in ("last", "final"):
        return -1
    m = re.fullmatch(r"(\d+)(?:st|nd|rd|th)", low)
    if m:
        return int(m.group(1))
    return {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
            "ninth": 9, "tenth": 10}.get(low)


def _parse_reading(verb: str, rest: str, clause: str, values: list[str]) -> list[Intent] | None:
    """Clauses that wait, read a value off the page, or open a section; None when the clause is none of these.

    'wait 2 seconds', 'Find the 5th word in the paragraph', 'Copy the text in the textarea below',
    'paste it into the textbox', 'Enter the value of Color into the text field', 'Enter the value that
    corresponds with each label into the form', 'Enter 12/15/2011 as the date', 'Expand the section below',
    'Use the textbox to enter "x"'.
    """
    text = _restore(rest, values).strip()
    if verb == "wait":
        m = re.match(r"^(?:for\s+)?(\d+(?:\.\d+)?)\s*(?:seconds?|secs?|s)\b", text, re.I)
        return [Wait(float(m.group(1)))] if m else []
    if verb == "find":
        m = re.match(r"^(?:the\s+)?(\w+)\s+word\s+(?:in|of|from)\s+(?:the\s+)?(.+)$", text, re.I)
        if m and _position(m.group(1)) is not None:
            return [Read("word", m.group(2), _position(m.group(1)))]
        return []  # 'Find and click on ...' continues in the next clause
    if verb == "copy":
        m = re.match(r"^(?:the\s+)?(?:text|value|contents?|words?)?\s*(?:in|from|of)\s+(?:the\s+)?(.+)$", text, re.I)
        return [Read("text", m.group(1) if m else None)]
    if verb == "paste":
        m = re.match(r"^(?:it|that|this|the\s+text)?\s*(?:in|into|to|onto)\s+(?:the\s+)?(.+)$", text, re.I)
        return [TypeText("", m.group(1) if m else None, recall=True)]
    if verb == "expand":
        m = re.match(r"^(?:the\s+|all\s+(?:the\s+)?)?([\w ]+?)(?:\s+(?:below|above|here))?(?:\s*,.*)?$", text, re.I)
        what = m.group(1).strip().lower() if m else ""
        if not what or (what.endswith("s") and not what.endswith("ss")):  # 'the sections': look through them later
            return []
        return [Expand(what.split()[-1] if what.split()[-1] != "menu" else what)]
    if verb == "use":
        m = re.match(r"^(?:the\s+)?(.+?)\s+to\s+(.+)$", rest, re.I)
        if not m:
            return []
        inner = _parse_clause(m.group(2), values)
        return [TypeText(i.value, i.field or _restore(m.group(1), values), i.every) if isinstance(i, TypeText) else i
                for i in inner]
    if verb in ("enter", "type", "input", "write", "put"):
        if re.search(r"\bvalues?\s+that\s+correspond|\beach\s+label\b", text, re.I):
            return [FillFromTable()]
        m = re.match(r"^(?:the\s+)?value\s+(?:of|for)\s+(?:the\s+)?(.+?)\s+(?:into|in|to)\s+(.+)$", text, re.I)
        if m:
            return [Read("cell", key=m.group(1).strip()), TypeText("", m.group(2), recall=True)]
        m = re.match(r"^(.+?)\s+as\s+(?:the\s+|a\s+|an\s+)?([\w ]+)$", text, re.I)
        if m and not _PH.search(rest):
            return [TypeText(m.group(1).strip(), m.group(2).strip())]
        m = re.match(r"^(.+?)\s+(?:into|in|to|on)\s+(.+)$", text, re.I)
        if m and m.group(1).strip().lower() in _PRONOUNS:
            return [TypeText("", m.group(2), recall=True)]
    return None


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
    special = _parse_reading(verb, rest, clause, values)
    if special is not None:
        return special
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
        widget = re.match(r"^(.+?)\s+(?:with|using|on|in)\s+the\s+(spinner|spin\s*button|slider|number\s+field)$",
                          _restore(rest, values).strip(), re.I)
        if widget:  # 'Select 7 with the spinner': a value typed into the one number field
            return [TypeText(widget.group(1).strip(), widget.group(2).lower())]
        date = re.match(r"^(\d{1,2})/(\d{1,2})/(\d{4})\s+as\s+the\s+date$", _restore(rest, values).strip(), re.I)
        if date:  # 'Select 02/22/2016 as the date': with the date picker
            return [PickDate(int(date.group(1)), int(date.group(2)), int(date.group(3)))]
        items_text = re.sub(r"\s+(?:from|in|on)\s+the\s+.*$", "", rest, flags=re.I)
        items_text = re.sub(r"^(?:the\s+)?(?:following\s+)?(?:items?|options?|checkboxes|boxes)?\s*:?\s*", "",
                            items_text, flags=re.I)
        if re.fullmatch(r"(?:nothing|none|no\s+\w+)", items_text.strip(), re.I):
            return [Choose(())]
        parts = [p.strip() for p in re.split(r"\s*,\s*|\s+and\s+|\s*&\s*", items_text) if p.strip()]
        items = tuple(_restore(p, values) for p in parts)
        if len(items) == 1 and ">" in items[0]:  # 'Select File>Open>Recent': through the submenus
            path = [p.strip() for p in items[0].split(">") if p.strip()]
            return [*(Hover(p) for p in path[:-1]), Click(path[-1], "menuitem")]
        return [Choose(items)] if items else []
    # click / press / tap / switch / open / go / close "x"
    if holders:
        hint = _role_hint(clause)
        target = holders[0]
        if target.strip().lower() in ("x", _TIMES) or verb in ("close", "dismiss"):
            return [Click(target, hint, alternatives=_CLOSE_WORDS)]
        return [Click(target, hint)]
    if verb == "switch" and re.match(r"^(?:between|through|across)\b", rest, re.I):
        return []  # 'Switch between the tabs to find ...': the policy looks through the tabs for what comes next
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
    result = re.fullmatch(r"(\w+)\s+(?:search\s+)?result", target, re.I)
    if result and _position(result.group(1)) not in (None, -1):
        return [ClickResult(_position(result.group(1)) or 1)]
    return [Click(target, role)]


def parse_instruction(instruction: str) -> list[Intent]:
    """Turn a plain-English instruction into intents, in order; [] when nothing in it is understood.

    Clauses with no known verb (e.g. the filler text after a MiniWoB++ query) are ignored.
    """
    text, values = _protect_quotes(instruction.strip())
    intents: list[Intent] = []
    for clause in _clauses(text):
        intents.extend(_parse_clause(clause, values))
    if intents and isinstance(intents[-1], Autocomplete | TypeText | FillFromTable):
        # a form entry is finished by submitting it (when the form has a Submit button)
        intents.append(Click("Submit", "button", alternatives=_SUBMIT_WORDS, optional=True))
    return intents


def first_sentences(text: str) -> str:
    """The first sentence plus any following ones that start with a verb (quote-aware)."""
    protected, values = _protect_quotes(text)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", protected) if s.strip()]
    # a later sentence that starts with a verb goes on; one ending in a colon is a field's label ("Select a value:")
    kept = sentences[:1] + [s for s in sentences[1:] if _VERB_AT_START.match(s.strip())
                            and not s.strip().endswith(":")]
    return _PH.sub(lambda m: '"' + values[int(m.group(1))] + '"', " ".join(kept))
