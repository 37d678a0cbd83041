"""The heuristic's literal readings beyond clicking and typing (no browser): waiting, words and cells read off the
outline, copy and paste, dates and times typed by segment, spinners, list boxes, menus, sections and tabs.

Snapshots are ARIA outlines captured from MiniWoB++ pages (trimmed). The same families run in Chromium in
``test_heuristic.py``'s real-page test; ``bench/miniwob_dev.py`` measures them all.
"""

from __future__ import annotations

from worker.computer import Action, ActionResult, Observation, Target
from worker.heuristic import HeuristicPolicy
from worker.heuristic.aria import parse_aria
from worker.heuristic.grounding import ground
from worker.heuristic.instructions import (
    Click,
    Expand,
    FillFromTable,
    Hover,
    Read,
    TypeText,
    Wait,
    first_sentences,
    parse_instruction,
)
from worker.heuristic.miniwob import without_instruction
from worker.heuristic.reading import nth_word, table_value, words_of
from worker.policy import Episode, StepRecord

HUD = '- text: "Last reward: - Last 10 average: - Time left: 10 / 10sec Episodes done: 0"'
TABLE = f"""- text: Enter the value of Color into the text field and press Submit.
- table:
  - row "Year of Birth 1977":
    - cell "Year of Birth"
    - cell "1977"
  - row "Color red":
    - cell "Color"
    - cell "red"
- text: "First name:"
- textbox
- text: "Color:"
- textbox
- button "Submit"
{HUD}"""
WORDS = f"""- text: Find the 5th word in the paragraph, type that into the textbox and press "Submit".
- paragraph: Commodo auctor turpis viverra. Id morbi tortor arcu aliquet faucibus
- textbox
- button "Submit"
{HUD}"""
COPY = f"""- text: Copy the text from the 2nd text area below and paste it into the text input, then press Submit.
- textbox: Rhoncus, tellus in morbi mi amet
- textbox: Eget quis id. Cras euismod
- textbox
- button "Submit"
{HUD}"""
FOCUS = f"""- text: Focus into the 3rd input textbox.
- textbox
- textbox
- textbox
{HUD}"""
SCROLL_LIST = f"""- text: Select Bangladesh, Guam from the scroll list and click Submit.
- listbox:
  - option "Qatar"
  - option "Guam"
  - option "Iran"
  - option "Bangladesh"
- button "Submit"
{HUD}"""
SECTION = f"""- text: Expand the section below and click submit.
- tablist:
  - 'tab "Section #39"'
  - tab "Submit":
    - button "Submit"
{HUD}"""
MENU = f"""- text: Click the "Menu" button, and then find and click on the item labeled "Prev".
- button "Menu"
- menu:
  - listitem:
    - menuitem "Save"
  - listitem:
    - menuitem "Playback"
{HUD}"""


def test_the_grammar_reads_waits_lookups_copies_and_widgets() -> None:
    assert parse_instruction("Click button ONE, wait 2 seconds, then click button TWO.") == [
        Click("ONE", "button"), Wait(2.0), Click("TWO", "button")]
    assert parse_instruction("Find the last word in the text area, enter it into the text field and hit Submit.")[:2] \
        == [Read("word", "text area", -1), TypeText("", "the text field", recall=True)]
    assert parse_instruction("Enter the value of Color into the text field and press Submit.")[:2] == [
        Read("cell", key="Color"), TypeText("", "the text field", recall=True)]
    assert parse_instruction("Enter the value that corresponds with each label into the form and submit when done."
                             )[0] == FillFromTable()
    assert parse_instruction("Enter 12/15/2011 as the date and hit submit.")[0] == TypeText("12/15/2011", "date")
    assert parse_instruction("Select -9 with the spinner and hit Submit.")[0] == TypeText("-9", "spinner")
    assert parse_instruction("Expand the section below and click submit.")[0] == Expand("section")
    # looking through several sections or tabs is left to the policy: only the click remains
    assert parse_instruction('Switch between the tabs to find and click on the link "orci".') == [
        Click("orci", "link")]
    assert parse_instruction("Select Monique>Clareta>Layne") == [
        Hover("Monique"), Hover("Clareta"), Click("Layne", "menuitem")]
    # a form filled without a word about submitting it is submitted when it has a Submit button
    assert parse_instruction('Check the 2nd radio button and enter the number "4" into the 1st textbox.')[-1] \
        == Click("Submit", "button", alternatives=parse_instruction("Submit.")[0].alternatives, optional=True)
    # a field's label after the instruction is no sentence to follow
    assert first_sentences("Select 7 with the spinner and hit Submit. Select a value:") == \
        "Select 7 with the spinner and hit Submit."


