"""Pieces every provider adapter shares: screenshot preparation and the ONE coordinate conversion, the action
builder that turns model-space values into viewport ``Action``s, the pieces of the action tables, SDK error
reporting, usage and cost.

Coordinate spaces (``ModelSpec.coordinates``, ``/work/shared/PROVIDERS.md``):

- ``pixels``: pixels of the screenshot sent (OpenAI, Anthropic). The screenshot is scaled down first when the
  spec sets ``max_pixels`` / ``max_long_edge`` (Anthropic: ~1.15 MP, 1568 px a side); model coordinates are scaled
  back by ``viewport / sent`` per axis.
- ``normalized``: 0-999 or 0-1000 (Northstar, UI-TARS 1.0, Qwen3-VL): ``px = int(v / 1000 * viewport)``.
- ``smart-resize``: pixels of the screenshot resized by Qwen's ``smart_resize`` (sides multiples of 28, area within
  ``[min_pixels, max_pixels]``; UI-TARS 1.5, Qwen2.5-VL). The screenshot is resized to exactly that size before
  sending, so the server's own resize is a no-op and the mapping is the ``pixels`` one.

:meth:`Screen.to_viewport` is the only place model coordinates become viewport CSS pixels.

Action tables: each adapter maps its provider's action names through a dict ``name -> ActionMap`` (a function of
the builder and the provider's action record), looked up with :func:`table_entry`, so a name missing from the
table is a failed step naming it. The factories below (:func:`click_at`, :func:`move_to`, :func:`drag_between`,
:func:`wait_seconds`, :func:`refuse`, :func:`no_action`) build the entries that only differ in where a point or a
value is read; provider-specific cases (scroll amounts, key chords, terminal actions) are functions in the
adapter's module. :data:`COORDINATE_ACTIONS` is the part of Anthropic's computer tool that Qwen-VL's
``computer_use`` function repeats name for name.
"""

from __future__ import annotations

import base64
import io
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeAlias, TypeVar

from PIL import Image

from shared.models import ModelSpec
from shared.settings import Settings
from worker.computer import Action, Observation
from worker.policy import Decision, Episode, PolicyError, StepRecord

JPEG_QUALITY = 85
"""Quality of screenshots re-encoded after scaling (unscaled ones are sent as the computer took them)."""
SCROLL_NOTCH_PX = 100
"""Pixels per wheel notch, for providers that scroll in notches (Anthropic ``scroll_amount``, small Qwen values)."""
MAX_SCROLL_PX = 2000
"""Largest scroll of one action, in pixels (larger model values are clamped)."""


class AnswerError(Exception):
    """The model's answer (or one of its actions) cannot be turned into actions: malformed JSON or text, a missing
    field, or an action with no equivalent here. Becomes a failed step (``Decision.error``), never a task failure."""


