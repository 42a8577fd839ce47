"""Schedules: when a job's slots fall, as UTC epoch milliseconds. Pure; no clock reads.

Kinds (SPEC "Jobs"):
- ``CronSchedule``: 5 fields, or 6 with seconds first, or an ``@hourly``-style macro,
  evaluated in an IANA time zone. DST rules: a slot whose local time does not exist
  (spring forward) fires once at the first valid instant after it; a local time that
  occurs twice (fall back) fires once, at its first occurrence.
- ``EverySchedule``: every ``every_s`` seconds, aligned to the Unix epoch plus ``phase_s``.
- ``AtSchedule``: one instant. ``{"after_s": N}`` becomes an ``AtSchedule`` when the
  job is accepted (``parse_schedule`` takes the acceptance time).

``jitter_s`` (cron and every) delays a slot's firing by a deterministic amount in
``[0, jitter_s)`` derived from the job id and the slot; the slot itself (the run's
``scheduled_at``) is unchanged, so deduplication stays exact.

Time zones come from the pinned ``tzdata`` package only, never from the host's
``/usr/share/zoneinfo``: every replica computes the same cron slots whatever the
machine's own zone files say (their version is ``TZDATA_VERSION``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzdata  # type: ignore[import-untyped]
from croniter import croniter

EPOCH_MS_MAX = 253_402_300_799_000  # 9999-12-31T23:59:59Z
PREVIEW_COUNT_MAX = 100
JITTER_S_MAX = 3600
EVERY_S_MIN = 1
EVERY_S_MAX = 366 * 24 * 3600
CRON_SEARCH_SLOTS_MAX = 1000  # bound on skipped duplicates while searching
TZDATA_VERSION: str = tzdata.IANA_VERSION
_ZONE_NAME_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+){0,3}")


class ScheduleError(ValueError):
    """An invalid schedule; ``field`` names the offending key (e.g. ``schedule.cron``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class CronSchedule:
    cron: str
    tz: str = "UTC"
    jitter_s: int = 0


@dataclass(frozen=True, slots=True)
class EverySchedule:
    every_s: int
    phase_s: int = 0
    jitter_s: int = 0


@dataclass(frozen=True, slots=True)
class AtSchedule:
    at_ms: int


Schedule = CronSchedule | EverySchedule | AtSchedule


def _int_field(obj: dict[str, object], key: str, lo: int, hi: int, default: int | None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScheduleError(f"schedule.{key}", f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ScheduleError(f"schedule.{key}", f"must be between {lo} and {hi}, got {value}")
    return value


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ScheduleError("schedule.tz", f"must be an IANA time zone name, got {name!r}")
    try:
        return load_zone(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError("schedule.tz", f"unknown time zone {name!r}") from e


@functools.lru_cache(maxsize=512)
def load_zone(name: str) -> ZoneInfo:
    """The zone ``name`` from the pinned ``tzdata`` package (cached; the set of zone
    names is finite). Raises ``ZoneInfoNotFoundError`` for an unknown name."""
    if _ZONE_NAME_RE.fullmatch(name) is None:
        raise ZoneInfoNotFoundError(name)
    resource = importlib.resources.files("tzdata.zoneinfo").joinpath(name)
    try:
        with resource.open("rb") as f:
            return ZoneInfo.from_file(f, key=name)
    except (OSError, ValueError) as e:  # missing, a directory, or not a TZif file
        raise ZoneInfoNotFoundError(name) from e


def _parse_rfc3339_ms(text: object) -> int:
    if not isinstance(text, str) or len(text) > 64:
        raise ScheduleError("schedule.at", f"must be an RFC 3339 timestamp, got {text!r}")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise ScheduleError("schedule.at", f"not an RFC 3339 timestamp: {text!r}") from e
    if dt.tzinfo is None:
        raise ScheduleError("schedule.at", "must carry a UTC offset (e.g. 'Z' or '+01:00')")
    return int(dt.timestamp() * 1000)


def parse_schedule(obj: object, accepted_at_ms: int) -> Schedule:
    """Validate a schedule as given in the API; raises ``ScheduleError`` naming the field."""
    if not isinstance(obj, dict):
        raise ScheduleError("schedule", "must be an object")
    kinds = [k for k in ("cron", "every_s", "at", "after_s") if k in obj]
    if len(kinds) != 1:
        raise ScheduleError("schedule", "needs exactly one of cron, every_s, at, after_s")
    kind = kinds[0]
    allowed = {
        "cron": {"cron", "tz", "jitter_s"},
        "every_s": {"every_s", "phase_s", "jitter_s"},
        "at": {"at"},
        "after_s": {"after_s"},
    }[kind]
    for key in obj:
        if key not in allowed:
            raise ScheduleError(f"schedule.{key}", f"unknown field for a {kind} schedule")
    if kind == "cron":
        expr = obj["cron"]
        if not isinstance(expr, str) or len(expr) > 128:
            raise ScheduleError("schedule.cron", "must be a cron expression string")
        _zone(obj.get("tz", "UTC"))
        fields = expr.split()
        if not expr.strip().startswith("@") and len(fields) not in (5, 6):
            raise ScheduleError("schedule.cron", f"needs 5 or 6 fields, got {len(fields)}")
        if not croniter.is_valid(expr, second_at_beginning=len(fields) == 6):
            raise ScheduleError("schedule.cron", f"invalid cron expression {expr!r}")
        tz = obj.get("tz", "UTC")
        assert isinstance(tz, str)
        return CronSchedule(expr, tz, _int_field(obj, "jitter_s", 0, JITTER_S_MAX, 0))
    if kind == "every_s":
        every = _int_field(obj, "every_s", EVERY_S_MIN, EVERY_S_MAX, None)
        phase = _int_field(obj, "phase_s", 0, every - 1, 0)
        return EverySchedule(every, phase, _int_field(obj, "jitter_s", 0, JITTER_S_MAX, 0))
    if kind == "at":
        return AtSchedule(_parse_rfc3339_ms(obj["at"]))
    after = _int_field(obj, "after_s", 0, EVERY_S_MAX, None)
    return AtSchedule(accepted_at_ms + after * 1000)


def schedule_to_json(s: Schedule) -> dict[str, object]:
    match s:
        case CronSchedule():
            return {"cron": s.cron, "tz": s.tz, "jitter_s": s.jitter_s}
        case EverySchedule():
            return {"every_s": s.every_s, "phase_s": s.phase_s, "jitter_s": s.jitter_s}
        case AtSchedule():
            return {"at": format_ms(s.at_ms)}


@functools.lru_cache(maxsize=1024)  # a batch's runs share their instants
def format_ms(ms: int) -> str:
    """RFC 3339 in UTC with millisecond precision when needed."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
    return text.replace("+00:00", "Z")


def _is_second_occurrence(dt: datetime) -> bool:
    """True for the later of two instants sharing one local wall time (DST fall back)."""
    first = dt.replace(fold=0)
    second = dt.replace(fold=1)
    return first.utcoffset() != second.utcoffset() and dt.utcoffset() == second.utcoffset()


def _next_cron_ms(s: CronSchedule, after_ms: int) -> int | None:
    zone = load_zone(s.tz)
    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(zone)
    six = len(s.cron.split()) == 6
    it = croniter(s.cron, start, second_at_beginning=six)
    for _ in range(CRON_SEARCH_SLOTS_MAX):
        dt = it.get_next(datetime)
        ms = int(dt.timestamp() * 1000)
        if ms > EPOCH_MS_MAX:
            return None
        if ms <= after_ms or _is_second_occurrence(dt):
            continue
        return ms
    return None


def next_slot_ms(s: Schedule, after_ms: int) -> int | None:
    """The first slot strictly after ``after_ms``, or None when there is none."""
    match s:
        case CronSchedule():
            return _next_cron_ms(s, after_ms)
        case EverySchedule():
            period, phase = s.every_s * 1000, s.phase_s * 1000
            k = (after_ms - phase) // period + 1
            return k * period + phase
        case AtSchedule():
            return s.at_ms if s.at_ms > after_ms else None


def preview(s: Schedule, after_ms: int, count: int) -> list[int]:
    """Up to ``count`` (bounded) upcoming slots after ``after_ms``."""
    out: list[int] = []
    cursor = after_ms
    for _ in range(min(count, PREVIEW_COUNT_MAX)):
        nxt = next_slot_ms(s, cursor)
        if nxt is None:
            break
        out.append(nxt)
        cursor = nxt
    return out


def jitter_ms(s: Schedule, job_id: str, slot_ms: int) -> int:
    """Deterministic delay in ``[0, jitter_s)`` for one slot of one job."""
    jitter_s = getattr(s, "jitter_s", 0)
    if not jitter_s:
        return 0
    digest = hashlib.blake2b(f"{job_id}:{slot_ms}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (jitter_s * 1000)


def slots_between(s: Schedule, after_ms: int, until_ms: int, limit: int) -> list[int]:
    """Slots in ``(after_ms, until_ms]``, at most ``limit`` of them (oldest first)."""
    out: list[int] = []
    cursor = after_ms
    while len(out) < limit:
        nxt = next_slot_ms(s, cursor)
        if nxt is None or nxt > until_ms:
            break
        out.append(nxt)
        cursor = nxt
    return out


__all__ = [
    "AtSchedule",
    "CronSchedule",
    "EverySchedule",
    "Schedule",
    "ScheduleError",
    "format_ms",
    "jitter_ms",
    "next_slot_ms",
    "parse_schedule",
    "preview",
    "schedule_to_json",
    "slots_between",
]