def test_values_are_read_off_the_outline() -> None:
    nodes = parse_aria(TABLE)
    assert table_value(nodes, "Color") == "red" and table_value(nodes, "color:") == "red"
    assert table_value(nodes, "Religion") is None
    assert nth_word(parse_aria(WORDS), "paragraph", 5) == "Id" and nth_word(parse_aria(WORDS), "paragraph", -1) \
        == "faucibus"
    assert words_of("Viverra sit nunc. Libero, eget.") == ["Viverra", "sit", "nunc", "Libero", "eget"]


def test_grounding_types_read_values_and_fills_a_form_from_the_table() -> None:
    actions, _ = ground(parse_aria(WORDS), parse_instruction(
        'Find the 5th word in the paragraph, type that into the textbox and press "Submit".'))
    assert actions[0] == Action("type", text="Id", target=Target("role", "", role="textbox"))
    actions, _ = ground(parse_aria(TABLE), parse_instruction(
        "Enter the value that corresponds with each label into the form and submit when done."))
    assert actions[:1] == [Action("type", text="red", target=Target("role", "", role="textbox", nth=1))]


def test_copy_and_paste_go_through_the_clipboard_into_another_field() -> None:
    actions, _ = ground(parse_aria(COPY), parse_instruction(
        "Copy the text from the 2nd text area below and paste it into the text input, then press Submit."))
    assert actions[:6] == [
        Action("click", target=Target("role", "", role="textbox", nth=1)), Action("key", keys="Control+a"),
        Action("key", keys="Control+c"),
        Action("click", target=Target("role", "", role="textbox", nth=2)), Action("key", keys="Control+a"),
        Action("key", keys="Control+v")]


def test_dates_times_and_spinners_are_entered_as_their_widgets_take_them() -> None:
    field = parse_aria("- textbox\n- button \"Submit\"")
    actions, _ = ground(field, [TypeText("3:08 PM", "time")])
    assert actions == [Action("click", target=Target("role", "", role="textbox")),
                       *[Action("key", keys="ArrowLeft")] * 3, Action("type", text="0308PM")]
    actions, _ = ground(field, [TypeText("12/15/2011", "date")])
    assert actions[-1] == Action("type", text="12/15/2011")
    spinner = parse_aria('- spinbutton "Select a value:": "2"')
    actions, _ = ground(spinner, [TypeText("-1", "spinner")])
    assert actions == [Action("click", target=Target("role", "Select a value:", role="spinbutton")),
                       *[Action("key", keys="ArrowDown")] * 3]


def test_unnamed_fields_list_options_and_sections_are_named_by_position_or_word() -> None:
    actions, _ = ground(parse_aria(FOCUS), parse_instruction("Focus into the 3rd input textbox."))
    assert actions == [Action("click", target=Target("role", "", role="textbox", nth=2))]  # never the 1st
    actions, _ = ground(parse_aria(SCROLL_LIST), parse_instruction(
        "Select Bangladesh, Guam from the scroll list and click Submit."))
    assert actions == [Action("click", target=Target("role", "Guam", role="option")),
                       Action("key", keys="Control+ArrowDown"), Action("key", keys="Control+ArrowDown"),
                       Action("key", keys="Control+Space"),
                       Action("click", target=Target("role", "Submit", role="button"))]
    actions, rest = ground(parse_aria(SECTION), parse_instruction("Expand the section below and click submit."))
    assert actions == [Action("click", target=Target("role", "Section #39", role="tab"))] and len(rest) == 1


def test_the_instruction_is_no_target_and_the_policy_looks_into_menus() -> None:
    nodes = without_instruction(parse_aria(MENU))
    assert nodes[0].text == "" and "Last reward" not in nodes[-1].text
    policy = HeuristicPolicy("Follow the instruction on the page.")
    episode = Episode(task_id="t", instruction=policy.instruction)

    def step(snapshot: str) -> list[Action]:
        decision = policy.decide(Observation(b"", "http://x/", "x", 640, 480, accessibility=snapshot), episode)
        episode.history.append(StepRecord(len(episode.history) + 1, decision.actions,
                                          [ActionResult(True) for _ in decision.actions], decision.thought, ""))
        return decision.actions

    # Given the menu is closed, when the policy reads the instruction, then it opens the menu
    assert step(MENU) == [Action("click", target=Target("role", "Menu", role="button"))]
    # and "Prev" (named only in the instruction) is nowhere: it points at each menu item in turn to find it
    assert step(MENU)[0] == Action("move", target=Target("role", "Save", role="menuitem"))
    assert step(MENU)[0] == Action("move", target=Target("role", "Playback", role="menuitem"))
    opened = '    - menuitem "Playback"\n    - menu:\n      - menuitem "Prev"'
    submenu = MENU.replace('    - menuitem "Playback"', opened)
    assert step(submenu) == [Action("click", target=Target("role", "Prev", role="menuitem"))]