# --- screenshots and coordinates -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """One screenshot as sent to the model. ``width`` x ``height``: the image sent (pixels); ``viewport_*``: the
    screen it was taken of (CSS pixels); ``original``: the viewport-size JPEG (for zoom crops)."""

    image: bytes
    mime: str
    width: int
    height: int
    viewport_width: int
    viewport_height: int
    original: bytes

    def base64(self) -> str:
        """The image as base64 text (Anthropic's ``source.data``)."""
        return base64.b64encode(self.image).decode("ascii")

    def data_url(self) -> str:
        """The image as a ``data:image/jpeg;base64,...`` URL (Responses API and chat completions)."""
        return f"data:{self.mime};base64,{self.base64()}"


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """Qwen2.5-VL's ``smart_resize`` (qwen-vl-utils): ``(height, width)`` rounded to multiples of ``factor`` with
    the area kept within ``[min_pixels, max_pixels]`` and the aspect ratio about the same.

    Raises:
        ValueError: an aspect ratio over 200.
    """
    if max(height, width) / max(min(height, width), 1) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_within(width: int, height: int, max_pixels: int | None, max_long_edge: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled down (aspect kept) so the area is at most ``max_pixels`` and the longest side at
    most ``max_long_edge``; unchanged when it already fits."""
    scale = 1.0
    if max_pixels and width * height > max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    if max_long_edge and max(width, height) > max_long_edge:
        scale = min(scale, max_long_edge / max(width, height))
    if scale >= 1.0:
        return width, height
    return max(1, int(width * scale)), max(1, int(height * scale))


def _resize_jpeg(jpeg: bytes, size: tuple[int, int]) -> bytes:
    with Image.open(io.BytesIO(jpeg)) as img:
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()


class Screen:
    """Prepares screenshots for one model and converts its coordinates (see the module docstring)."""

    def __init__(self, spec: ModelSpec):
        self.coordinates = spec.coordinates
        self.max_pixels = spec.max_pixels
        self.min_pixels = spec.min_pixels
        self.max_long_edge = spec.max_long_edge

    def sent_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a ``width`` x ``height`` screenshot is sent at."""
        if self.coordinates == "smart-resize":
            h, w = smart_resize(height, width, min_pixels=self.min_pixels or 56 * 56,
                                max_pixels=self.max_pixels or 16384 * 28 * 28)
            return w, h
        return fit_within(width, height, self.max_pixels, self.max_long_edge)

    def frame(self, observation: Observation) -> Frame:
        """The observation's screenshot as the model gets it (scaled with Pillow when the spec wants it)."""
        w, h = self.sent_size(observation.width, observation.height)
        image = observation.screenshot
        if (w, h) != (observation.width, observation.height):
            image = _resize_jpeg(image, (w, h))
        return Frame(image, "image/jpeg", w, h, observation.width, observation.height, observation.screenshot)

    def to_viewport(self, frame: Frame, x: float, y: float) -> tuple[int, int]:
        """Model coordinates -> viewport CSS pixels (rounded down; a value on the far edge lands on the last pixel).
        Points outside the screen are returned as they are: the computer refuses them with a clear error."""
        if self.coordinates == "normalized":
            px, py = x / 1000 * frame.viewport_width, y / 1000 * frame.viewport_height
        else:
            px, py = x * frame.viewport_width / frame.width, y * frame.viewport_height / frame.height
        ix, iy = math.floor(px), math.floor(py)
        return (frame.viewport_width - 1 if ix == frame.viewport_width else ix,
                frame.viewport_height - 1 if iy == frame.viewport_height else iy)

    def from_viewport(self, frame: Frame, px: int, py: int) -> tuple[int, int]:
        """Viewport CSS pixels -> model coordinates (the inverse of :meth:`to_viewport`, for answers such as
        Anthropic's ``cursor_position``)."""
        if self.coordinates == "normalized":
            return round(px / frame.viewport_width * 1000), round(py / frame.viewport_height * 1000)
        return round(px * frame.width / frame.viewport_width), round(py * frame.height / frame.viewport_height)

    def crop(self, frame: Frame, region: Sequence[float]) -> Frame:
        """The ``[x0, y0, x1, y1]`` region (model coordinates) of the viewport screenshot, at viewport resolution
        (Anthropic's ``zoom``). Raises AnswerError for a region that is not four numbers forming a box."""
        if len(region) != 4:
            raise AnswerError(f"zoom region must be [x0, y0, x1, y1], got {region!r}")
        x0, y0 = self.to_viewport(frame, *_numbers(region[:2]))
        x1, y1 = self.to_viewport(frame, *_numbers(region[2:]))
        box = (max(0, x0), max(0, y0), min(frame.viewport_width, x1), min(frame.viewport_height, y1))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise AnswerError(f"zoom region {list(region)} is empty on screen")
        with Image.open(io.BytesIO(frame.original)) as img:
            out = io.BytesIO()
            img.convert("RGB").crop(box).save(out, "JPEG", quality=JPEG_QUALITY)
        w, h = box[2] - box[0], box[3] - box[1]
        return Frame(out.getvalue(), "image/jpeg", w, h, w, h, out.getvalue())


def _numbers(values: Any) -> tuple[float, float]:
    try:
        x, y = values
    except (TypeError, ValueError):
        raise AnswerError(f"expected a point [x, y], got {values!r}") from None
    for v in (x, y):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise AnswerError(f"expected numeric coordinates, got {values!r}")
    return float(x), float(y)


# --- actions -----------------------------------------------------------------------------------------------------
class ActionBuilder:
    """Builds viewport ``Action``s from model-space values, remembering the pointer across steps.

    ``cursor`` is where the pointer was last sent (viewport pixels); ``pressed_at`` is where a model pressed the
    button down (``mouse_down``): the matching ``mouse_up`` becomes one ``drag`` from there, since the computer
    has no separate button-down state. Every method raises :class:`AnswerError` for values it cannot use.
    """

    def __init__(self, screen: Screen, kind: str = "browser"):
        self.screen = screen
        self.kind = kind
        self.frame: Frame | None = None
        self.cursor: tuple[int, int] | None = None
        self.pressed_at: tuple[int, int] | None = None

    def point(self, x: Any, y: Any = None) -> tuple[int, int]:
        """Model ``(x, y)`` (or one ``[x, y]`` sequence as ``x``) -> viewport pixels."""
        if self.frame is None:
            raise AssertionError("ActionBuilder.point before a frame was set")
        fx, fy = _numbers(x if y is None else (x, y))
        return self.screen.to_viewport(self.frame, fx, fy)

    def _at(self, x: Any, y: Any = None) -> tuple[int, int]:
        if x is None:
            if self.cursor is None:
                raise AnswerError("no coordinate given and the pointer has not been placed yet")
            return self.cursor
        self.cursor = self.point(x, y)
        return self.cursor

    def click(self, x: Any = None, y: Any = None, button: str = "left", count: int = 1) -> list[Action]:
        """A click at the point (the pointer's position when ``x`` is None). ``button`` left|right; ``count`` 1-3."""
        px, py = self._at(x, y)
        if button == "right":
            return [Action("right_click", x=px, y=py)]
        if button != "left":
            raise AnswerError(f"{button} button clicks are not supported (left and right only)")
        kind = {1: "click", 2: "double_click", 3: "triple_click"}.get(count)
        if kind is None:
            raise AnswerError(f"a click of {count} presses is not supported")
        return [Action(kind, x=px, y=py)]  # type: ignore[arg-type]

    def move(self, x: Any, y: Any = None) -> list[Action]:
        """Move the pointer to the point (``x`` may be an ``[x, y]`` sequence)."""
        px, py = self._at(x, y)
        return [Action("move", x=px, y=py)]

    def drag(self, start: Any, end: Any) -> list[Action]:
        """A press at ``start`` ([x, y], or None for the pointer's position), moved to ``end``, released."""
        x0, y0 = self._at(start)
        x1, y1 = self.point(end)
        self.cursor = (x1, y1)
        return [Action("drag", x=x0, y=y0, x2=x1, y2=y1)]

    def mouse_down(self, at: Any = None) -> list[Action]:
        """Remember the press point and move the pointer there (the press itself happens with the release)."""
        self.pressed_at = self._at(at)
        return [Action("move", x=self.pressed_at[0], y=self.pressed_at[1])]

    def mouse_up(self, at: Any = None) -> list[Action]:
        """Release: one ``drag`` from the press point to here (a plain click when the pointer did not move)."""
        if self.pressed_at is None:
            raise AnswerError("mouse_up without a mouse_down before it")
        start, self.pressed_at = self.pressed_at, None
        end = self._at(at)
        if end == start:
            return [Action("click", x=end[0], y=end[1])]
        return [Action("drag", x=start[0], y=start[1], x2=end[0], y2=end[1])]

    def scroll(self, at: Any, dx: float, dy: float) -> list[Action]:
        """Scroll by ``dx``/``dy`` pixels (positive: right/down) at ``at`` ([x, y], None: the pointer or centre)."""
        sx, sy = (int(max(-MAX_SCROLL_PX, min(MAX_SCROLL_PX, v))) for v in (dx, dy))
        if at is None and self.cursor is None:
            return [Action("scroll", dx=sx, dy=sy)]
        px, py = self._at(at)
        return [Action("scroll", x=px, y=py, dx=sx, dy=sy)]

    def type(self, text: Any) -> list[Action]:
        """Type ``text`` into the focused element (a non-empty string)."""
        if not isinstance(text, str) or text == "":
            raise AnswerError(f"type needs non-empty text, got {text!r}")
        return [Action("type", text=text)]

    def key(self, keys: Any, separator: str = "+") -> list[Action]:
        """One chord: a list of key names pressed together, or a string joined by ``separator``."""
        parts = [str(k).strip() for k in keys] if isinstance(keys, list) else str(keys or "").split(separator)
        parts = [p for p in parts if p]
        if not parts:
            raise AnswerError(f"no keys in {keys!r}")
        parts = [_KEY_ALIASES.get(p.lower(), p) for p in parts]
        if len(parts) > 1 and len(parts[-1]) == 1:
            parts[-1] = parts[-1].lower()  # Ctrl+C means the c key, not Shift+c
        return [Action("key", keys="+".join(parts))]

    def wait(self, seconds: Any) -> list[Action]:
        """Wait ``seconds`` (a number, clamped to 0-60)."""
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            raise AnswerError(f"wait needs a number of seconds, got {seconds!r}") from None
        return [Action("wait", seconds=max(0.0, min(value, 60.0)))]

    def navigate(self, url: Any) -> list[Action]:
        """Open ``url`` (browser tasks only; the browser's network guard still applies)."""
        if self.kind != "browser":
            raise AnswerError("navigate is only available in a browser task")
        if not isinstance(url, str) or not url:
            raise AnswerError(f"navigate needs a url, got {url!r}")
        return [Action("navigate", url=url)]


_KEY_ALIASES = {"kp_enter": "Enter", "super_l": "Meta", "super_r": "Meta", "control_l": "Control",
                "control_r": "Control", "shift_l": "Shift", "shift_r": "Shift", "alt_l": "Alt", "alt_r": "Alt",
                "prior": "PageUp", "next": "PageDown", "arrowup": "ArrowUp", "arrowdown": "ArrowDown",
                "arrowleft": "ArrowLeft", "arrowright": "ArrowRight"}
"""xdotool / OpenAI key names that ``worker.computer.normalize_key`` does not know."""


def done(text: Any = None) -> Action:
    """The terminal ``done`` action with ``text`` as the task's result (None when empty)."""
    return Action("done", text=None if text in (None, "") else str(text))


def fail(text: Any = None) -> Action:
    """The terminal ``fail`` action with ``text`` as the task's error."""
    return Action("fail", text=str(text) if text else "the model gave up")


# --- action tables -----------------------------------------------------------------------------------------------
A = TypeVar("A")
ActionMap: TypeAlias = Callable[[ActionBuilder, A], list[Action]]
"""One entry of an action table: ``(builder, the provider's action record) -> Actions`` (model-space values in,
viewport ``Action``s out). The record is the action's JSON object (Responses API, Anthropic, Qwen) or a parsed
call (UI-TARS). Raises :class:`AnswerError` for values it cannot use."""
Read: TypeAlias = Callable[[A], Any]
"""Where an entry reads a value (a point, a duration) in the provider's action record."""

SCROLL_DIRECTIONS: dict[str, tuple[int, int]] = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
"""A named scroll direction -> the signs of ``(dx, dy)`` (positive: right / down), for providers that give a
direction and an amount apart (Anthropic ``scroll_direction``, UI-TARS ``direction``)."""


def table_entry(table: Mapping[str, ActionMap[A]], name: Any, what: str) -> ActionMap[A]:
    """``table[name]``. Raises AnswerError ``"unknown <what> <name>"`` when the table has no such entry (or the
    name is not a string, as a raw JSON field may be)."""
    entry = table.get(name) if isinstance(name, str) else None
    if entry is None:
        raise AnswerError(f"unknown {what} {name!r}")
    return entry


def arg(name: str) -> Read[dict[str, Any]]:
    """Reads the field ``name`` of a JSON action object (None when absent)."""
    return lambda a: a.get(name)


def click_at(point: Read[A], button: str = "left", count: int = 1) -> ActionMap[A]:
    """A click (:meth:`ActionBuilder.click`) at the point ``point`` reads (None: at the pointer)."""
    return lambda b, a: b.click(point(a), button=button, count=count)


def move_to(point: Read[A]) -> ActionMap[A]:
    """A pointer move (:meth:`ActionBuilder.move`) to the point ``point`` reads."""
    return lambda b, a: b.move(point(a))


def drag_between(start: Read[A], end: Read[A]) -> ActionMap[A]:
    """A drag (:meth:`ActionBuilder.drag`) from ``start`` (None: the pointer) to ``end``; ``start`` is read first."""
    return lambda b, a: b.drag(start(a), end(a))


def wait_seconds(name: str, default: float) -> ActionMap[dict[str, Any]]:
    """A wait of the field ``name`` in seconds (:meth:`ActionBuilder.wait`; ``default`` when the field is absent
    or null)."""
    def wait(b: ActionBuilder, a: dict[str, Any]) -> list[Action]:
        value = a.get(name)
        return b.wait(value if value is not None else default)
    return wait


def no_action(b: ActionBuilder, a: object) -> list[Action]:
    """An entry that does nothing (e.g. ``screenshot``: every step sends a fresh one anyway)."""
    return []


def refuse(names: Iterable[str], reason: str) -> dict[str, ActionMap[Any]]:
    """Entries for documented actions Lodestar cannot perform: each raises AnswerError ``"<name>: <reason>"`` (a
    failed step that tells the model why)."""
    def entry(name: str) -> ActionMap[Any]:
        def unsupported(b: ActionBuilder, a: object) -> list[Action]:
            raise AnswerError(f"{name}: {reason}")
        return unsupported
    return {name: entry(name) for name in names}


COORDINATE_ACTIONS: dict[str, ActionMap[dict[str, Any]]] = {
    "left_click": click_at(arg("coordinate")),
    "right_click": click_at(arg("coordinate"), button="right"),
    "middle_click": click_at(arg("coordinate"), button="middle"),  # refused by the builder: left and right only
    "double_click": click_at(arg("coordinate"), count=2),
    "triple_click": click_at(arg("coordinate"), count=3),
    "mouse_move": move_to(arg("coordinate")),
    "left_click_drag": drag_between(arg("start_coordinate"), arg("coordinate")),
    "type": lambda b, a: b.type(a.get("text")),
}
"""The pointer and typing actions of Anthropic's computer tool (PROVIDERS.md section 3), which Qwen-VL's
``computer_use`` function (section 4) repeats with the same names and fields: ``coordinate: [x, y]`` in the
model's space (absent: at the pointer), ``start_coordinate`` of a drag (absent: from the pointer), ``text``."""


# --- the policy base ----------------------------------------------------------------------------------------------
def describe_api_error(provider: str, exc: BaseException) -> str:
    """``"<provider> API error <status>: <the provider's own message>"`` from an SDK exception: the body's
    ``error.message`` when there is one (OpenAI, Anthropic and Lightcone all answer ``{"error": {"message"}}``)."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message: Any = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
    message = message or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{provider} API error{f' {status}' if status else ''}: {message}"


def last_step_problems(episode: Episode) -> list[str]:
    """Errors of the previous step's actions, worded for the model (empty when it went well)."""
    last: StepRecord | None = episode.history[-1] if episode.history else None
    if last is None:
        return []
    return [f"The previous action failed: {r.error}" for r in last.results if not r.ok and r.error]


def parse_json_body(text: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer. Raises AnswerError when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        raise AnswerError(f"the answer is not JSON: {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise AnswerError("the answer is not a JSON object")
    return data


class ModelPolicy(ABC):
    """A ``Policy`` backed by a provider's model through its official SDK.

    Subclasses build the request (:meth:`_request`), send it through the SDK (:meth:`_send`, returning the answer's
    raw JSON so unknown action types are seen as sent), and parse it (:meth:`_parse`). The SDK client is built with
    ``settings.model_timeout`` and ``settings.model_max_retries`` (the SDK's own backoff honours ``retry-after``).

    Errors: an SDK error after its retries raises ``PolicyError`` with the provider's message (the loop fails the
    task with exit code 7); an unusable answer gives a ``Decision`` with ``error`` set (a failed step).
    """

    provider: ClassVar[str]
    needs_accessibility = False

    def __init__(self, spec: ModelSpec, episode: Episode, settings: Settings, client: Any = None):
        self.spec = spec
        self.settings = settings
        self.kind = episode.kind
        self.screen = Screen(spec)
        self.builder = ActionBuilder(self.screen, episode.kind)
        self.keep_screenshots = max(1, settings.model_screenshots_kept)
        self.client = client if client is not None else self._make_client()

    # -- subclass hooks -------------------------------------------------------------------------------------------
    @abstractmethod
    def _make_client(self) -> Any:
        """The SDK client for ``self.spec`` (base URL and key from the spec, else the SDK's env vars)."""

    @abstractmethod
    def _request(self, frame: Frame, episode: Episode) -> dict[str, Any]:
        """The keyword arguments of this turn's SDK call."""

    @abstractmethod
    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        """Make the call; return the answer's JSON object. SDK exceptions propagate."""

    @abstractmethod
    def _parse(self, answer: dict[str, Any], episode: Episode) -> Decision:
        """Turn the answer into a Decision and advance the conversation state. Raises AnswerError when nothing
        usable came back (the state is then left as it was, so the next turn asks again)."""

    @abstractmethod
    def _tokens(self, answer: dict[str, Any]) -> tuple[int, int]:
        """``(input_tokens, output_tokens)`` reported in the answer (0 when absent)."""

    sdk_error: ClassVar[type[BaseException]] = Exception
    """The SDK's base exception class (``openai.OpenAIError``, ``anthropic.AnthropicError``, ...)."""

    # -- the decide step ------------------------------------------------------------------------------------------
    def decide(self, observation: Observation, episode: Episode) -> Decision:
        """One model call: the screenshot (and any injected messages) in, the next actions out.

        Raises:
            PolicyError: the call failed after the SDK's retries (HTTP error, timeout, connection), with the
                provider's message.
        """
        frame = self.screen.frame(observation)
        self.builder.frame = frame
        request = self._request(frame, episode)
        try:
            answer = self._send(request)
        except AnswerError as exc:
            return Decision([], error=f"{self.provider}: unusable answer: {exc}")
        except self.sdk_error as exc:
            raise PolicyError(describe_api_error(self.provider, exc)) from exc
        usage = self._usage(answer)
        try:
            decision = self._parse(answer, episode)
        except AnswerError as exc:
            decision = Decision([], error=f"{self.provider}: unusable answer: {exc}")
        return replace(decision, usage=usage)

    def _usage(self, answer: dict[str, Any]) -> dict[str, Any]:
        try:
            tin, tout = self._tokens(answer)
        except (TypeError, ValueError, AttributeError):
            tin, tout = 0, 0
        return {"input_tokens": tin, "output_tokens": tout, "total_tokens": tin + tout, "calls": 1,
                "cost_usd": self.spec.cost_usd(tin, tout)}

    def _client_options(self) -> dict[str, Any]:
        """Constructor options common to the three SDKs (None values let the SDK read its env vars)."""
        return {"api_key": self.spec.resolved_api_key(), "base_url": self.spec.base_url,
                "timeout": self.settings.model_timeout, "max_retries": self.settings.model_max_retries}


def int_of(value: Any, default: int = 0) -> int:
    """An int from a JSON number or numeric string; ``default`` for anything else."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def number_of(value: Any, name: str) -> float:
    """A finite number from a JSON number or numeric string (None: 0). Raises AnswerError naming ``name``."""
    if value is None:
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnswerError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise AnswerError(f"{name} must be a finite number, got {value!r}")
    return number


def text_of(value: Any) -> str:
    """``value`` when it is a string, else ""."""
    return value if isinstance(value, str) else ""