PICKER_CLOSED = f"""- text: Select 02/22/2016 as the date and hit submit.
- paragraph:
  - text: "Date:"
  - textbox
- button "Submit"
{HUD}"""
PICKER_OPEN = PICKER_CLOSED.replace(HUD, """- text: Prev Next March 2016
- table:
  - rowgroup:
    - row "21 22":
      - cell "21":
        - link "21"
      - cell "22":
        - link "22"
""" + HUD)


def test_a_date_picker_is_opened_paged_to_the_month_and_its_day_clicked() -> None:
    intents = parse_instruction("Select 02/22/2016 as the date and hit submit.")
    actions, rest = ground(parse_aria(PICKER_CLOSED), intents)
    assert actions == [Action("click", target=Target("role", "", role="textbox"))] and rest == intents
    actions, rest = ground(parse_aria(PICKER_OPEN), intents)
    assert actions == [Action("click", target=Target("text", "Prev"))] and rest == intents
    feb = PICKER_OPEN.replace("March 2016", "February 2016")
    actions, rest = ground(parse_aria(feb), intents)
    assert actions[0] == Action("click", target=Target("role", "22", role="link")) and rest == intents[1:]


POPUP_FORM = f"""- text: Enter the username "kim" and the password "x1" into the text fields and press login.
- paragraph:
  - text: Username
  - textbox
- paragraph:
  - text: Password
  - textbox
- button "OK"
{HUD}"""
POPUP = POPUP_FORM.replace(HUD, """- paragraph: Your session is about to expire.
- paragraph: Exit to home page?
- paragraph:
  - button "OK"
  - button "Cancel"
""" + HUD)


def test_a_popup_that_swallowed_the_typing_is_dismissed_and_the_typing_redone() -> None:
    policy = HeuristicPolicy("Follow the instruction on the page.")
    episode = Episode(task_id="t", instruction=policy.instruction)

    def step(snapshot: str) -> list[Action]:
        decision = policy.decide(Observation(b"", "http://x/", "x", 640, 480, accessibility=snapshot), episode)
        episode.history.append(StepRecord(len(episode.history) + 1, decision.actions,
                                          [ActionResult(True) for _ in decision.actions], decision.thought, ""))
        return decision.actions

    typed = step(POPUP_FORM)
    assert [a.text for a in typed] == ["kim", "x1"]
    # Given a popup came up while it typed (its fields disabled), it dismisses it rather than follow it
    assert step(POPUP) == [Action("click", target=Target("role", "Cancel", role="button"))]
    # then types again and only then submits
    assert step(POPUP_FORM) == typed
    assert step(POPUP_FORM) == [Action("click", target=Target("role", "OK", role="button"))]


RESULTS = f"""- text: Use the textbox to enter "Olin" and press "Search", then find and click the 5th search result.
- textbox: Olin
- button "Search"
- link "Joye"
- link "Deneen"
- link "Juan"
- list:
  - listitem:
    - link "1"
  - listitem:
    - link "2"
{HUD}"""


def test_the_nth_search_result_is_found_on_its_page() -> None:
    intents = parse_instruction('Use the textbox to enter "Olin" and press "Search", then find and click the 5th '
                                'search result.')
    assert intents[0] == TypeText("Olin", "textbox")
    actions, rest = ground(parse_aria(RESULTS), intents[2:])
    assert actions == [Action("click", target=Target("role", "2", role="link"))]  # results 4-6 are on page 2
    actions, rest = ground(parse_aria(RESULTS), rest)
    assert actions == [Action("click", target=Target("role", "Deneen", role="link"))] and rest == []


def test_a_slider_the_outline_does_not_show_is_set_from_the_keyboard() -> None:
    page = f"""- text: Select 11 with the slider and hit Submit. 14
- button "Submit"
{HUD}"""
    intents = parse_instruction("Select 11 with the slider and hit Submit.")
    actions, _ = ground(without_instruction(parse_aria(page)), intents)
    assert actions == [Action("key", keys="Tab"), *[Action("key", keys="ArrowLeft")] * 3]
